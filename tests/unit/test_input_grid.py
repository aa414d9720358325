"""The input's slice thickness a bundle reports, the tolerance it is flagged against (input_grid.py), and the
thick-slice cases that tolerance is measured on (bench/slice_tolerance.py)."""
from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import voxel_sizes

from sparsesight.bench.noise_tolerance import tolerance
from sparsesight.bench.slice_tolerance import thick_case
from sparsesight.input_grid import assess, tolerances
from sparsesight.runners.segmentation import input_voxel_mm

TABLE = {"sum": {"version": "sha256:abc", "slice_mm": 2.5}}


def test_voxel_size_is_read_along_each_voxel_axis_in_any_orientation():
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 0], aff[2, 1], aff[3, 3] = -3.0, 0.9, 1.2, 1  # a sagittal-like permutation, flipped
    assert voxel_sizes(aff) == pytest.approx([0.9, 1.2, 3.0])
    # the served path reports the voxel of the file as it came in, before resampling to the model's grid
    assert input_voxel_mm(np.eye(4), {"from_voxel_mm": [1.0, 1.0, 5.0]}) == [1.0, 1.0, 5.0]
    assert input_voxel_mm(np.diag([1.0, 1.0, 1.0, 1.0]), None) == [1.0, 1.0, 1.0]


def test_slices_thicker_than_the_measured_tolerance_are_flagged():
    ok = assess([1.0, 1.0, 2.5], "sum", "sha256:abc", TABLE)
    assert ok == {"voxel_mm": [1.0, 1.0, 2.5], "slice_mm": 2.5, "tolerance_mm": 2.5, "flags": []}
    assert assess([1.0, 1.0, 2.54], "sum", "sha256:abc", TABLE)["flags"] == []  # a rounded slice thickness
    bad = assess([0.9, 5.0, 0.9], "sum", "sha256:abc", TABLE)  # any axis can be the slice axis
    assert bad["slice_mm"] == 5.0 and len(bad["flags"]) == 1 and "thicker than 2.50 mm" in bad["flags"][0]
    other = assess([1.0, 1.0, 5.0], "sum", "sha256:retrained", TABLE)
    assert other["tolerance_mm"] is None and other["flags"] == [] and "not measured" in other["note"]


def test_the_shipped_tolerances_belong_to_the_shipped_weights():
    from sparsesight import model_card
    from sparsesight.pretrain import PRETRAINED

    table = tolerances()
    for m in ("sum", "mlcsc"):
        card = model_card.read(PRETRAINED / f"{m}.pt")
        assert table[m]["version"] == card["version"] and table[m]["slice_mm"] >= 1.0


def test_slice_tolerance_is_the_thickest_level_that_held():
    def row(mm, tc):
        return {"level": mm, "slice_mm": mm, "dice": {"WT": 0.95, "TC": tc, "ET": 0.9}}

    rows = [row(1.0, 0.90), row(2.0, 0.88), row(3.0, 0.80), row(4.0, 0.9)]
    assert tolerance(rows, key="slice_mm") == {"slice_mm": 2.0, "level": 2.0}


def test_a_thick_slice_case_averages_along_one_axis_and_keeps_the_world():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 20, 22, 30), np.float32)
    image[:, 4:16, 4:18, 5:25] = 100 + rng.standard_normal((2, 12, 14, 20)).astype(np.float32)
    label = np.zeros((20, 22, 30), np.uint8)
    label[8:12, 8:14, 10:20] = 3  # a 10 mm lesion along z
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-10, -11, -15]
    img, lab, aff = thick_case(image, label, affine, 3.0, axis=2)
    assert img.shape == (2, 20, 22, 10) and lab.shape == (20, 22, 10)
    assert voxel_sizes(aff) == pytest.approx([1.0, 1.0, 3.0]) and aff[:3, 3] == pytest.approx(affine[:3, 3])
    # voxel k of the thick grid lies at z = 3k mm of the original: nearest-neighbour label, averaged image
    assert np.array_equal(lab, label[:, :, ::3])
    assert img[:, 10, 10, 3].mean() == pytest.approx(100, abs=1.5)  # inside: the mean intensity is kept
    assert np.std(img[:, 10, 10, 3:7]) < 0.8 * np.std(image[:, 10, 10, 8:22])  # the slice profile averages noise


def test_the_plain_label_answer_carries_the_input_checks_and_all_their_flags():
    """segmentation.input_checks: what the infer task's plain label answer puts in its params, the bundle label's
    input_noise and input_grid, with every flag in one list."""
    from sparsesight.runners.segmentation import input_checks

    version = tolerances()["sum"]["version"]  # the shipped weights, whose tolerances were measured
    rng = np.random.default_rng(0)
    shape = (12, 10, 8)
    noisy = np.stack([100 + 50 * rng.standard_normal(shape) for _ in range(4)]).astype(np.float32)
    bad = input_checks(noisy, np.diag([1.0, 1.0, 8.0, 1.0]), "sum", version)
    assert len(bad["flags"]) == 2 and bad["flags"] == bad["input_noise"]["flags"] + bad["input_grid"]["flags"]
    smooth = np.stack([np.broadcast_to(np.linspace(50, 150, shape[0])[:, None, None], shape)] * 4)
    assert input_checks(smooth.astype(np.float32), np.eye(4), "sum", version)["flags"] == []
