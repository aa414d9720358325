"""The input's slice thickness a bundle reports, the tolerance it is flagged against (input_grid.py), and the
thick-slice cases that tolerance is measured on (bench/slice_tolerance.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nibabel.affines import voxel_sizes

from sparsesight.bench.noise_tolerance import tolerance
from sparsesight.bench.slice_tolerance import thick_case
from sparsesight.input_grid import assess, smoothed_tolerances, tolerances, upsampled_tolerances
from sparsesight.runners.segmentation import input_voxel_mm

ROOT = Path(__file__).resolve().parents[2]
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

    table, up, smooth = tolerances(), upsampled_tolerances(), smoothed_tolerances()
    for m in ("sum", "mlcsc"):
        card = model_card.read(PRETRAINED / f"{m}.pt")
        assert table[m]["version"] == card["version"] and table[m]["slice_mm"] >= 1.0
        assert up[m]["version"] == smooth[m]["version"] == card["version"]


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


# ------------------------------------------------------------------------------------------ upsampled thick slices
UPSAMPLED = {"sum": {"version": "sha256:abc", "apparent_mm": 3.0}}


def _brain_noise(shape=(48, 44, 40), channels=2, seed=0):
    """White noise inside a smooth ellipsoid 'brain' on a zero background (what apparent_factor reads)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    anatomy = 100 + 20 * np.cos(3 * grid[0]) * np.sin(2 * grid[1])
    return np.stack([np.where(brain, anatomy + 5 * rng.standard_normal(shape), 0) for _ in range(channels)]
                    ).astype(np.float32)


def _upsample(image, factor, axis, order):
    from scipy import ndimage as ndi

    keep = [slice(None)] * 3
    keep[axis] = slice(None, None, factor)
    zoom = [1.0] * 3
    zoom[axis] = image.shape[axis + 1] / image[(0, *keep)].shape[axis]
    return np.stack([ndi.zoom(c[tuple(keep)], zoom, order=order) for c in image])


def test_white_noise_reads_one_voxel_along_every_axis():
    from sparsesight.input_grid import apparent_factor

    assert apparent_factor(_brain_noise()) == pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    assert apparent_factor(_brain_noise(shape=(48, 44, 12)))[2] is None  # too short an axis to read


@pytest.mark.parametrize("factor,axis,order,low,high", [(4, 2, 1, 3.5, 7.0), (4, 0, 3, 2.5, 5.0), (2, 1, 1, 1.8, 3.5)])
def test_noise_upsampled_along_an_axis_reads_about_the_factor_there(factor, axis, order, low, high):
    """Linear upsampling reads above the factor, cubic below (input_grid's docstring; bench/upsampled_slices)."""
    from sparsesight.input_grid import apparent_factor, apparent_slice

    reading = apparent_factor(_upsample(_brain_noise(), factor, axis, order))
    assert low <= reading[axis] <= high
    assert apparent_slice(reading, [1.0, 1.0, 1.0])[1] == axis  # the thickest reading is the upsampled axis


def test_an_apparent_slice_above_the_measured_reading_is_flagged_and_the_header_is_not_trusted():
    ok = assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[1.0, 1.0, 2.9], upsampled_table=UPSAMPLED)
    assert ok["flags"] == [] and ok["apparent_slice_mm"] == 2.9 and ok["apparent_tolerance_mm"] == 3.0
    bad = assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[1.2, None, 4.5], upsampled_table=UPSAMPLED)
    assert bad["apparent_axis"] == 2 and len(bad["flags"]) == 1
    assert "upsampled from slices about 4.5 mm thick (its header says 1 mm)" in bad["flags"][0]
    # a scan whose thick slices are on its own grid reads about 1 voxel there: the header's check is the one that speaks
    thick = assess([1.0, 1.0, 5.0], "sum", "sha256:abc", TABLE, apparent=[1.0, 1.0, 1.1], upsampled_table=UPSAMPLED)
    assert len(thick["flags"]) == 1 and "thicker than 2.50 mm" in thick["flags"][0]
    other = assess([1.0, 1.0, 1.0], "sum", "sha256:retrained", TABLE, apparent=[1, 1, 5], upsampled_table=UPSAMPLED)
    assert other["flags"] == [] and "not measured" in other["apparent_note"]


# ------------------------------------------------------------------------------------------ smoothed in 3D
SMOOTHED = {"sum": {"version": "sha256:abc", "apparent_mm": 4.0}}


def test_noise_smoothed_in_3d_reads_alike_along_every_axis_and_is_not_called_upsampled():
    """A Gaussian filter (or a denoiser, or no noise at all) correlates the noise along every axis: the reading is
    high everywhere, unlike a scan upsampled along one axis, whose other axes read less (input_grid.smoothed)."""
    from scipy import ndimage as ndi

    from sparsesight.input_grid import ISOTROPIC_RATIO, apparent_factor, smoothed

    blurred = apparent_factor(np.stack([ndi.gaussian_filter(c, 1.0) for c in _brain_noise()]))
    assert min(blurred) >= 2.5 and max(blurred) <= 1.2 * min(blurred) and smoothed(blurred)
    for factor, axis, order in [(4, 2, 1), (4, 0, 3), (3, 1, 0)]:
        up = apparent_factor(_upsample(_brain_noise(), factor, axis, order))
        assert not smoothed(up)
        others = [f for a, f in enumerate(up) if a != axis and f is not None]
        assert all(up[axis] > ISOTROPIC_RATIO * f for f in others)  # the thick axis stands out
    assert not smoothed(apparent_factor(_brain_noise()))  # white noise: nothing to call smoothed
    assert not smoothed([4.0, 4.0, None])  # an axis not read: no pattern over every axis


def test_the_isotropy_ratio_tells_the_recorded_smoothed_scans_from_the_upsampled_ones():
    """On the benches' records: every smoothed, denoised or noise-free phantom whose axes all read as upsampled is
    called smoothed, and no scan upsampled along one axis (z in the shipped record; x and y in bench/results) is."""
    import json

    from sparsesight.input_grid import smoothed, upsampled

    data = ROOT / "lib" / "sparsesight" / "data"
    made = json.loads((data / "smoothed_tolerance.json").read_text())["readings"]
    filtered = [r["factor"] for r in made if r["kind"] != "as made" and all(upsampled(f) for f in r["factor"])]
    assert len(filtered) >= 10 and all(smoothed(f) for f in filtered)
    ups = [r["factor"] for p in [data / "upsampled_tolerance.json", *sorted((ROOT / "bench" / "results").glob(
        "upsampled_slices_axis*.json"))] for r in json.loads(p.read_text())["readings"] if r["order"] is not None]
    assert len(ups) >= 30 and not any(smoothed(f) for f in ups)


def test_a_smoothed_scan_is_flagged_against_the_smoothed_tolerance_and_told_apart_from_upsampling():
    ok = assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[3.5, 3.3, 3.1], upsampled_table=UPSAMPLED,
                smoothed_table=SMOOTHED)
    # 3.5 mm is above the upsampled tolerance (3.0) but within the smoothed one (4.0): not flagged
    assert ok["apparent_pattern"] == "smoothed" and ok["flags"] == [] and ok["apparent_tolerance_mm"] == 4.0
    bad = assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[5.4, 5.3, 5.1], upsampled_table=UPSAMPLED,
                 smoothed_table=SMOOTHED)
    assert len(bad["flags"]) == 1 and "smoothed or denoised in 3D" in bad["flags"][0]
    assert "upsampled" not in bad["flags"][0] and "5.1-5.4 voxels along every axis" in bad["flags"][0]
    up = assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[2.3, 2.1, 4.5], upsampled_table=UPSAMPLED,
                smoothed_table=SMOOTHED)
    assert up["apparent_pattern"] == "upsampled" and "upsampled from slices about 4.5 mm" in up["flags"][0]
    white = assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[1.0, 1.0, 1.1], upsampled_table=UPSAMPLED,
                   smoothed_table=SMOOTHED)
    assert white["apparent_pattern"] is None and white["flags"] == []
    unmeasured = assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[5.4, 5.3, 5.1],
                        upsampled_table=UPSAMPLED, smoothed_table={})
    assert unmeasured["flags"] == [] and "smoothed_scans" in unmeasured["apparent_note"]


def test_upsampled_tolerance_is_the_largest_reading_before_the_first_group_that_fell():
    from sparsesight.bench.upsampled_slices import tolerance as upsampled_tolerance

    def row(mm, et):
        return {"apparent_mm": mm, "dice": {"WT": 0.95, "TC": 0.9, "ET": et}}

    rows = [row(1.0, 0.90), row(2.6, 0.88), row(1.7, 0.89), row(4.2, 0.80), row(3.4, 0.87), row(5.0, 0.88)]
    assert upsampled_tolerance(rows) == {"apparent_mm": 3.4, "fell": 1, "caught": 1, "false_flags": 1, "missed": 0}
    # a group that held at the very reading of one that fell does not lift the tolerance to that reading
    rows = [row(1.0, 0.90), row(4.9, 0.87), row(5.1, 0.87), row(5.1, 0.80), row(6.4, 0.8)]
    assert upsampled_tolerance(rows) == {"apparent_mm": 4.9, "fell": 2, "caught": 2, "false_flags": 1, "missed": 0}
    assert upsampled_tolerance([row(1.0, 0.9), row(2.0, 0.8)])["apparent_mm"] == 1.0


def test_runs_along_different_axes_combine_into_one_tolerance_over_all_their_groups():
    """A reading that fell along one axis bounds the tolerance along all (upsampled_slices.combine); runs that do
    not share their settings, weights or 1 mm scans, or repeat an axis, are refused."""
    from sparsesight.bench.upsampled_slices import combine

    def run(axis, groups, levels=(4.0, 5.0)):
        rows = [{"level": 1.0, "order": None, "apparent_mm": 1.0, "dice": {"WT": 0.95, "TC": 0.9, "ET": 0.9}}]
        rows += [{"level": lv, "order": 1, "apparent_mm": mm, "dice": {"WT": 0.95, "TC": 0.9, "ET": et}}
                 for lv, (mm, et) in zip(levels, groups)]
        per_input = [{"case": "c", "level": r["level"], "order": r["order"], "apparent_mm": r["apparent_mm"],
                      "dice": r["dice"]} for r in rows]
        readings = [{"case": "c", "level": r["level"], "order": r["order"], "factor": [1.0, 1.0, 1.0],
                     "apparent_mm": r["apparent_mm"], "apparent_axis": axis} for r in rows]
        return {"drop": 0.05, "levels": list(levels), "orders": [1], "axis": axis, "command": f"run {axis}",
                "data": f"phantoms with slices thick along voxel axis {axis}, upsampled", "readings": readings,
                "models": {"sum": {"version": "sha256:abc", "rows": rows, "per_input": per_input}}}

    z, y = run(2, [(4.2, 0.89), (5.5, 0.80)]), run(1, [(4.0, 0.89), (4.5, 0.82)])  # y fell at 4.5, z held at 4.2
    both = combine([z, y])
    m = both["models"]["sum"]
    assert m["apparent_mm"] == 4.2 and (m["fell"], m["caught"], m["missed"]) == (2, 2, 0)
    assert combine([z])["models"]["sum"]["apparent_mm"] == 4.2  # z alone: the same here
    assert combine([run(2, [(4.6, 0.89), (5.5, 0.80)]), y])["models"]["sum"]["apparent_mm"] == 4.0  # 4.6 > 4.5 fell
    assert both["axes"] == [2, 1] and "along voxel axis 2, 1 in turn" in both["data"]
    assert [r.get("axis") for r in m["rows"]] == [None, 2, 2, 1, 1] and len(m["per_input"]) == 5
    assert len(both["readings"]) == 5 and both["combined_from"] == ["run 2", "run 1"]
    with pytest.raises(ValueError, match="same axis twice"):
        combine([z, z])
    with pytest.raises(ValueError, match="levels"):
        combine([z, run(1, [(4.0, 0.89)], levels=(3.0,))])
    other = run(1, [(4.0, 0.89), (4.5, 0.82)])
    other["models"]["sum"]["rows"][0]["dice"]["WT"] = 0.5
    with pytest.raises(ValueError, match="1 mm Dice differ"):
        combine([z, other])


def test_the_served_path_reads_the_noise_on_the_scans_own_grid(tmp_path):
    """An upsampled 1 mm scan (no resampling by the server) is read as it is; a scan the server resamples is read
    before the resampling (load_on_model_grid's `from_apparent_factor`), which would correlate its noise."""
    import nibabel as nib

    from sparsesight.runners.segmentation import input_checks, load_on_model_grid

    up = _upsample(_brain_noise(channels=4), 4, 2, 1)
    version = tolerances()["sum"]["version"]
    checks = input_checks(up, np.eye(4), "sum", version)
    assert checks["input_grid"]["apparent_axis"] == 2 and checks["input_grid"]["apparent_slice_mm"] > 3
    assert "looks upsampled along voxel axis 2" in checks["input_noise"]["upsampled_note"]
    assert "upsampled_note" not in input_checks(_brain_noise(channels=4), np.eye(4), "sum", version)["input_noise"]
    from scipy import ndimage as ndi

    blurred = input_checks(np.stack([ndi.gaussian_filter(c, 1.0) for c in _brain_noise(channels=4)]), np.eye(4),
                           "sum", version)
    assert blurred["input_grid"]["apparent_pattern"] == "smoothed" and "upsampled_note" not in blurred["input_noise"]
    assert "smoothed or denoised in 3D" in blurred["input_noise"]["smoothed_note"]

    class Model:  # the model's grid: 1 mm RAS (segmentation.model_grid reads `spacing_mm`)
        n, spacing_mm = 4, (1.0, 1.0, 1.0)

    path = tmp_path / "white_1p5mm.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(_brain_noise(channels=4), 0, -1), np.diag([1.5, 1.5, 1.5, 1.0])), path)
    image, affine, resampled = load_on_model_grid(Model(), path)
    assert resampled["from_apparent_factor"] == pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    assert max(input_grid_of(image, affine, resampled, version)["apparent_factor"]) < 1.2


def test_a_pacs_studys_series_resampled_onto_its_grid_are_left_out_of_the_reading():
    """Series the datastore resampled onto the study's grid (resampled["series"]) read that resampling, not the
    upload: the reading comes from the series on their own grid, and says which (`apparent_channels`); their own
    voxel sizes are the header check's (series_voxel_mm)."""
    from sparsesight.runners.segmentation import input_checks

    version = tolerances()["sum"]["version"]
    white = _brain_noise(channels=4)
    study = np.concatenate([white[:1], _upsample(_brain_noise(channels=3, seed=1), 4, 2, 1)])  # T1, T1ce, T2 thick
    assert input_checks(study, np.eye(4), "sum", version)["input_grid"]["apparent_pattern"] == "upsampled"
    series = {m: {"from_voxel_mm": [1.0, 1.0, 4.0], "noise_gain": 0.5} for m in ("T1", "T1ce", "T2")}
    g = input_checks(study, np.eye(4), "sum", version, resampled={"series": series})["input_grid"]
    assert g["apparent_channels"] == ["FLAIR"] and g["apparent_factor"] == pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    assert g["apparent_pattern"] is None and g["series_voxel_mm"]["T2"] == [1.0, 1.0, 4.0]
    assert "apparent_channels" not in input_checks(white, np.eye(4), "sum", version)["input_grid"]


def input_grid_of(image, affine, resampled, version):
    from sparsesight.runners.segmentation import input_checks

    return input_checks(image, affine, "sum", version, resampled=resampled)["input_grid"]


def test_a_near_zero_background_is_cleared_and_an_exact_one_left_alone():
    """Spline ringing leaves small values over the whole background; counted as brain, they moved the z-score and
    SUM lost the tumour (bench/upsampled_slices). clear_background zeroes the background, not the brain."""
    from sparsesight.transforms import clear_background

    clean = _brain_noise(channels=3)
    same, n = clear_background(clean)
    assert n == 0 and same is clean
    brain = (clean != 0).any(0)
    ringing = _upsample(clean, 3, 2, 3)  # cubic splines: non-zero far outside the brain
    assert (ringing != 0).any(0).mean() > 2 * brain.mean()
    cleared, n = clear_background(ringing)
    assert n > 0 and (cleared != 0).any(0).mean() < 1.3 * brain.mean()

    def brain_mean(x):  # what the z-score of intensity_normalisation (non-zero voxels) is taken over
        return x[0][(x != 0).any(0)].mean()

    true = ringing[0][brain].mean()  # over the brain itself
    assert brain_mean(ringing) < 0.4 * true  # the background counted as brain
    assert brain_mean(cleared) == pytest.approx(true, rel=0.2)  # a shell of ringing > 5 % next to a sharp edge stays
    assert abs(brain_mean(cleared) - true) < 0.3 * abs(brain_mean(ringing) - true)
    inside = ndi_erode(brain)
    assert np.array_equal(cleared[:, inside], ringing[:, inside])  # the brain is untouched
    dark = clean.copy()
    dark[:, 22:26, 20:24, 18:22] = 0.5  # a dark spot inside the brain is not background
    assert clear_background(dark)[1] == 0
    hot = clean.copy()
    hot[:, 24, 22, 20] = 1e6  # nor does one hot voxel lift the threshold over the brain (a percentile, not the max)
    assert clear_background(hot)[1] == 0


def test_the_smoothed_scans_variants():
    """Each kind of input the bench makes, in order: as made, without noise, non-local means at each factor of the
    noise's sigma (less noise left, the more so at twice sigma), Gaussians."""
    from scipy import ndimage as ndi

    from sparsesight.bench.smoothed_scans import variants

    shape = (24, 24, 20)
    noisy = _brain_noise(shape=shape, channels=2)  # white noise of sigma 5 on _brain_noise's anatomy
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    anatomy = np.where(brain, 100 + 20 * np.cos(3 * grid[0]) * np.sin(2 * grid[1]), 0).astype(np.float32)
    out = variants(noisy, np.stack([anatomy] * 2), [5.0, 5.0], [1.0], [1.0, 2.0])
    assert [(k, lv) for k, lv, _ in out] == [("as made", 0.0), ("noise-free", 0.0), ("nlmeans", 1.0),
                                             ("nlmeans", 2.0), ("gaussian", 1.0)]
    inner = ndi.binary_erosion(brain, iterations=2)
    left = [float(np.std((x[0] - anatomy)[inner])) for _, _, x in out]  # the noise each leaves
    assert left[0] == pytest.approx(5.0, rel=0.1) and left[1] == 0
    assert left[2] < 0.5 * left[0] and left[3] < left[2] and left[4] < 0.5 * left[0]
    assert all(x.shape == noisy.shape and x.dtype == np.float32 for _, _, x in out[2:])


@pytest.mark.slow
def test_the_smoothed_scans_bench_runs_in_a_small_form(tmp_path):
    """bench/smoothed_scans end to end on one held-out phantom and the shipped SUM: the scan as made, without noise
    and Gaussian-smoothed (non-local means left out here: test_the_smoothed_scans_variants). Without noise and
    smoothed, it reads high along every axis and is called smoothed."""
    import json

    from sparsesight.bench import smoothed_scans

    out, plot = tmp_path / "record.json", tmp_path / "plot.png"
    assert smoothed_scans.main(["--models", "sum", "--cases", "1", "--sigmas", "1", "--nlmeans", "--threads", "2",
                                "--out", str(out), "--plot", str(plot)]) == 0
    r = json.loads(out.read_text())
    rows = {row["kind"]: row for row in r["models"]["sum"]["rows"]}
    assert list(rows) == ["as made", "noise-free", "gaussian"] and plot.stat().st_size > 10_000
    assert rows["as made"]["apparent_mm"] == pytest.approx(1.0, abs=0.05) and rows["as made"]["smoothed"] == 0
    assert rows["noise-free"]["apparent_mm"] > 2.5 and rows["noise-free"]["smoothed"] == 1
    assert rows["gaussian"]["apparent_mm"] > 3.5 and rows["gaussian"]["smoothed"] == 1
    assert rows["noise-free"]["dice"]["WT"] > rows["as made"]["dice"]["WT"] - 0.05
    assert r["command"].startswith("python -m sparsesight.bench.smoothed_scans")


def ndi_erode(mask):
    from scipy import ndimage as ndi

    return ndi.binary_erosion(mask, iterations=4)


@pytest.mark.slow
def test_the_upsampled_slices_bench_runs_in_a_small_form(tmp_path):
    """bench/upsampled_slices end to end on one held-out phantom and the shipped SUM: the 1 mm scan and the scan made
    with 4 mm slices then upsampled with cubic splines. The reading says about 4 mm where the header says 1, and the
    upsampled scan is still segmented: its background of spline ringing is cleared (it lost SUM the whole tumour)."""
    import json

    from sparsesight.bench import upsampled_slices

    out, plot = tmp_path / "record.json", tmp_path / "plot.png"
    assert upsampled_slices.main(["--models", "sum", "--cases", "1", "--levels", "4", "--orders", "3", "--off-grid",
                                  "0", "--threads", "2", "--out", str(out), "--plot", str(plot)]) == 0
    r = json.loads(out.read_text())
    clean, up = r["models"]["sum"]["rows"]
    assert (clean["order"], up["level"], up["order"]) == (None, 4.0, 3) and plot.stat().st_size > 10_000
    assert clean["apparent_mm"] == pytest.approx(1.0, abs=0.05) and 3.0 < up["apparent_mm"] < 6.0
    assert r["readings"][1]["apparent_axis"] == 2
    assert up["dice"]["WT"] > clean["dice"]["WT"] - 0.1
    assert r["command"].startswith("python -m sparsesight.bench.upsampled_slices")


def test_the_demo_line_names_the_pattern_and_the_bench_its_reading_was_compared_with():
    from sparsesight.demo import apparent_part

    kw = dict(upsampled_table=UPSAMPLED, smoothed_table=SMOOTHED)
    smooth = apparent_part(assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[3.5, 3.3, 3.1], **kw))
    assert "(smoothed in 3D)" in smooth and "held up to 4 on smoothed phantoms (bench/smoothed_scans)" in smooth
    up = apparent_part(assess([1.0, 1.0, 1.0], "sum", "sha256:abc", TABLE, apparent=[1.0, 1.0, 2.9], **kw))
    assert "smoothed" not in up and "held up to 3 on upsampled phantoms (bench/upsampled_slices)" in up
