"""Result bundle -> MRML scene on slicer-core: nodes, names, classes, colours, geometry, windows, MRB round trip.

The bundles are written by the library's own BundleWriter (the protocol's writer), read by the module's
scene/ (SparseSightLib) through Slicer's own readers; the expectations come from the arrays and the affine written.
"""
from __future__ import annotations

import ast
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sparsesight.bundle import BundleWriter
from sparsesight.bundle import read as read_bundle
from SparseSightLib import scene as S
from SparseSightLib import selftest

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_extension" / "SparseSight"

pytestmark = pytest.mark.slicer

SHAPE = (14, 12, 10)
CLASSES = {1: "oedema", 2: "non-enhancing core", 3: "enhancing"}


def oblique_affine(handed=+1):
    """A rotated grid with anisotropic spacing; handed=-1 gives a left-handed (radiological) one."""
    rot = Rotation.from_euler("xyz", [12, -25, 40], degrees=True).as_matrix()
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.5 * handed, 2.0, 2.5])
    aff[:3, 3] = [31.0, -42.5, 17.25]
    return aff


def png_bytes(top=(1, 0, 0), bottom=(0, 0, 1), h=20, w=30):
    """A PNG whose upper half is `top` and lower half `bottom` (to check that a plot is shown upright)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.zeros((h, w, 3))
    img[: h // 2] = top
    img[h // 2:] = bottom
    buf = io.BytesIO()
    plt.imsave(buf, img, format="png")
    return buf.getvalue()


def make_bundle(path, affine, rng=None):
    """A bundle with every kind: labelmap (class 2 absent), probability, signed attribution, plain scalar,
    a scalar on a named Slicer colour map, a table and a plot. Returns the arrays written by output name."""
    rng = rng or np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    r2 = (i - 7) ** 2 + (j - 5) ** 2 + (k - 4) ** 2
    label = np.where(r2 <= 4, 3, np.where(r2 <= 12, 1, 0)).astype(np.uint8)
    label[0, 0, 0] = 1  # a corner voxel: any axis flip would move it
    arrays = {
        "label": label,
        "probability/enhancing": rng.uniform(0, 1, SHAPE).astype(np.float32),
        "attribution/integrated_gradients/enhancing": rng.normal(0, 0.3, SHAPE).astype(np.float32) + 0.05,
        "reconstruction/T1ce": (i * 10.0 + j - k).astype(np.float32),
        "shrinkage_mask": (rng.uniform(0, 1, SHAPE) > 0.7).astype(np.float32),
    }
    w = BundleWriter("mlcsc", "sha256:0123456789abcdef", "case_042", affine, SHAPE, modalities=["FLAIR"])
    w.add_volume("label", label, kind="labelmap", classes=CLASSES)
    w.add_volume("probability/enhancing", arrays["probability/enhancing"], colormap="probability",
                 range=[0.0, 1.0], dtype=np.int16)
    w.add_volume("attribution/integrated_gradients/enhancing", arrays["attribution/integrated_gradients/enhancing"],
                 method="integrated_gradients", faithfulness={"deletion_auc": 0.125, "insertion_auc": 0.5})
    w.add_volume("reconstruction/T1ce", arrays["reconstruction/T1ce"], description="sum of the components")
    w.add_volume("shrinkage_mask", arrays["shrinkage_mask"], colormap="Iron")
    w.add_table("params", [{"class": "oedema", "lam1": 0.25, "mu1": 0.5, "consistent": True},
                           {"class": "enhancing", "lam1": -0.125, "mu1": 0.75, "consistent": False}])
    w.add_plot("params_plot", png_bytes())
    w.write(path)
    return arrays


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "bundle.zip"
    arrays = make_bundle(path, oblique_affine())
    return path, arrays


def physical_equal(node, array, affine):
    """True when the volume node holds `array` on the grid `affine`, allowing Slicer's own choice of axis order
    or direction for the same voxels (ITK reverses the last axis of left-handed NIfTI grids)."""
    moved = S.regrid(S.array_from_volume(node), np.array(S.ijk_to_ras(node)), affine)
    return moved is not None and moved.shape == array.shape and np.allclose(moved, array, atol=1e-4)


# ---------------------------------------------------------------------------------------------- bundle -> nodes
def test_every_output_becomes_its_node_in_one_folder(mrml, bundle):
    path, _ = bundle
    steps = []
    result = S.load_bundle(mrml, path, progress=lambda i, n, name: steps.append((i, n, name)))
    manifest = read_bundle(path).manifest
    names = [o["name"] for o in manifest["outputs"]]
    assert list(result.nodes) == names and len(steps) == len(names) == 7
    kinds = {"label": "vtkMRMLSegmentationNode", "params": "vtkMRMLTableNode",
             "params_plot": "vtkMRMLVectorVolumeNode"}
    for name, node in result.nodes.items():
        assert node.GetClassName() == kinds.get(name, "vtkMRMLScalarVolumeNode"), name
        assert node.GetName() == f"mlcsc: {name}"
        assert node.GetAttribute("SparseSight.output") == name
        assert node.GetAttribute("SparseSight.model_version") == "sha256:0123456789abcdef"
    meta = json.loads(result.nodes["attribution/integrated_gradients/enhancing"].GetAttribute("SparseSight.meta"))
    assert meta["method"] == "integrated_gradients" and meta["faithfulness"]["deletion_auc"] == 0.125
    assert result.nodes["reconstruction/T1ce"].GetDescription() == "sum of the components"

    # one folder for this inference, under the image's folder, holding exactly these nodes
    sh = S.subject_hierarchy(mrml)
    assert sh.GetItemName(sh.GetItemParent(result.folder)) == "case_042"
    assert sh.GetItemAttribute(result.folder, "SparseSight.model") == "mlcsc"
    assert S.outputs(mrml, result.folder) == result.nodes
    assert S.inferences(mrml) == [result.folder]


def test_labelmap_becomes_segments_with_class_names_colours_and_values(mrml, bundle):
    path, arrays = bundle
    seg_node = S.load_bundle(mrml, path).nodes["label"]
    seg = seg_node.GetSegmentation()
    segments = {seg.GetNthSegment(i).GetName(): seg.GetNthSegment(i) for i in range(seg.GetNumberOfSegments())}
    assert set(segments) == set(CLASSES.values())  # the absent class 2 is there too, empty, ready to paint
    for value, name in CLASSES.items():
        np.testing.assert_allclose(segments[name].GetColor(), S.PALETTE[value - 1], atol=1 / 255)
        assert S.class_colors({"classes": CLASSES})[value] == S.PALETTE[value - 1]
    # voxels of each class are exactly the bundle's
    for value, name in CLASSES.items():
        sid = seg.GetSegmentIdBySegmentName(name)
        labelmap = slicer_binary_labelmap(mrml, seg_node, sid)
        assert physical_equal(labelmap, (arrays["label"] == value).astype(np.uint8), oblique_affine()), name
    # and back: the exported label is the bundle's label with the input's affine
    out = S.export_label(mrml, seg_node, path.parent / "exported.nii.gz")
    img = nib.load(out)
    np.testing.assert_array_equal(np.asarray(img.dataobj), arrays["label"])
    np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-4)


def test_all_background_label_still_gives_every_class_and_exports_zeros(mrml, tmp_path):
    """A young model that predicts only background: the segmentation keeps one empty segment per class (ready to
    paint) and the exported label is all zeros in the input's geometry."""
    affine = oblique_affine()
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 8), np.uint8), affine), tmp_path / "zeros.nii.gz")
    entry = {"name": "label", "kind": "labelmap", "classes": {str(k): v for k, v in CLASSES.items()}}
    seg_node = S.add_labelmap(mrml, tmp_path / "zeros.nii.gz", "zeros", entry, affine=affine)
    seg = seg_node.GetSegmentation()
    assert sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())) == \
        sorted(CLASSES.values())
    img = nib.load(S.export_label(mrml, seg_node, tmp_path / "zeros_back.nii.gz"))
    assert img.shape == (12, 10, 8) and not np.asarray(img.dataobj).any()
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)


def slicer_binary_labelmap(scene, seg_node, segment_id):
    """One segment as a labelmap volume node in the segmentation's reference geometry."""
    import slicer
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        seg_node, ids, node, None, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    return node


def test_manifest_colours_override_the_palette(mrml, tmp_path):
    w = BundleWriter("cdl", "sha256:1", "img", np.eye(4), (8, 8, 8))
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    w.add_volume("label", lab, kind="labelmap", classes={1: "lesion"}, colors={"1": [255, 0, 128]})
    seg = S.load_bundle(mrml, w.write(tmp_path / "b.zip")).nodes["label"].GetSegmentation()
    np.testing.assert_allclose(seg.GetNthSegment(0).GetColor(), (1, 0, 128 / 255), atol=1e-6)


def test_volumes_have_the_inputs_geometry_and_values(mrml, bundle):
    path, arrays = bundle
    nodes = S.load_bundle(mrml, path).nodes
    spacing = np.linalg.norm(oblique_affine()[:3, :3], axis=0)
    for name, array in arrays.items():
        if name == "label":
            continue
        node = nodes[name]
        np.testing.assert_allclose(S.ijk_to_ras(node), oblique_affine(), atol=1e-4)  # direction, spacing, origin
        np.testing.assert_allclose(node.GetSpacing(), spacing, atol=1e-5)
        np.testing.assert_allclose(node.GetOrigin(), oblique_affine()[:3, 3], atol=1e-4)
        tol = 1e-4 if name != "probability/enhancing" else 2.0 / 65535  # int16 scaled in the bundle
        np.testing.assert_allclose(S.array_from_volume(node), array, atol=tol, err_msg=name)
        lo, hi = node.GetImageData().GetScalarRange()
        assert lo == pytest.approx(array.min(), abs=tol) and hi == pytest.approx(array.max(), abs=tol)


def test_left_handed_input_keeps_its_voxels_and_label_export_restores_the_order(mrml, tmp_path):
    path = tmp_path / "lh.zip"
    arrays = make_bundle(path, oblique_affine(handed=-1))
    nodes = S.load_bundle(mrml, path).nodes
    for name in ("reconstruction/T1ce", "attribution/integrated_gradients/enhancing"):
        assert physical_equal(nodes[name], arrays[name], oblique_affine(-1)), name
    img = nib.load(S.export_label(mrml, nodes["label"], tmp_path / "lh_label.nii.gz"))
    np.testing.assert_array_equal(np.asarray(img.dataobj), arrays["label"])  # voxel for voxel like the image
    np.testing.assert_allclose(img.affine, oblique_affine(-1), atol=1e-4)


def test_colour_maps_and_windows_follow_the_metadata(mrml, bundle):
    path, arrays = bundle
    nodes = S.load_bundle(mrml, path).nodes

    def window(name):
        d = nodes[name].GetDisplayNode()
        return d.GetColorNode().GetName(), d.GetWindowLevelMin(), d.GetWindowLevelMax(), d.GetAutoWindowLevel()

    assert window("probability/enhancing") == ("SparseSight probability", 0.0, 1.0, 0)
    cmap, lo, hi, auto = window("attribution/integrated_gradients/enhancing")  # signed: diverging around 0
    a = np.abs(arrays["attribution/integrated_gradients/enhancing"])
    assert cmap == "SparseSight diverging" and not auto
    assert lo == -hi and (a <= hi).mean() == pytest.approx(S.ROBUST, abs=1.5 / a.size)
    cmap, lo, hi, _ = window("reconstruction/T1ce")  # no colour map: grey over the central 99.5 % of the values
    r = arrays["reconstruction/T1ce"]
    assert cmap == "Grey" and r.min() <= lo < hi <= r.max()
    assert ((r >= lo) & (r <= hi)).mean() == pytest.approx(S.ROBUST, abs=0.005)
    assert window("shrinkage_mask")[:3] == ("Iron", 0.0, 1.0)  # any colour node of Slicer by name

    diverging = nodes["attribution/integrated_gradients/enhancing"].GetDisplayNode().GetColorNode()
    mid, low, high = (diverging.GetLookupTable().GetTableValue(i) for i in (127, 0, 255))
    assert min(mid[:3]) > 0.95  # 0 is white
    assert low[2] > low[0] and high[0] > high[2]  # negative blue, positive red


def test_display_rule_on_metadata_alone():
    assert S.display_for({"method": "xrai"}, (0.0, 2.0)) == ("grey", 0.0, 2.0)  # unsigned attribution
    assert S.display_for({"method": "ig"}, (-1.0, 3.0)) == ("signed", -3.0, 3.0)
    assert S.display_for({"colormap": "diverging", "range": [0.5, 2.0]}, (0, 9)) == ("diverging", -2.0, 2.0)
    assert S.display_for({"colormap": "probability"}, (0.2, 0.3)) == ("probability", 0.0, 1.0)
    assert S.display_for({}, (4.0, 4.0)) == ("grey", 4.0, 5.0)
    assert S.display_for({"window": [1, 2], "colormap": "Iron"}, (0, 9)) == ("iron", 1.0, 2.0)


def test_a_few_extreme_voxels_do_not_set_the_window():
    values = np.r_[np.linspace(-1, 1, 1999), 500.0]  # one outlier among 2000
    cmap, lo, hi = S.display_for({"range": [-1, 500]}, (-1, 500), values)
    assert cmap == "grey" and lo == pytest.approx(-0.995, abs=1e-3) and hi == pytest.approx(0.995, abs=1e-3)
    cmap, lo, hi = S.display_for({"method": "ig", "range": [-1, 500]}, (-1, 500), values)
    assert cmap == "signed" and hi == -lo and hi == pytest.approx(0.995, abs=2e-3)


def test_table_and_plot(mrml, bundle):
    path, _ = bundle
    nodes = S.load_bundle(mrml, path).nodes
    table = nodes["params"]
    assert table.GetNumberOfRows() == 2 and table.GetNumberOfColumns() == 4
    assert [table.GetColumnName(c) for c in range(4)] == ["class", "lam1", "mu1", "consistent"]
    assert table.GetTable().GetColumn(1).GetClassName() == "vtkDoubleArray"
    assert table.GetTable().GetColumn(1).GetValue(1) == -0.125
    assert table.GetCellText(0, 0) == "oedema" and table.GetCellText(1, 3) == "False"

    plot = nodes["params_plot"]
    pixels = S.array_from_volume(plot)  # (columns, rows, 1, RGBA)
    assert pixels.shape[:3] == (30, 20, 1)
    top, bottom = pixels[15, -1, 0, :3], pixels[15, 0, 0, :3]  # row j grows upwards (anterior) in the Red view
    assert tuple(top) == (255, 0, 0) and tuple(bottom) == (0, 0, 255)


def test_review_page_metrics_show_each_maps_verdicts_and_flags(mrml, tmp_path, monkeypatch):
    # what the browser review page lists beside the maps (sparsesight_viewer.session, over the same MRML nodes as the
    # Slicer module): figures, verdicts and every flag of a map's quality, so a failed check is seen where it is shown
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "apps" / "viewer"))
    from sparsesight_viewer.session import ReviewSession

    w = BundleWriter("microstructure", "sha256:0123456789abcdef", "dwi_000", np.eye(4), SHAPE)
    flag = "nu_1: the signal does not bound it at SNR 30, above the 0.03 it is read to (Cramér–Rao)"
    w.add_volume("nu/1", np.full(SHAPE, 0.5, np.float32),
                 quality={"crlb_mae_floor_median": 0.7979, "crlb_aim": 0.03, "flags": [flag]})
    w.add_volume("attribution/xrai/enhancing", np.zeros(SHAPE, np.float32),
                 quality={"deletion_gain_vs_random": 0.8, "faithful": False, "sane": True, "flags": []})
    w.write(tmp_path / "b.zip")
    session = ReviewSession(mrml, workdir=tmp_path / "work")
    run = S.load_bundle(mrml, tmp_path / "b.zip")
    session._use(run)
    rows = set(session.metrics())
    # and in Slicer, where the node is shown (Data module): its description says it is flagged, and why
    assert run.nodes["nu/1"].GetDescription() == f"FLAGGED: {flag}"
    assert json.loads(run.nodes["nu/1"].GetAttribute(S.ATTR + "flags")) == [flag]
    assert not run.nodes["attribution/xrai/enhancing"].GetDescription()
    assert ("nu/1", "quality.crlb_mae_floor_median", "0.7979") in rows and ("nu/1", "quality.flag", flag) in rows
    assert ("attribution/xrai/enhancing", "quality.faithful", "NO") in rows
    assert ("attribution/xrai/enhancing", "quality.sane", "yes") in rows
    assert not any(r[0] == "attribution/xrai/enhancing" and r[1] == "quality.flag" for r in rows)


def test_a_label_segmented_from_a_noisy_scan_is_flagged_where_it_is_shown(mrml, tmp_path, monkeypatch):
    """The served label carries the input's noise and slice thickness against the shipped weights' measured
    tolerances (input_noise, input_grid) and its agreement with the mirrored scan's label against the measured
    threshold (label_consistency): a scan far noisier, with far thicker slices, than those, segmented differently
    when mirrored, gives a segmentation whose description says FLAGGED, and why, and the review page's table lists
    the figures and flags."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "apps" / "viewer"))
    from sparsesight.input_noise import tolerances
    from sparsesight.runners.segmentation import add_label
    from sparsesight_viewer.session import ReviewSession

    version = tolerances()["sum"]["version"]  # the shipped weights' version, as the server names it
    rng = np.random.default_rng(0)
    image = np.stack([np.full(SHAPE, 100.0) + 50 * rng.standard_normal(SHAPE) for _ in range(4)]).astype(np.float32)
    w = BundleWriter("sum", version, "noisy", np.diag([1.0, 1.0, 8.0, 1.0]), SHAPE)
    mirrored = np.zeros(SHAPE, np.uint8)
    mirrored[: SHAPE[0] // 2] = 1  # the mirrored scan's label finds tumour where the label has none
    # and 8 mm slices (input_grid), and a label that changes when the scan is mirrored (label_consistency)
    add_label(w, np.zeros(SHAPE, np.uint8), image, mirrored=mirrored)
    w.write(tmp_path / "b.zip")
    run = S.load_bundle(mrml, tmp_path / "b.zip")
    node = run.nodes["label"]
    flags = json.loads(node.GetAttribute(S.ATTR + "flags"))
    assert len(flags) == 3 and flags[0].startswith("input noise sigma_z") and "thicker than" in flags[1]
    assert flags[2].startswith("the label changes when the scan is mirrored left-right: WT agreement 0.000")
    assert all(f"FLAGGED: {f}" in node.GetDescription() for f in flags)
    session = ReviewSession(mrml, workdir=tmp_path / "work")
    session._use(run)
    rows = set(session.metrics())
    assert ("label", "input_noise.flag", flags[0]) in rows and ("label", "input_grid.flag", flags[1]) in rows
    assert any(r[:2] == ("label", "input_noise.sigma_z_max") and float(r[2]) > 0.5 for r in rows)
    assert ("label", "input_grid.slice_mm", "8") in rows
    assert ("label", "label_consistency.flag", flags[2]) in rows
    assert ("label", "label_consistency.agreement.WT", "0") in rows and ("label", "input_noise.sigma_z.FLAIR") in {
        r[:2] for r in rows}


def test_a_resampled_scans_noise_is_shown_with_where_it_was_estimated(mrml, tmp_path, monkeypatch):
    """A scan resampled onto the model's grid has its noise estimated on its own grid, times the share of it the
    resampling kept, against the tolerance measured on resampled scans (bench/noise_grid): Slicer's description
    and the review page's table show the flag, the gain and the own-grid figures."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "apps" / "viewer"))
    from sparsesight.input_noise import tolerances
    from sparsesight.runners.segmentation import add_label
    from sparsesight_viewer.session import ReviewSession

    version = tolerances(resampled=True)["sum"]["version"]
    rng = np.random.default_rng(0)
    image = np.stack([np.full(SHAPE, 100.0) + 50 * rng.standard_normal(SHAPE) for _ in range(4)]).astype(np.float32)
    # as load_on_model_grid reports a scan it resampled: sigma^ on the scan's own grid and the gain
    resampled = {"from_voxel_mm": [1.2, 0.9, 1.3], "from_axes": "LPS", "from_sigma": [90.0] * 4,
                 "from_sigma_z": [0.9] * 4, "noise_gain": 0.54}
    w = BundleWriter("sum", version, "noisy", np.eye(4), SHAPE)
    add_label(w, np.zeros(SHAPE, np.uint8), image, resampled=resampled)
    w.write(tmp_path / "b.zip")
    node = S.load_bundle(mrml, tmp_path / "b.zip").nodes["label"]
    flags = json.loads(node.GetAttribute(S.ATTR + "flags"))
    assert len(flags) == 1 and "bench/noise_grid" in flags[0] and f"FLAGGED: {flags[0]}" in node.GetDescription()
    session = ReviewSession(mrml, workdir=tmp_path / "work")
    session._use(S.load_bundle(mrml, tmp_path / "b.zip"))
    rows = set(session.metrics())
    assert ("label", "input_noise.noise_gain", "0.54") in rows and ("label", "input_noise.flag", flags[0]) in rows
    assert ("label", "input_noise.own_grid_sigma_z.FLAIR", "0.9") in rows
    served = next(float(r[2]) for r in rows if r[:2] == ("label", "input_noise.sigma_z_max"))
    assert served == pytest.approx(90 * 0.54 / image[0].std(), rel=0.02)


def test_two_runs_are_two_folders_side_by_side(mrml, bundle):
    path, _ = bundle
    first, second = S.load_bundle(mrml, path), S.load_bundle(mrml, path)
    sh = S.subject_hierarchy(mrml)
    assert first.folder != second.folder
    assert sh.GetItemParent(first.folder) == sh.GetItemParent(second.folder)
    assert S.inferences(mrml) == [first.folder, second.folder]
    assert set(S.outputs(mrml, first.folder).values()).isdisjoint(S.outputs(mrml, second.folder).values())
    S.set_visible(first.nodes["label"], False)
    S.set_visible(second.nodes["label"], True, opacity=0.3)
    assert not first.nodes["label"].GetDisplayNode().GetVisibility()
    assert second.nodes["label"].GetDisplayNode().GetOpacity() == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------- MRB
def test_mrb_round_trip_keeps_everything(mrml, bundle, tmp_path):
    path, arrays = bundle
    before = S.load_bundle(mrml, path)
    S.set_visible(before.nodes["label"], True, opacity=0.4)
    mrb = S.save_mrb(mrml, tmp_path / "review.mrb")
    scene = S.load_mrb(mrb)

    folders = S.inferences(scene)
    assert len(folders) == 1
    sh = S.subject_hierarchy(scene)
    assert sh.GetItemName(sh.GetItemParent(folders[0])) == "case_042"
    assert json.loads(sh.GetItemAttribute(folders[0], "SparseSight.manifest")) == before.manifest
    after = S.outputs(scene, folders[0])
    assert set(after) == set(before.nodes)
    for name, node in after.items():
        old = before.nodes[name]
        assert node.GetClassName() == old.GetClassName() and node.GetName() == old.GetName()
        assert node.GetAttribute("SparseSight.meta") == old.GetAttribute("SparseSight.meta")
        if node.IsA("vtkMRMLScalarVolumeNode"):
            np.testing.assert_allclose(S.ijk_to_ras(node), S.ijk_to_ras(old), atol=1e-6)
            np.testing.assert_array_equal(S.array_from_volume(node), S.array_from_volume(old))
            d, od = node.GetDisplayNode(), old.GetDisplayNode()
            name_of = lambda c: c.GetName() if c is not None else None  # noqa: E731 - a plot has no colour node
            assert name_of(d.GetColorNode()) == name_of(od.GetColorNode())
            assert (d.GetWindowLevelMin(), d.GetWindowLevelMax()) == pytest.approx(  # MRML keeps 6 digits
                (od.GetWindowLevelMin(), od.GetWindowLevelMax()), rel=1e-5)
    seg = after["label"].GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        old = before.nodes["label"].GetSegmentation().GetSegment(seg.GetNthSegmentID(i))
        assert segment.GetName() == old.GetName()
        np.testing.assert_allclose(segment.GetColor(), old.GetColor(), atol=1e-6)
    assert after["label"].GetDisplayNode().GetOpacity() == pytest.approx(0.4)
    assert after["params"].GetCellText(1, 1) == before.nodes["params"].GetCellText(1, 1)
    # the reloaded segmentation still exports the same label, voxel for voxel
    img = nib.load(S.export_label(scene, after["label"], tmp_path / "after.nii.gz"))
    np.testing.assert_array_equal(np.asarray(img.dataobj), arrays["label"])


# ---------------------------------------------------------------------------------------------- refusals
def test_bad_bundles_are_refused_with_a_reason(mrml, tmp_path):
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"hello")
    with pytest.raises(S.SceneError, match="not a result bundle"):
        S.load_bundle(mrml, not_zip)

    w = BundleWriter("m", "v", "img", np.eye(4), (8, 8, 8))
    w.add_table("t", [{"a": 1}])
    path = w.write(tmp_path / "b")  # a directory bundle
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["outputs"][0]["kind"] = "hologram"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(S.SceneError, match="unknown kind 'hologram'"):
        S.load_bundle(mrml, path)


def test_a_failing_output_leaves_nothing_half_loaded(mrml, tmp_path):
    w = BundleWriter("m", "v", "img", np.eye(4), (8, 8, 8))
    w.add_volume("fine", np.ones((8, 8, 8)))
    w.add_volume("broken", np.ones((8, 8, 8)))
    path = w.write(tmp_path / "b")
    (path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    volumes = mrml.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    with pytest.raises(S.SceneError, match="broken.nii.gz"):
        S.load_bundle(mrml, path)
    assert S.inferences(mrml) == []
    assert mrml.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == volumes


def test_segment_that_is_no_class_is_refused_on_export(mrml, bundle, tmp_path):
    path, _ = bundle
    seg_node = S.load_bundle(mrml, path).nodes["label"]
    seg = seg_node.GetSegmentation()
    seg.AddEmptySegment("scribble", "scribble")
    with pytest.raises(S.SceneError, match="'scribble' is not one of the classes"):
        S.export_label(mrml, seg_node, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- the module itself
def test_module_self_test_runs_on_slicer_core(mrml, tmp_path):
    """SparseSightTest's body (sample data written by Slicer itself), here on slicer-core."""
    result = selftest.run(mrml, tmp_path)
    assert len(result["nodes"]) == 5 and result["mrb"].stat().st_size > 0


def test_module_widgets_exist_in_the_ui_and_parameters_in_the_node():
    source = (MODULE_DIR / "SparseSight.py").read_text()
    tree = ast.parse(source)
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "SparseSight.ui")
    widgets = {w.get("name"): w.get("class") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used and used <= set(widgets), sorted(used - set(widgets))
    params = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    node_cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SparseSightParameterNode")
    fields = {s.target.id for s in node_cls.body if isinstance(s, ast.AnnAssign)}
    assert params <= fields, sorted(params - fields)
    by_hand = {f for f in fields - params if re.search(rf'_set\("{f}"|\.{f} = ', source)}
    assert fields - params == by_hand, sorted(fields - params - by_hand)  # every field is bound or set
    # a str field on a QComboBox needs a Choice annotation (Slicer's connector refuses it otherwise)
    for field in node_cls.body:
        if isinstance(field, ast.AnnAssign) and field.target.id in params:
            widget = next(w for w in ui.iter("widget") if any(
                p.get("name") == "SlicerParameterName" and p.find("string").text == field.target.id
                for p in w.findall("property")))
            if widget.get("class") == "QComboBox":
                assert "Choice(" in ast.unparse(field.annotation), field.target.id
    for cls in ("SparseSight", "SparseSightWidget", "SparseSightLogic", "SparseSightTest"):
        assert any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body), cls
    assert widgets["segmentEditorWidget"] == "qMRMLSegmentEditorWidget"
    assert widgets["outputsTreeView"] == "qMRMLSubjectHierarchyTreeView"


def test_module_files_are_listed_in_cmake_and_never_import_the_library():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    for py in MODULE_DIR.rglob("*.py"):
        rel = py.relative_to(MODULE_DIR).as_posix().replace("SparseSight", "${MODULE_NAME}", 1)
        assert rel in cmake, rel
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] == "sparsesight" for m in mods), py
    for res in re.findall(r"Resources/\S+", cmake):
        assert (MODULE_DIR / res.replace("${MODULE_NAME}", "SparseSight")).is_file(), res
    assert "WITH_GENERIC_TESTS" in cmake
    top = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert f"set({key} " in top, key


def test_bundle_format_is_the_one_the_scene_reads_and_other_formats_are_named():
    from sparsesight import bundle as lib_bundle

    assert S.FORMAT == lib_bundle.FORMAT  # writer and readers move together
    assert S.format_note({"format": lib_bundle.FORMAT}) is None
    assert "older SparseSight (format 1" in S.format_note({})  # bundles written before the key existed
    assert "newer SparseSight" in S.format_note({"format": lib_bundle.FORMAT + 1})
    assert "not a number" in S.format_note({"format": "two"})
