"""The module's client and logic against the real SparseSight server (tests/server/conftest.py), scenes on
slicer-core: load an image, infer -> scene, edit and submit a label, upload, train with progress, errors."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from SparseSightLib import scene as S
from SparseSightLib.client import ServerError, SparseSightClient, train_progress
from SparseSightLib.logic import SparseSightLogicCore, TrainingState, message

pytestmark = [pytest.mark.slicer, pytest.mark.server]


@pytest.fixture
def logic(server, mrml, tmp_path):
    core = SparseSightLogicCore(mrml, workdir=tmp_path / "work")
    core.connect(server.url)
    return core


def stored_image(server, image_id):
    # the datastore keeps an upload's own extension (.nii or .nii.gz)
    path = next(p for ext in (".nii.gz", ".nii") if (p := server.studies / f"{image_id}{ext}").is_file())
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def test_info_models_datastore(server, logic):
    assert "mlcsc" in logic.models() and "random" in logic.strategies()
    assert logic.classes("mlcsc") == {1: "oedema", 2: "non-enhancing core", 3: "enhancing"}
    assert logic.is_segmentation("mlcsc")
    for other in set(logic.models()) & {"cdl", "microstructure"}:  # reconstruction / parameter-map models
        assert not logic.is_segmentation(other)
    objects = logic.client.datastore()
    assert {"case_000", "case_001", "case_002", "case_003"} <= set(objects)
    assert "case_000" in logic.client.labelled()


def test_load_image_gives_one_volume_per_channel_in_the_files_geometry(server, logic):
    channels = logic.load_image("case_001")
    data, affine = stored_image(server, "case_001")
    assert [n.GetName() for n in channels] == [f"case_001 {m}" for m in ("FLAIR", "T1", "T1ce", "T2")]
    for c, node in enumerate(channels):
        np.testing.assert_allclose(S.ijk_to_ras(node), affine, atol=1e-4)
        np.testing.assert_allclose(S.array_from_volume(node), data[..., c], atol=1e-4)
    assert not list(logic.workdir.iterdir())  # the download is not kept


def test_an_image_stored_uncompressed_loads_like_any_other(server, logic, tmp_path):
    """An upload kept as .nii comes back uncompressed: it is saved under that suffix and read (a .nii.gz name had
    every reader fail with "not a gzip file", in Slicer and in the browser viewer)."""
    data, affine = stored_image(server, "case_002")
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(data, affine), plain)
    logic.client.upload_image(plain, "plain_case")
    try:
        assert (server.studies / "plain_case.nii").is_file()
        channels = logic.load_image("plain_case")
        np.testing.assert_allclose(S.array_from_volume(channels[3]), data[..., 3], atol=1e-4)
        assert not list(logic.workdir.iterdir())
    finally:
        assert server.delete("/datastore/image", params={"id": "plain_case"}).status_code == 200


def test_attribution_at_a_world_point_for_a_brats_region(server, logic):
    """The module offers the BraTS regions as attribution targets and explains the voxel at the crosshair: its world
    point goes to the server, which places it on the grid the model saw (the manifest names point and voxel)."""
    assert logic.attribution_targets("mlcsc")[-3:] == ["WT", "TC", "ET"]
    _, affine = stored_image(server, "case_001")
    ijk = (30, 28, 20)
    point = (affine @ np.r_[ijk, 1.0])[:3]
    options = logic.attribution_options("gradient", "WT", point)
    assert options["attribution_point"] == ",".join(f"{v:.3f}" for v in point)
    run = logic.infer("mlcsc", "case_001", outputs=["label"], **options)
    entry = next(o for o in run.manifest["outputs"] if o["name"] == "attribution/gradient/WT")
    assert entry["region"].startswith("point") and f"voxel {list(ijk)}" in entry["region"]
    assert "attribution/gradient/WT" in run.nodes


def test_infer_bundle_to_scene_in_the_inputs_geometry(server, logic):
    channels = logic.load_image("case_001")
    steps = []
    outputs = logic.output_names(segmentation=True, probabilities=True, components=True, parameters=True,
                                 component_modalities=["T1ce"])
    run = logic.infer("mlcsc", "case_001", outputs=outputs, progress=lambda i, n, name: steps.append(name))
    names = set(run.nodes)
    assert run.manifest["model"] == "mlcsc" and run.manifest["model_version"] == server.version()
    assert {"label", "params", "params_plot", "sparsity"} <= names
    assert {f"probability/{c}" for c in ("oedema", "non-enhancing core", "enhancing")} <= names
    comps = sorted(n for n in names if n.startswith("component/"))
    assert comps and all(n.endswith("/T1ce") for n in comps)
    assert steps == [o["name"] for o in run.manifest["outputs"]]

    reference = S.ijk_to_ras(channels[0])
    for name, node in run.nodes.items():
        if node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLVectorVolumeNode"):
            np.testing.assert_allclose(S.ijk_to_ras(node), reference, atol=1e-4, err_msg=name)
            assert S.array_from_volume(node).shape == S.array_from_volume(channels[0]).shape
    for c in ("oedema", "enhancing"):
        p = S.array_from_volume(run.nodes[f"probability/{c}"])
        assert p.min() >= -1e-4 and p.max() <= 1 + 1e-4
        d = run.nodes[f"probability/{c}"].GetDisplayNode()
        assert (d.GetWindowLevelMin(), d.GetWindowLevelMax()) == (0.0, 1.0)
    seg = run.nodes["label"].GetSegmentation()
    assert sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())) == \
        sorted(["oedema", "non-enhancing core", "enhancing"])
    assert run.nodes["params"].GetNumberOfRows() >= 1

    # the plain label (the stock plugin's answer) becomes the same segmentation and goes back to the same file
    raw = logic.client.infer_label("mlcsc", "case_001", logic.workdir / "raw.nii.gz")
    plain = logic.infer_label("mlcsc", "case_001")
    back = S.export_label(logic.scene, plain, logic.workdir / "back.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(back).dataobj), np.asarray(nib.load(raw).dataobj))
    np.testing.assert_allclose(nib.load(back).affine, nib.load(raw).affine, atol=1e-4)


def test_edited_segmentation_is_saved_as_the_images_label(server, logic):
    todo = sorted(set(logic.client.datastore()) - set(logic.client.labelled()))
    image_id = todo[0] if todo else "case_001"  # a final label may also be replaced
    run = logic.infer("mlcsc", image_id, outputs=["label"])
    seg_node = run.nodes["label"]
    expected = np.asarray(nib.load(S.export_label(logic.scene, seg_node, logic.workdir / "e.nii.gz")).dataobj)
    # the user's edit: erase the oedema segment entirely
    seg = seg_node.GetSegmentation()
    seg.RemoveSegment(seg.GetSegmentIdBySegmentName("oedema"))
    expected = np.where(expected == 1, 0, expected)

    answer = logic.submit_label(seg_node, image_id)
    assert answer["image"] == image_id
    assert image_id in logic.client.labelled()
    stored = nib.load(server.studies / "labels" / "final" / f"{image_id}.nii.gz")
    np.testing.assert_array_equal(np.asarray(stored.dataobj), expected)
    np.testing.assert_allclose(stored.affine, stored_image(server, image_id)[1], atol=1e-4)


def test_upload_current_volume(server, logic):
    channels = logic.load_image("case_002")
    answer = logic.upload_image(channels, "from_slicer")
    assert answer["image"] == "from_slicer"
    assert "from_slicer" in logic.client.datastore()
    stored = nib.load(next(server.studies.glob("from_slicer.nii*")))
    data, affine = stored_image(server, "case_002")
    np.testing.assert_allclose(np.asarray(stored.dataobj).reshape(data.shape), data, atol=1e-4)
    np.testing.assert_allclose(stored.affine, affine, atol=1e-4)


def test_next_sample_loads_an_unlabelled_image(server, logic):
    image_id, channels = logic.next_sample("random")
    if image_id is None:  # every image labelled by earlier tests
        assert set(logic.client.datastore()) == set(logic.client.labelled())
        return
    assert image_id not in logic.client.labelled() and len(channels) == 4


def test_train_status_moves_to_done_with_progress(server, logic, fast_train):
    before = server.version()
    task = logic.train("mlcsc", epochs=2, train_config=fast_train)
    assert task.get("id")
    seen = []
    final = logic.wait_training(timeout=300, poll=0.5, on_progress=seen.append)
    assert final.state == "DONE", final.details[-5:]
    assert (final.done, final.total, final.fraction) == (2, 2, 1.0)
    assert seen[0].state in ("SUBMITTED", "RUNNING", "DONE")
    fractions = [s.fraction for s in seen]
    assert fractions == sorted(fractions)  # progress never goes back
    assert server.version() != before
    logic.connect(server.url)
    assert logic.info["models"]["mlcsc"]["version"] == server.version()


def test_train_progress_parses_epoch_lines():
    status = {"status": "RUNNING", "details": ["train mlcsc: 3 labelled image(s)", "train mlcsc: epoch 1/4 loss 0.9",
                                              "train mlcsc: epoch 2/4 loss 0.8"]}
    assert train_progress(status) == (2, 4)
    assert train_progress({"status": "DONE", "details": ["train mlcsc: epoch 3/4 loss 0.7"]}) == (4, 4)
    assert train_progress({}) == (0, 0)
    assert TrainingState("RUNNING", 1, 4, []).fraction == 0.25


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,status,words", [
    (lambda lg: lg.infer("unet9000", "case_001"), 404, ["unknown model 'unet9000'", "mlcsc"]),
    (lambda lg: lg.infer("mlcsc", "case_999"), 404, ["case_999", "not in the datastore"]),
    (lambda lg: lg.infer("mlcsc", "case_001", outputs=["hologram"]), 422, ["hologram"]),
    (lambda lg: lg.train("mlcsc", epochs="many"), 400, ["epochs"]),
    (lambda lg: lg.load_image("case_999"), 404, ["not found"]),
])
def test_server_errors_reach_the_user_as_the_servers_reason(server, logic, call, status, words):
    with pytest.raises(ServerError) as err:
        call(logic)
    text = message(err.value)
    assert err.value.status == status
    for w in words:
        assert w.lower() in text.lower(), text
    assert "Traceback" not in text and "File \"" not in text
    assert not S.inferences(logic.scene)  # nothing half-loaded


def test_unreachable_server_is_a_readable_error(tmp_path):
    from sparsesight.server import free_port

    client = SparseSightClient(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(ServerError, match="cannot reach the SparseSight server"):
        client.info()
    logic = SparseSightLogicCore(S.new_scene(), workdir=tmp_path)
    with pytest.raises(ServerError, match="not connected"):
        logic.infer("mlcsc", "case_001")
