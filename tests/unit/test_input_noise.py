"""The input-noise estimate a bundle reports, and the tolerance it is flagged against (input_noise.py,
bench/noise_tolerance.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sparsesight.bench.noise_tolerance import tolerance
from sparsesight.input_noise import assess, sigma_hat, sigma_z


def _scan(noise: float, seed: int = 0, dims: int = 3) -> np.ndarray:
    """Two channels of smooth anatomy (blurred white noise) on a 0 background,
    plus white noise of sigma `noise`."""
    rng = np.random.default_rng(seed)
    n = 48 if dims == 3 else 160  # some 9,000 (3D) and 5,000 (2D) blocks inside the brain
    shape = (n,) * dims
    brain = np.zeros(shape, bool)
    brain[tuple(slice(6, n - 6) for _ in range(dims))] = True
    chans = []
    for _ in range(2):
        smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 4) * 2000 + 300
        chans.append(np.where(brain, smooth + noise * rng.standard_normal(shape), 0))
    return np.stack(chans).astype(np.float32)


@pytest.mark.parametrize("dims", [2, 3])
def test_sigma_hat_recovers_added_white_noise(dims):
    assert np.all(sigma_z(_scan(0.0, dims=dims)) < 0.03)  # smooth anatomy hardly reaches the finest all-high band
    clean = sigma_hat(_scan(0.0, dims=dims))
    for sigma in (10.0, 20.0):  # the same anatomy: what it leaves in the band adds in quadrature
        noisy = sigma_hat(_scan(sigma, dims=dims))
        assert np.sqrt(noisy**2 - clean**2) == pytest.approx([sigma, sigma], rel=0.06)
        assert noisy == pytest.approx([sigma, sigma], rel=0.2)


def test_sigma_z_is_in_the_normalised_images_units():
    x = _scan(20.0)
    brain = np.any(x != 0, axis=0)
    expected = sigma_hat(x) / np.array([c[brain].std() for c in x])
    assert sigma_z(x) == pytest.approx(expected)
    assert sigma_z(3.0 * x) == pytest.approx(sigma_z(x), rel=1e-5)  # the scanner's scale does not matter


def test_noise_tolerance_is_the_noisiest_level_that_held():
    def row(level, sz, wt, tc, et):
        return {"level": level, "sigma_z": sz, "dice": {"WT": wt, "TC": tc, "ET": et}}

    rows = [row(0, 0.1, 0.95, 0.90, 0.85), row(0.01, 0.2, 0.94, 0.88, 0.84), row(0.02, 0.3, 0.93, 0.86, 0.79),
            row(0.05, 0.5, 0.94, 0.89, 0.84)]
    # ET falls by 0.06 at 0.02: 0.01 is the last that held, though 0.05 happens to score well again
    assert tolerance(rows) == {"sigma_z": 0.2, "level": 0.01}
    assert tolerance(rows[:1] + [row(0.01, 0.2, 0.80, 0.9, 0.85)]) == {"sigma_z": 0.1, "level": 0}


def test_a_scan_noisier_than_the_measured_tolerance_is_flagged():
    table = {"sum": {"version": "sha256:abc", "sigma_z": 0.2}}
    quiet, noisy = _scan(2.0), _scan(40.0)
    ok = assess(quiet, "sum", "sha256:abc", ["FLAIR", "T1"], table)
    assert ok["flags"] == [] and ok["tolerance"] == 0.2 and set(ok["sigma_z"]) == {"FLAIR", "T1"}
    bad = assess(noisy, "sum", "sha256:abc", ["FLAIR", "T1"], table)
    assert bad["sigma_z_max"] > 0.2 and len(bad["flags"]) == 1 and "above 0.200" in bad["flags"][0]
    other = assess(noisy, "sum", "sha256:retrained", ["FLAIR", "T1"], table)
    assert other["tolerance"] is None and other["flags"] == [] and "not measured" in other["note"]


def test_a_scan_without_brain_blocks_has_no_estimate_and_no_flag():
    empty = np.zeros((2, 8, 8, 8), np.float32)
    out = assess(empty, "sum", "sha256:abc", ["FLAIR", "T1"], {"sum": {"version": "sha256:abc", "sigma_z": 0.2}})
    assert out["sigma_z"] == {"FLAIR": None, "T1": None} and out["sigma_z_max"] is None and out["flags"] == []


def test_a_resampled_scan_is_estimated_on_its_own_grid(tmp_path):
    """Interpolation correlates white noise and the finest band loses it: estimated after resampling to the
    model's grid, a noisy thick-slice scan looks quiet. The served checks take sigma^ on the scan's own grid
    (load_on_model_grid's from_sigma) times the share of white noise the resampling keeps (noise_gain)."""
    import nibabel as nib

    from sparsesight.runners.segmentation import input_checks, load_on_model_grid

    rng = np.random.default_rng(1)
    shape = (40, 44, 16)
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 2:-2] = True
    sigma = 40.0
    chans = [np.where(brain, ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 3000 + 500
                      + sigma * rng.standard_normal(shape), 0) for _ in range(4)]
    image = np.stack(chans, -1).astype(np.float32)
    path = tmp_path / "thick.nii.gz"

    class OneMillimetre:
        spacing_mm = (1.0, 1.0, 1.0)
        n = 4

    # LAS with thick slices: unaligned with a 1 mm RAS grid; the trilinear weights keep about (2/3)^(3/2)
    nib.save(nib.Nifti1Image(image, np.diag([-1.3, 1.1, 2.7, 1.0])), str(path))
    resampled, _, info = load_on_model_grid(OneMillimetre(), path)
    assert info["from_sigma"] == pytest.approx([sigma] * 4, rel=0.1)
    true_z = sigma / np.array([c[brain].std() for c in chans])
    assert info["from_sigma_z"] == pytest.approx(true_z, rel=0.1)
    assert 0.45 < info["noise_gain"] < 0.7
    version = "sha256:abc"
    table = {"sum": {"version": version, "sigma_z": 0.3}}
    served = assess(resampled, "sum", version, list("ABCD"), table, resampled=info)
    brain_std = np.array([c[np.any(resampled != 0, 0)].std() for c in resampled])
    assert list(served["sigma_z"].values()) == pytest.approx(np.array(info["from_sigma"]) * info["noise_gain"] / brain_std,
                                                             rel=1e-3)
    assert served["own_grid_sigma_z"]["A"] == pytest.approx(true_z[0], rel=0.1) and "own grid" in served["method"]
    # the finest band of the resampled image has lost most of it: estimated there, the noise looks 3x weaker
    assert np.all(sigma_z(resampled) < np.array(list(served["sigma_z"].values())) / 2)
    loud = {"sum": {"version": version, "sigma_z": float(served["sigma_z_max"]) * 0.9}}
    assert len(assess(resampled, "sum", version, list("ABCD"), loud, resampled=info)["flags"]) == 1
    assert assess(resampled, "sum", version, list("ABCD"), loud)["flags"] == []  # the old estimate passed it
    checks = input_checks(resampled, np.eye(4), "sum", version, resampled=info)
    assert checks["input_grid"]["voxel_mm"] == [1.3, 1.1, 2.7]  # the scan's, before it was resampled
    assert checks["input_noise"]["noise_gain"] == info["noise_gain"]
    # the plain label answer's checks, through the served path
    import torch

    from sparsesight.runners.segmentation import predict_file

    class Background(torch.nn.Module):
        spacing_mm, n, config = (1.0, 1.0, 1.0), 4, {"roi_size": [32, 32, 32]}

        def forward(self, x):
            return torch.cat([torch.ones_like(x[:, :1]), torch.zeros_like(x[:, :3])], 1)

    label, _, answer = predict_file(Background(), path, checks_for=("sum", version))
    assert label.shape == shape and answer["input_noise"]["noise_gain"] == info["noise_gain"]
    assert list(answer["input_noise"]["sigma_z"].values()) == list(served["sigma_z"].values())
    # a mere flip of axes on the model's voxel size moves every voxel centre onto a voxel centre: nothing lost
    nib.save(nib.Nifti1Image(image, np.diag([-1.0, -1.0, 1.0, 1.0])), str(path))
    flipped, _, info = load_on_model_grid(OneMillimetre(), path)
    assert info["noise_gain"] == pytest.approx(1.0, abs=1e-3)
    # so its noise is white and the tolerance of scans on the model's grid applies, not that of resampled scans
    from sparsesight.input_noise import tolerances

    table = assess(flipped, "sum", tolerances()["sum"]["version"], list("ABCD"), resampled=info)
    assert table["tolerance"] == tolerances()["sum"]["sigma_z"]
    assert table["sigma_z_max"] == pytest.approx(float(np.nanmax(sigma_z(flipped))), rel=1e-3)


def test_the_tolerance_for_resampled_scans_and_how_its_flag_fares():
    """bench/noise_grid: the tolerance is noise_tolerance's rule over the factors' mean served sigma_z and Dice,
    and each scan's flag is judged against its own case at factor 1, with the case left out of the tolerance."""
    from sparsesight.bench.noise_grid import fell, flag_record, level_rows

    def row(case, factor, served, wt, own=0.5, resampled=0.1):
        return {"case": case, "factor": factor, "sigma_z_own_grid": own, "sigma_z_resampled": resampled,
                "models": {"m": {"sigma_z": served, "dice": {"WT": wt, "TC": 0.8, "ET": 0.7}}}}

    rows = [row("a", 1, 0.10, 0.95), row("a", 3, 0.30, 0.94), row("a", 6, 0.50, 0.80),
            row("b", 1, 0.12, 0.90), row("b", 3, 0.32, 0.84), row("b", 6, 0.52, 0.70)]
    levels = level_rows(rows, "m")
    assert [r["level"] for r in levels] == [1, 3, 6] and levels[1]["sigma_z"] == pytest.approx(0.31)
    assert levels[1]["dice"]["WT"] == pytest.approx(0.89)
    assert tolerance(levels) == {"sigma_z": 0.31, "level": 3}  # the means fell by 0.035 at 3, by 0.175 at 6
    assert level_rows(rows, "m", leave_out="b")[1]["sigma_z"] == pytest.approx(0.30)
    assert fell(rows, "m") == {("a", 3): False, ("a", 6): True, ("b", 3): True, ("b", 6): True}
    rec = flag_record(rows, "m")
    assert rec["scans"] == 4 and rec["fell"] == 3
    # in sample: above 0.31 are b at 3 (fell), a and b at 6 (fell)
    assert rec["served"] == {"flagged": 3, "fell_and_flagged": 3, "held_and_flagged": 0}
    # left out: a is judged by b's tolerance (b held at 1 only: 0.12), b by a's (0.30): all four flagged
    assert rec["served_left_out"] == {"flagged": 4, "fell_and_flagged": 3, "held_and_flagged": 1}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlcsc", "sum"])
def test_a_bundle_of_a_resampled_scan_reports_its_noise_from_its_own_grid(name, tmp_path):
    """Both segmentation runners pass what the resampling did to the label's input checks: the manifest's
    `resampled` holds the own-grid estimate and the gain, the label's `input_noise` the served figure from them."""
    import importlib

    import nibabel as nib
    import torch

    from sparsesight import bundle, models

    rng = np.random.default_rng(2)
    shape = (36, 40, 14)
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 2:-2] = True
    image = np.stack([np.where(brain, ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 3000 + 500
                               + 40 * rng.standard_normal(shape), 0) for _ in range(4)], -1).astype(np.float32)
    path = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(image, np.diag([-1.3, 1.1, 2.7, 1.0])), str(path))
    torch.manual_seed(0)
    model = models.build(name)
    model.spacing_mm = (1.0, 1.0, 1.0)
    runner = importlib.import_module(f"sparsesight.runners.{name}")
    out = runner.run_bundle(model, name, "sha256:test", str(path), "thick", tmp_path / "b.zip", outputs=["label"])
    manifest = bundle.validate(out)
    info = manifest["resampled"]
    assert info["from_sigma"] == pytest.approx([40.0] * 4, rel=0.1) and 0.45 < info["noise_gain"] < 0.7
    noise = next(o["input_noise"] for o in manifest["outputs"] if o["name"] == "label")
    assert noise["noise_gain"] == info["noise_gain"] and noise["own_grid_sigma_z"]["FLAIR"] == info["from_sigma_z"][0]
    assert noise["sigma_z"]["FLAIR"] < noise["own_grid_sigma_z"]["FLAIR"] and "resampled scans" in noise["note"]


def test_the_demo_line_says_where_a_resampled_scans_noise_was_measured():
    """The demo prints the label's input_noise as assess wrote it: where the noise was estimated, and which bench
    measured the tolerance it was held to (assess's tolerance_from)."""
    from sparsesight.demo import noise_line

    image = _scan(30.0)
    version = "sha256:abc"
    table = {"sum": {"version": version, "sigma_z": 0.01}}

    def line(gain=None):
        resampled = None if gain is None else {"from_sigma": list(sigma_hat(image)), "from_sigma_z": [0.1, 0.1],
                                               "noise_gain": gain}
        entry = assess(image, "sum", version, ["FLAIR", "T1"], table, resampled=resampled)
        return noise_line({"outputs": [{"name": "label", "input_noise": entry}]})

    assert line(0.54).startswith("sigma_z ") and "(on the scan's own grid x 0.540" in line(0.54)
    assert "bench/noise_grid" in line(0.54) and "FLAGGED: input noise sigma_z" in line(0.54)
    assert "bench/noise_tolerance" in line() and "own grid" not in line()
    assert "bench/noise_tolerance" in line(1.0)  # a flip of axes keeps the noise white


@pytest.mark.slow
def test_the_noise_grid_bench_runs_in_a_small_form(tmp_path):
    """bench/noise_grid end to end on one off-grid phantom, the shipped SUM, at the phantom's noise and twice it:
    the record, its tolerance for resampled scans and the plot."""
    import json

    from sparsesight.bench import noise_grid

    out, plot = tmp_path / "record.json", tmp_path / "plot.png"
    assert noise_grid.main(["--models", "sum", "--cases", "1", "--factors", "1", "2", "--threads", "2",
                            "--out", str(out), "--plot", str(plot)]) == 0
    r = json.loads(out.read_text())
    assert [c["factor"] for c in r["cases"]] == [1, 2] and plot.stat().st_size > 10_000
    low, high = r["cases"]
    assert high["sigma_z_own_grid"] > 1.5 * low["sigma_z_own_grid"]  # twice the noise, estimated on its own grid
    assert high["sigma_z_resampled"] < 0.5 * high["sigma_z_own_grid"] and 0.4 < high["noise_gain"] < 0.7
    m = r["models"]["sum"]
    assert m["level"] in (1, 2) and m["sigma_z"] == pytest.approx(
        next(x["sigma_z"] for x in m["rows"] if x["level"] == m["level"]), abs=1e-4)
    assert m["flags"]["scans"] == 1 and r["command"].startswith("python -m sparsesight.bench.noise_grid")
    assert "served_left_out" not in m["flags"]  # one case: none left to measure a tolerance on without it


def _study(tmp_path, t2_sigma: float, flair_affine=None, contrast: float = 3000.0):
    """A PACS-like study assembled as the PACS datastore does (data.dicom.study.assemble): FLAIR, T1, T1ce on a
    1 mm grid with white noise of sigma 20, T2 acquired at 2 mm in plane with white noise of `t2_sigma`, resampled
    onto FLAIR's grid (`contrast`: of the smooth anatomy). Returns the 4-channel file, the series_grids the
    datastore records and the brain mask."""
    import nibabel as nib

    from sparsesight.data.dicom import study

    rng = np.random.default_rng(4)
    shape = (48, 48, 20)
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 2:-2] = True
    affine = np.eye(4) if flair_affine is None else flair_affine
    anatomy = ndimage.gaussian_filter(rng.standard_normal(shape), 3) * contrast + 500
    vols = {c: (np.where(brain, anatomy + 20 * rng.standard_normal(shape), 0).astype(np.float32), affine)
            for c in ("FLAIR", "T1", "T1ce")}
    coarse = affine.copy()
    coarse[:3, :2] *= 2
    half = brain[::2, ::2]
    vols["T2"] = (np.where(half, anatomy[::2, ::2] + t2_sigma * rng.standard_normal(half.shape), 0)
                  .astype(np.float32), coarse)
    image, out_affine, grids = study.assemble("st", vols, dict.fromkeys(vols, "for"))
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(image, out_affine), str(path))
    return path, grids, brain


class _OneMillimetre:
    spacing_mm = (1.0, 1.0, 1.0)
    n = 4


def test_a_series_resampled_when_its_study_was_assembled_reports_the_noise_of_its_own_grid(tmp_path):
    """A PACS study's T2 on a coarser grid is resampled onto FLAIR's before the file is written: estimated there,
    its noise looks far weaker. The datastore keeps the series' own grid and sigma^ (series_grids), and the checks
    take them, with the share of white noise kept through the resampling (0.75 for a 2x in-plane upsampling:
    half the voxels land on a source voxel, half between two), and its slices for the slice-thickness check."""
    from sparsesight.runners.segmentation import input_checks, load_on_model_grid

    path, grids, brain = _study(tmp_path, t2_sigma=200.0)
    assert set(grids) == {"T2"} and grids["T2"]["sigma"] == pytest.approx(200.0, rel=0.1)
    assert grids["T2"]["voxel_mm"] == [2.0, 2.0, 1.0] and grids["T2"]["shape"] == [24, 24, 20]
    image, _, none = load_on_model_grid(_OneMillimetre(), path)  # the file is on the model's grid: nothing to say
    assert none is None
    image, affine, info = load_on_model_grid(_OneMillimetre(), path, series_grids=grids)
    assert "from_voxel_mm" not in info and info["noise_gain"] == 1.0  # the file itself was not resampled
    assert info["series"]["T2"]["from_voxel_mm"] == [2.0, 2.0, 1.0]
    assert info["series"]["T2"]["noise_gain"] == pytest.approx(0.75, abs=0.03)
    assert info["from_sigma"][3] == pytest.approx(grids["T2"]["sigma"], rel=1e-3)
    assert info["from_sigma"][0] == pytest.approx(20.0, rel=0.1)  # FLAIR: its own grid is the file's
    version = "sha256:abc"
    table = {"sum": {"version": version, "sigma_z": 1.0}}
    before = assess(image, "sum", version, list("ABCD"), table)  # the estimate on the file's grid
    after = assess(image, "sum", version, list("ABCD"), table, resampled=info)
    t2_std = image[3][np.any(image != 0, 0)].std()
    assert after["sigma_z"]["D"] == pytest.approx(grids["T2"]["sigma"] * info["series"]["T2"]["noise_gain"] / t2_std,
                                                  rel=1e-3)
    assert before["sigma_z"]["D"] < after["sigma_z"]["D"] / 2  # interpolation hid most of it from the finest band
    assert after["sigma_z"]["A"] == pytest.approx(before["sigma_z"]["A"], rel=0.02)
    assert after["noise_gain_by_modality"] == {"A": 1.0, "B": 1.0, "C": 1.0, "D": info["series"]["T2"]["noise_gain"]}
    between = {"sum": {"version": version, "sigma_z": (before["sigma_z"]["D"] + after["sigma_z"]["D"]) / 2}}
    assert assess(image, "sum", version, list("ABCD"), between)["flags"] == []
    assert len(assess(image, "sum", version, list("ABCD"), between, resampled=info)["flags"]) == 1
    checks = input_checks(image, affine, "sum", version, resampled=info)
    grid = checks["input_grid"]
    assert grid["voxel_mm"] == [1.0, 1.0, 1.0] and grid["slice_mm"] == 2.0
    assert grid["series_voxel_mm"] == {"T2": [2.0, 2.0, 1.0]}


def test_series_grids_through_a_second_resampling_and_channels_of_both_kinds(tmp_path):
    """A study whose reference grid is not the model's goes through two resamplings: the gain of both
    (chained_noise_gain) is less than the first's alone. Its channels then hold noise of two kinds: FLAIR's is
    white after a flip of axes, T2's correlated, and each is held to the tolerance measured for its kind."""
    from sparsesight.runners.segmentation import load_on_model_grid

    flipped = np.diag([-1.0, -1.0, 1.0, 1.0])
    flipped[:2, 3] = 47.0
    path, grids, _ = _study(tmp_path, t2_sigma=200.0, flair_affine=flipped)
    image, _, info = load_on_model_grid(_OneMillimetre(), path, series_grids=grids)
    assert info["noise_gain"] == pytest.approx(1.0, abs=0.01)  # a flip: voxel centres onto voxel centres
    assert info["series"]["T2"]["noise_gain"] == pytest.approx(0.75, abs=0.03)
    # FLAIR on 1.3 x 1.1 x 1.2 mm: T2 goes 2x up onto it, then onto 1 mm. Smoothed noise loses less in the second
    # step than white noise would: the product of the two white-noise gains would understate it
    oblique = np.diag([1.3, 1.1, 1.2, 1.0])
    path, grids, _ = _study(tmp_path, t2_sigma=200.0, flair_affine=oblique, contrast=0.0)
    image, _, info = load_on_model_grid(_OneMillimetre(), path, series_grids=grids)
    gain = info["series"]["T2"]["noise_gain"]
    assert 0.45 < info["noise_gain"] < 0.7 and 0.75 * info["noise_gain"] + 0.05 < gain < 0.75
    # and it is what the model sees: the T2 channel on the model's grid (flat anatomy, away from the brain's edge)
    inner = ndimage.binary_erosion(np.all(image != 0, 0), iterations=3)
    assert image[3][inner].std() == pytest.approx(grids["T2"]["sigma"] * gain, rel=0.05)

    path, grids, _ = _study(tmp_path, t2_sigma=200.0, flair_affine=flipped)
    image, _, info = load_on_model_grid(_OneMillimetre(), path, series_grids=grids)
    version = "sha256:abc"
    white = {"sum": {"version": version, "sigma_z": 0.01}}
    correlated = {"sum": {"version": version, "sigma_z": 10.0}}
    from sparsesight import input_noise

    input_noise.tolerances.cache_clear()
    real = input_noise.tolerances
    try:  # the package's two tables, swapped for two that tell the kinds apart
        input_noise.tolerances = lambda resampled=False: correlated if resampled else white  # type: ignore
        out = input_noise.assess(image, "sum", version, list("ABCD"), resampled=info)
    finally:
        input_noise.tolerances = real
    assert out["tolerance_by_modality"] == {"A": 0.01, "B": 0.01, "C": 0.01, "D": 10.0}
    assert len(out["flags"]) == 3 and all("(D)" not in f and "noise_tolerance" in f for f in out["flags"])


def test_malformed_series_grids_are_left_out():
    """series_grids come from the datastore's image info; one that is not well formed (or would make the noise
    simulation allocate a huge grid) is ignored, and its channel's noise is read on the file's grid."""
    from sparsesight.runners.segmentation import MAX_SERIES_VOXELS, checked_series_grids

    good = {"shape": [4, 4, 4], "affine": np.eye(4).tolist(), "voxel_mm": [1.0, 1.0, 1.0], "sigma": 2.0,
            "sigma_z": 0.1}
    huge = {**good, "shape": [MAX_SERIES_VOXELS, 2, 1]}
    flat = {**good, "affine": np.diag([1.0, 1.0, 0.0, 1.0]).tolist()}
    assert set(checked_series_grids({"T2": good, "T1": huge, "T1ce": flat, "PD": good, "FLAIR": {"shape": 3}},
                                    4)) == {"T2"}
    assert checked_series_grids("not a dict", 4) == {} and checked_series_grids({"T2": good}, 2) == {}


@pytest.mark.slow
def test_the_series_noise_bench_runs_in_a_small_form(tmp_path):
    """bench/series_noise end to end on one 2 mm phantom at one noise level: the served T2 noise is the noise the
    network sees, the estimate on the assembled file is not, and the record holds the tables' figures."""
    import json

    from sparsesight.bench import series_noise

    out, png = tmp_path / "series_noise.json", tmp_path / "series_noise.png"
    assert series_noise.main(["--cases", "1", "--factors", "3", "--downsample", "2", "--threads", "2",
                              "--out", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    assert len(r["rows"]) == len(series_noise.SERIES_GRIDS) and png.stat().st_size > 10_000
    for row in r["rows"]:  # (the own-grid sigma^ of 4 mm voxels carries some anatomy: 5-12 % high here)
        assert row["served_over_truth"] == pytest.approx(1.0, abs=0.15), row
        assert row["before_over_truth"] < 0.6 and row["truth_over_put_in_x_gain"] == pytest.approx(1.0, abs=0.05)
    assert r["command"].startswith("python -m sparsesight.bench.series_noise --cases 1")
    assert series_noise.summary_lines(r)[1].startswith("served (its own grid x chained gain): ")


def test_the_series_noise_flag_record_on_rows_worked_by_hand():
    """bench/series_noise's judgement of the T2 noise flag: a scan fell when a region lost more than 0.05 from the
    same case and T2 grid at the lowest factor."""
    from sparsesight.bench.series_noise import flag_record, model_table

    def row(case, grid, factor, wt, flagged):
        return {"case": case, "grid": grid, "factor": factor,
                "models": {"sum": {"dice": {"WT": wt, "TC": 0.8, "ET": 0.8}, "noise_flagged": flagged}}}

    rows = [row("a", "g", 1, 0.9, False), row("a", "g", 4, 0.88, True), row("a", "g", 10, 0.7, True),
            row("a", "h", 1, 0.6, False), row("a", "h", 4, 0.5, False), row("a", "h", 10, 0.61, False)]
    rec = flag_record(rows, "sum")
    assert rec == {"scans": 4, "fell": 2, "flagged": 2, "fell_and_flagged": 1, "held_and_flagged": 1,
                   "largest_drop": 0.2}
    assert model_table({"models": {"sum": rec}})[-1] == "| sum | 4 | 2 | 2 | 1 | 1 | 0.200 |"
