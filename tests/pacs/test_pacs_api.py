"""The server on a real Orthanc over DICOMweb (issue 20): list, save a final label as SEG, train from the PACS,
infer, store results as SEG + Parametric Maps, read them back; and what bad studies and a bad PACS get.

The tests run in file order on one session server (the label saved first is what training reads)."""
from __future__ import annotations

import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest

from sparsesight import bundle
from sparsesight.data.dicom import results, web
from sparsesight.data.dicom.series import series_to_volume
from sparsesight.data.io import nifti_from_bytes

pytestmark = [pytest.mark.server, pytest.mark.pacs]

TOL_MM = 1e-3


def source_series(pacs, study_uid, description="FLAIR"):
    """(instances, volume, RAS affine) of one MR series of a study, straight from Orthanc."""
    client = pacs.client()
    info = next(s for s in pacs.series(study_uid, "MR") if s.SeriesDescription == description)
    instances = web.retrieve_series(client, study_uid, str(info.SeriesInstanceUID))
    volume, affine = series_to_volume(instances)
    return instances, volume, affine


def stored_objects(pacs, study_uid, modality):
    client = pacs.client()
    found = []
    for s in pacs.series(study_uid, modality):
        found += web.retrieve_series(client, study_uid, str(s.SeriesInstanceUID))
    return found


def check_frames_on_source(obj, source):
    """Every frame of a SEG / Parametric Map lies on a source slice, same orientation and spacing, to 1e-3 mm."""
    shared = obj.SharedFunctionalGroupsSequence[0]
    src = source[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               src.ImageOrientationPatient, atol=1e-6)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, src.PixelSpacing, atol=TOL_MM)
    slices = np.array([s.ImagePositionPatient for s in source], dtype=float)
    for frame in obj.PerFrameFunctionalGroupsSequence:
        pos = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.min(np.linalg.norm(slices - pos, axis=1)) <= TOL_MM
    referenced = {str(s.SeriesInstanceUID) for s in obj.ReferencedSeriesSequence}
    assert referenced == {str(src.SeriesInstanceUID)}


def put_label(server, study_uid, data: bytes):
    return server.put("/datastore/label", params={"image": study_uid, "tag": "final"},
                      files={"label": ("label.nii.gz", data)})


def phantom_label(pacs, case="case_000") -> tuple[bytes, np.ndarray]:
    path = pacs.phantom / "labelsTr" / f"{case}.nii.gz"
    return path.read_bytes(), np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture
def labelled(server, pacs):
    """case_000 has its final label (a SEG in the PACS): saved by test_final_label_round_trips_through_seg, or here
    when a test runs on its own."""
    uid = pacs.studies["case_000"]
    if not any(str(s.get("SeriesDescription", "")) == "SparseSight final label"
               for s in web.search_series(pacs.client(), {"StudyInstanceUID": uid, "Modality": "SEG"},
                                          fields=["SeriesDescription"])):
        assert put_label(server, uid, phantom_label(pacs)[0]).status_code == 200
    return uid


@pytest.fixture
def trained(server, labelled):
    """The server has an mlcsc checkpoint (test_trains_one_epoch_from_the_pacs, or one epoch here)."""
    if not (server.model_dir / "mlcsc.pt").is_file():
        server.train()
    return server


# ------------------------------------------------------------------------------------------------ happy path
def test_lists_studies_of_the_pacs(server, pacs):
    objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert set(pacs.studies.values()) <= set(objects)
    stats = server.get("/datastore/").json()
    assert stats["total"] == len(pacs.studies)


def test_study_becomes_four_channel_image_on_the_source_grid(server, pacs, dciodvfy, tmp_path):
    uid = pacs.studies["case_000"]
    source, _, _ = source_series(pacs, uid, "T1ce")
    assert dciodvfy(source[0], tmp_path) == []  # the sample data are valid MR images
    r = server.get("/datastore/image", params={"image": uid})
    assert r.status_code == 200, r.text
    image, affine = nifti_from_bytes(r.content)
    _, flair, flair_affine = source_series(pacs, uid, "FLAIR")
    phantom = np.asarray(nib.load(str(pacs.phantom / "imagesTr" / "case_000.nii.gz")).dataobj)
    assert image.shape == phantom.shape == (*flair.shape, 4)
    np.testing.assert_allclose(affine, flair_affine, atol=TOL_MM)
    np.testing.assert_array_equal(image, phantom)  # channels FLAIR, T1, T1ce, T2 in order, voxel for voxel


def test_series_on_another_grid_is_resampled_onto_flair(server, pacs):
    uid = pacs.studies["resampled"]
    r = server.get("/datastore/image", params={"image": uid})
    assert r.status_code == 200, r.text
    image, affine = nifti_from_bytes(r.content)
    _, flair, flair_affine = source_series(pacs, uid, "FLAIR")
    _, t2, t2_affine = source_series(pacs, uid, "T2")
    assert t2.shape[:2] != flair.shape[:2] and image.shape == (*flair.shape, 4)
    np.testing.assert_allclose(affine, flair_affine, atol=TOL_MM)
    np.testing.assert_array_equal(image[..., 0], flair)
    # FLAIR voxels (2i, 2j, k) are T2 voxels (i, j, k): there the resampled T2 is the T2 series itself
    np.testing.assert_allclose(image[::2, ::2, :, 3], t2, atol=1e-3)


def test_a_resampled_series_is_checked_on_its_own_grid(trained, server, pacs):
    """The T2 series, resampled onto FLAIR's grid when the study was assembled, keeps its own grid and noise in the
    image info (series_grids), and the label's input checks read its noise and slices from there, not from the
    interpolated channel; a client cannot set that info itself."""
    uid = pacs.studies["resampled"]
    info = server.get("/datastore/image/info", params={"image": uid}).json()
    t2 = info["series_grids"]["T2"]
    _, _, t2_affine = source_series(pacs, uid, "T2")
    assert set(info["series_grids"]) == {"T2"} and t2["voxel_mm"] == pytest.approx(
        np.linalg.norm(t2_affine[:3, :3], axis=0).tolist(), abs=TOL_MM)
    r = server.post("/infer/mlcsc", params={"image": uid, "output": "json"})
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    noise, grid = checks["input_noise"], checks["input_grid"]
    assert noise["own_grid_sigma_z"]["T2"] == t2["sigma_z"]
    assert noise["noise_gain_by_modality"]["T2"] == pytest.approx(0.75, abs=0.05)  # 2x in plane, then a flip
    assert noise["noise_gain_by_modality"]["FLAIR"] == pytest.approx(1.0, abs=0.02)
    assert grid["series_voxel_mm"]["T2"] == t2["voxel_mm"] and grid["slice_mm"] == max(t2["voxel_mm"])
    assert grid["slice_mm"] > max(grid["voxel_mm"])  # FLAIR's grid alone would not tell
    r = server.put("/datastore/image/info", params={"image": uid},
                   data={"info": json.dumps({"series_grids": {"T2": {**t2, "sigma": 0.0}}})})
    assert r.status_code == 400 and "written by the server" in r.text
    assert server.get("/datastore/image/info", params={"image": uid}).json()["series_grids"] == info["series_grids"]


@pytest.mark.slow
def test_the_first_infer_on_a_study_checks_its_series_on_their_own_grids(pacs, tmp_path, start_pacs_server):
    """A server that has not fetched the study yet (the shipped SUM weights, which resample the 4 mm study to
    1 mm): the infer that fetches it already reads the resampled T2 from its own grid."""
    srv = start_pacs_server(tmp_path, pacs.dicomweb, name="first-infer", conf={"models": "sum"})
    try:
        uid = pacs.studies["resampled"]
        assert srv.get("/datastore/image/info", params={"image": uid}).json()["fetched"] is False
        r = srv.post("/infer/sum", params={"image": uid, "output": "json"})
        assert r.status_code == 200, r.text
        checks = r.json()["checks"]
        t2 = srv.get("/datastore/image/info", params={"image": uid}).json()["series_grids"]["T2"]
        assert checks["input_noise"]["own_grid_sigma_z"]["T2"] == t2["sigma_z"]
        assert checks["input_grid"]["series_voxel_mm"] == {"T2": t2["voxel_mm"]}
    finally:
        srv.process.stop()


def test_a_path_that_is_not_dicomweb_is_a_pacs_error(pacs):
    with pytest.raises(web.PacsError, match="HTTP 404"):
        web.search_series(web.connect(pacs.url + "/not-dicom-web"), {"Modality": "MR"})


def test_final_label_round_trips_through_seg(server, pacs, dciodvfy, tmp_path):
    uid = pacs.studies["case_000"]
    data, label = phantom_label(pacs)
    before = {str(s.SeriesInstanceUID) for s in pacs.series(uid, "SEG")}
    r = put_label(server, uid, data)
    assert r.status_code == 200, r.text
    new = [s for s in pacs.series(uid, "SEG") if str(s.SeriesInstanceUID) not in before]
    assert len(new) == 1
    segs = web.retrieve_series(pacs.client(), uid, str(new[0].SeriesInstanceUID))
    assert len(segs) == 1
    assert dciodvfy(segs[0], tmp_path) == []  # dicom3tools' IOD validator: no errors
    seg = hd.seg.Segmentation.from_dataset(segs[0])  # highdicom parses it
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["oedema", "non-enhancing core", "enhancing"]
    assert {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"MANUAL"}
    assert all("RecommendedDisplayCIELabValue" in s for s in seg.SegmentSequence)
    source, flair, flair_affine = source_series(pacs, uid)
    check_frames_on_source(seg, source)
    back = results.seg_to_label(seg, flair.shape, flair_affine)
    np.testing.assert_array_equal(back, label)  # voxel for voxel
    r = server.get("/datastore/label", params={"label": uid, "tag": "final"})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(nifti_from_bytes(r.content)[0], label)


def test_trains_one_epoch_from_the_pacs(server, pacs, labelled):
    train = server.get("/datastore/", params={"output": "train"}).json()
    assert [pacs.studies["case_000"] in item["image"] for item in train] == [True]
    status = server.train()
    assert status["status"] == "DONE"
    assert (server.model_dir / "mlcsc.pt").is_file()


def _infer_label(server, uid):
    r = server.post("/infer/mlcsc", params={"image": uid, "output": "image"})
    assert r.status_code == 200, r.text
    return nifti_from_bytes(r.content)


def test_infer_on_a_pacs_study(trained, server, pacs):
    uid = pacs.studies["case_001"]
    label, affine = _infer_label(server, uid)
    _, flair, flair_affine = source_series(pacs, uid)
    assert label.shape == flair.shape
    np.testing.assert_allclose(affine, flair_affine, atol=TOL_MM)


def test_results_stored_as_seg_and_parametric_maps(trained, server, pacs, tmp_path, dciodvfy):
    uid = pacs.studies["case_001"]
    before = {str(s.SeriesInstanceUID) for s in pacs.series(uid)}
    r = server.post("/pacs/results/mlcsc", params={"image": uid},
                    json={"outputs": ["label", "probabilities", "components"]})
    assert r.status_code == 200, r.text
    stored = r.json()["stored"]
    kinds = [o["modality"] for o in stored]
    assert kinds.count("SEG") == 1 and kinds.count("OT") == len(stored) - 1  # Parametric Maps are OT
    assert {o["name"] for o in stored} >= {"probability/oedema", "component/enhancing/T1ce"}
    assert {str(s.SeriesInstanceUID) for s in pacs.series(uid)} - before == {o["SeriesInstanceUID"] for o in stored}

    source, flair, flair_affine = source_series(pacs, uid)
    seg_ds = stored_objects(pacs, uid, "SEG")[0]
    assert dciodvfy(seg_ds, tmp_path) == []
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    check_frames_on_source(seg, source)
    assert {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"AUTOMATIC"}
    label, _ = _infer_label(server, uid)  # the same checkpoint, the same input: the same label
    np.testing.assert_array_equal(results.seg_to_label(seg, flair.shape, flair_affine), label)

    r = server.post("/infer/mlcsc", params={"image": uid, "output": "image"},
                    data={"params": json.dumps({"bundle": True, "outputs": ["probabilities", "components"]})})
    assert r.status_code == 200, r.text
    (tmp_path / "b.zip").write_bytes(r.content)
    b = bundle.read(tmp_path / "b.zip")
    by_name = {o["name"]: o for o in stored}
    maps = stored_objects(pacs, uid, "OT")
    scalars = [o["name"] for o in b.outputs if o["kind"] == "scalar"]
    assert len(maps) == len(scalars) == len(stored) - 1 >= 3 + 3 * 4  # probabilities, components per class x modality
    for pm in maps:
        assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
        assert dciodvfy(pm, tmp_path) == []
        assert pm.ImageType[0] == "DERIVED" and int(pm.NumberOfFrames) == len(source)
        check_frames_on_source(pm, source)
        name = next(n for n, o in by_name.items() if o["SOPInstanceUID"] == str(pm.SOPInstanceUID))
        expected, _ = b.volume(name)
        values, step = results.parametric_map_values(pm)
        got = np.transpose(values, (2, 1, 0))  # frames back to [i, j, k]
        assert np.max(np.abs(got - expected)) <= step / 2 + 1e-6 * max(1.0, float(np.abs(expected).max()))
        unit = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
        assert unit.CodingSchemeDesignator == "UCUM"
    b.close()
    # a model's SEG is not an annotator's label: training data unchanged
    train = server.get("/datastore/", params={"output": "train"}).json()
    assert not any(uid in item["image"] for item in train)


def test_attribution_maps_go_back_as_parametric_maps(trained, server, pacs, tmp_path, dciodvfy):
    uid = pacs.studies["case_001"]
    r = server.post("/pacs/results/mlcsc", params={"image": uid},
                    json={"outputs": ["label"], "options": {"attribution": "gradient", "attribution_target": "oedema"}})
    assert r.status_code == 200, r.text
    stored = {o["name"]: o for o in r.json()["stored"]}
    assert set(stored) == {"label", "attribution/gradient/oedema"}
    entry = stored["attribution/gradient/oedema"]
    pm = web.retrieve_series(pacs.client(), uid, entry["SeriesInstanceUID"])[0]
    assert str(pm.SOPInstanceUID) == entry["SOPInstanceUID"] and dciodvfy(pm, tmp_path) == []
    check_frames_on_source(pm, source_series(pacs, uid)[0])
    values, step = results.parametric_map_values(pm)
    assert step > 0 and np.ptp(values) > 0  # a map, not a constant


def test_the_slicer_client_works_unchanged_on_a_pacs(trained, server, pacs, tmp_path):
    """The Slicer module's REST client (also the browser viewer's) sees studies as images, as for a folder."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "slicer_extension" / "SparseSight"))
    from SparseSightLib.client import SparseSightClient

    client = SparseSightClient(server.url, timeout=300)
    uid = pacs.studies["case_001"]
    assert uid in client.datastore() and client.labelled() == [pacs.studies["case_000"]]
    image, _ = nifti_from_bytes(client.download_image(uid, tmp_path / "image.nii.gz").read_bytes())
    assert image.shape == (60, 60, 39, 4)
    path = client.infer_bundle("mlcsc", uid, tmp_path / "bundle.zip", outputs=["label"])
    assert [o["name"] for o in bundle.validate(path)["outputs"]] == ["label"]


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name, reason", [
    ("missing", "T2 is missing"),
    ("other_grid", "another frame of reference"),
    ("not_mr", "modality OT, not an MR image series"),
])
def test_unusable_study_is_422_naming_the_series(server, pacs, name, reason):
    uid = pacs.studies[name]
    before = server.cache_files()
    r = server.post("/infer/mlcsc", params={"image": uid, "output": "image"})
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"] and uid in r.json()["detail"]
    r = server.get("/datastore/image", params={"image": uid})
    assert r.status_code == 422 and reason in r.json()["detail"]
    assert server.cache_files() == before  # nothing half-fetched


@pytest.mark.slow
def test_scoring_skips_a_study_it_cannot_use(trained, server, pacs):
    """sparse_residual scores every unlabelled study: one that cannot be used is skipped (and then listed as
    refused), never the reason the whole request fails."""
    bad = pacs.studies["missing_t1ce"]
    r = server.post("/activelearning/sparse_residual", json={})
    assert r.status_code == 200, r.text
    assert r.json()["id"] not in (None, bad) and bad not in dict(r.json().get("ranking", []))
    objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert "T1ce is missing" in objects[bad]["image"]["info"]["refused"]


def test_active_learning_skips_refused_studies(server, pacs):
    refused = {pacs.studies[n] for n in ("missing", "other_grid", "not_mr")}
    for uid in refused:  # (again, when this test runs on its own)
        assert server.get("/datastore/image", params={"image": uid}).status_code == 422
    objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert all("T2" in objects[u]["image"]["info"]["refused"] for u in refused)
    for _ in range(12):
        r = server.post("/activelearning/random", json={})
        assert r.status_code == 200, r.text  # a pick that cannot be used (missing_t1ce) is replaced by another
        assert r.json()["id"] not in refused | {pacs.studies["missing_t1ce"]}


def test_refused_seg_store_is_502_and_changes_nothing(trained, server, pacs):
    uid = pacs.studies["refuse_seg"]
    assert server.get("/datastore/image", params={"image": uid}).status_code == 200  # fetched: a usable study
    before_cache, before_pacs = server.cache_files(), pacs.counts()
    data, _ = phantom_label(pacs)
    r = put_label(server, uid, data)
    assert r.status_code == 502, r.text
    assert "did not keep" in r.json()["detail"]
    assert server.cache_files() == before_cache and pacs.counts() == before_pacs
    assert server.get("/datastore/label", params={"label": uid, "tag": "final"}).status_code == 404

    r = server.post("/pacs/results/mlcsc", params={"image": uid}, json={"outputs": ["label", "probabilities"]})
    assert r.status_code == 502, r.text
    assert "removed again" in r.json()["detail"]
    assert pacs.counts() == before_pacs  # the maps stored before the SEG was dropped are gone again
    assert server.cache_files() == before_cache


def test_sample_data_cli_writes_dicom_and_a_second_upload_is_a_no_op(pacs, tmp_path):
    from sparsesight.cli import main

    before = pacs.counts()
    out = tmp_path / "sample"
    assert main(["sample-data", "--out", str(out), "--cases", "2", "--n-test", "0", "--downsample", "4",
                 "--seed", "0", "--quiet", "--dicom", "--stow", pacs.dicomweb]) == 0
    assert len(list((out / "dicom").rglob("*.dcm"))) == 2 * 4 * 39
    assert pacs.counts() == before  # the same phantoms, the same UIDs: nothing new in the PACS


def test_images_are_not_uploaded_to_a_pacs_datastore(server, pacs):
    r = server.put("/datastore/image", params={"image": "mine"},
                   files={"file": ("x.nii.gz", (pacs.phantom / "imagesTr" / "case_000.nii.gz").read_bytes())})
    assert r.status_code == 405 and "STOW-RS" in r.json()["detail"], r.text


def test_unknown_study_is_404(server):
    r = server.post("/infer/mlcsc", params={"image": "1.2.3.4.5", "output": "image"})
    assert r.status_code == 404, r.text


@pytest.mark.slow
def test_a_fresh_server_trains_from_the_segs_in_the_pacs(labelled, server, pacs, tmp_path, start_pacs_server):
    """Another server (empty cache, max_voxels 600,000) on the same PACS: a study over the limit is refused before
    its pixels are downloaded; the annotator's SEG is its training data, the model's is not."""
    srv = start_pacs_server(tmp_path, pacs.dicomweb, name="fresh", conf={"max_voxels": 600_000})
    try:
        big = pacs.studies["big"]  # over this server's max_voxels: refused from the metadata alone
        r = srv.get("/datastore/image", params={"image": big})
        assert r.status_code == 413 and "nothing was downloaded" in r.json()["detail"], r.text
        assert not any(big in f for f in srv.cache_files())
        train = srv.get("/datastore/", params={"output": "train"}).json()
        assert [pacs.studies["case_000"] in item["image"] for item in train] == [True]
        r = srv.get("/datastore/label", params={"label": pacs.studies["case_000"], "tag": "final"})
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(nifti_from_bytes(r.content)[0], phantom_label(pacs)[1])
    finally:
        srv.process.stop()


@pytest.mark.slow
def test_pacs_down_is_502_and_the_server_stays_up(pacs, tmp_path, start_pacs_server):
    from sparsesight.server import free_port

    srv = start_pacs_server(tmp_path, f"http://127.0.0.1:{free_port()}/dicom-web", name="down")
    try:
        r = srv.get("/info/")
        assert r.status_code == 200, r.text
        assert r.json()["datastore"]["pacs"]["reachable"] is False
        assert "cannot connect" in r.json()["datastore"]["pacs"]["error"]
        r = srv.get("/datastore/", params={"output": "all"})
        assert r.status_code == 502 and "cannot connect" in r.json()["detail"], r.text
        r = srv.post("/infer/mlcsc", params={"image": pacs.studies["case_000"], "output": "image"})
        assert r.status_code == 502, r.text
        assert srv.get("/info/").status_code == 200
    finally:
        srv.process.stop()


@pytest.mark.slow
def test_pacs_credentials_come_from_monai_label_settings(pacs, tmp_path, start_pacs_server):
    """A PACS with HTTP basic auth: the server reads user and password from MONAI_LABEL_DATASTORE_USERNAME /
    _PASSWORD (never from --conf); without them the PACS answers 401 and the request gets 502 saying so."""
    import os

    from sparsesight import orthanc
    from sparsesight.data.dicom.sample import case_study

    locked = orthanc.Orthanc(tmp_path / "locked", users={"sparsesight": "s3cret-pw"})
    locked.start()
    try:
        with pytest.raises(web.PacsError, match="HTTP 401"):
            web.search_series(web.connect(locked.dicomweb), {"Modality": "MR"})
        client = web.connect(locked.dicomweb, "sparsesight", "s3cret-pw")
        info, series = case_study(pacs.phantom / "imagesTr" / "case_000.nii.gz")
        for datasets in series.values():
            web.store(client, datasets)
        env = {"MONAI_LABEL_DATASTORE_USERNAME": "sparsesight", "MONAI_LABEL_DATASTORE_PASSWORD": "s3cret-pw"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # inherited by the server process only (restored right after it starts)
        try:
            srv = start_pacs_server(tmp_path / "server", locked.dicomweb, name="auth")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            objects = srv.get("/datastore/", params={"output": "all"}).json()["objects"]
            assert list(objects) == [info.uid("study")]
            assert "s3cret-pw" not in " ".join(srv.process.command()) and "s3cret-pw" not in srv.get("/info/").text
        finally:
            srv.process.stop()
        assert "s3cret-pw" not in srv.process.log(tail=10**7)  # not in the server's log either
    finally:
        locked.stop()
