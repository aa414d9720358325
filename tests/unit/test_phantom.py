"""BraTS-like phantom: grid, determinism, labels, contrasts, noise model, dataset layout, CLI."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from sparsesight import MODALITIES
from sparsesight.data import phantom
from sparsesight.data.phantom import Case, case_seed, make_case, rician_noise, write_dataset

FLAIR, T1, T1CE, T2 = (MODALITIES.index(m) for m in ("FLAIR", "T1", "T1ce", "T2"))
K = 4  # tests run at 4 mm: 60 x 60 x 39 voxels
SEED = 3


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case(SEED, K)


@pytest.fixture(scope="module")
def case_k2() -> Case:
    return make_case(SEED, 2)


def _brain(c: Case) -> np.ndarray:
    return (c.tissues["csf"] + c.tissues["gm"] + c.tissues["wm"]) > 0.5


# ------------------------------------------------------------------------------------------------ grid
def test_shapes_dtypes_affine(case):
    assert case.image.shape == (60, 60, 39, 4) and case.image.dtype == np.float32
    assert case.label.shape == (60, 60, 39) and case.label.dtype == np.uint8
    assert case.affine.shape == (4, 4) and case.affine.dtype == np.float64
    np.testing.assert_allclose(case.affine[:3, :3], np.diag([K, K, K]))  # RAS, isotropic K mm
    np.testing.assert_array_equal(case.affine[3], [0, 0, 0, 1])
    assert np.all(np.isfinite(case.image)) and np.all(case.image == np.round(case.image))
    json.dumps(case.params)  # JSON-serialisable
    assert case.params["seed"] == SEED and case.params["downsample"] == K
    les = case.params["lesions"][0]
    assert 15 <= les["radius_wt_mm"] <= 35 and les["radius_core_mm"] < les["radius_wt_mm"]


@pytest.mark.parametrize("k", [2, 3])
def test_grid_rule_same_field_of_view(k, case):
    aff = phantom.grid_affine(k)
    shape = tuple(math.ceil(s / k) for s in phantom.BRATS_SHAPE)
    c = make_case(SEED, k) if k == 3 else None
    if c is not None:
        assert c.image.shape == shape + (4,)
        np.testing.assert_array_equal(c.affine, aff)
    # the first voxel's corner (not centre) is the same world point at every voxel size
    corner_k = aff[:3, 3] - k / 2.0
    corner_1 = phantom.grid_affine(1)[:3, 3] - 0.5
    np.testing.assert_allclose(corner_k, corner_1)
    assert shape[0] * k >= 240 and shape[2] * k >= 155


def test_same_geometry_at_every_resolution(case, case_k2):
    assert case.params["lesions"] == case_k2.params["lesions"]
    assert case.params["anatomy"] == case_k2.params["anatomy"]


# ------------------------------------------------------------------------------------------- determinism
def test_same_seed_identical_different_seed_different(case):
    again = make_case(SEED, K)
    assert again.image.tobytes() == case.image.tobytes()
    assert again.label.tobytes() == case.label.tobytes()
    assert again.params == case.params
    other = make_case(SEED + 1, K)
    assert other.image.tobytes() != case.image.tobytes()
    assert other.label.tobytes() != case.label.tobytes()


def test_case_seeds_are_distinct():
    seeds = [case_seed(0, i) for i in range(50)]
    assert len(set(seeds)) == 50 and seeds[:3] == [case_seed(0, i) for i in range(3)]
    assert case_seed(1, 0) != case_seed(0, 0)


# ------------------------------------------------------------------------------------------------ labels
def test_labels_exactly_0123(case):
    assert set(np.unique(case.label).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("seed", [1, 7])  # both have a small (patchy) enhancing component
def test_all_labels_present_at_2mm(seed):
    c = make_case(seed, 2)
    assert any(les["small_enhancing"] for les in c.params["lesions"])
    assert set(np.unique(c.label).tolist()) == {0, 1, 2, 3}


def test_label_nesting(case_k2):
    lab = case_k2.label
    wt, tc, et = lab > 0, (lab == 2) | (lab == 3), lab == 3
    assert wt.sum() > tc.sum() > et.sum() > 0  # WT contains TC contains ET; oedema larger than the core
    # oedema surrounds the core: most voxels just outside the core are oedema
    ring = ndi.binary_dilation(tc) & ~tc
    assert (lab[ring] == 1).mean() > 0.6
    # the enhancing rim touches the necrotic / non-enhancing core
    assert (ndi.binary_dilation(et) & (lab == 2)).any()
    # each lesion centre lies in its core, every core component has oedema around it
    inv = np.linalg.inv(case_k2.affine)
    for les in case_k2.params["lesions"]:
        v = np.round(inv[:3, :3] @ np.asarray(les["centre_mm"]) + inv[:3, 3]).astype(int)
        assert lab[tuple(v)] in (2, 3)
    comp, n = ndi.label(tc)
    for i in range(1, n + 1):
        r = ndi.binary_dilation(comp == i) & ~tc
        assert (lab[r] == 1).any()


def test_tumour_inside_brain_and_background_zero(case):
    brain = _brain(case)
    assert not (case.label[~brain] > 0).any()
    assert np.all(case.image[~brain] == 0)  # skull-stripped: exactly 0 outside the brain
    assert (case.image[brain] > 0).mean() > 0.99
    for sl in (case.image[0], case.image[-1], case.image[:, :, 0], case.image[:, :, -1]):
        assert np.all(sl == 0)


# --------------------------------------------------------------------------------------------- contrasts
def _med(c, m, sel):
    assert sel.sum() >= 5, "too few voxels to measure"
    return float(np.median(c.image[..., m][sel]))


def test_contrasts_normal_tissue(case):
    far = ~ndi.binary_dilation(case.label > 0, iterations=2)
    wm = (case.tissues["wm"] > 0.85) & far
    gm = (case.tissues["gm"] > 0.7) & far
    csf = (case.tissues["csf"] > 0.7) & far
    assert _med(case, T1, wm) > _med(case, T1, gm) > _med(case, T1, csf)  # T1: WM > GM > CSF
    assert _med(case, T2, csf) > _med(case, T2, gm) > _med(case, T2, wm)  # T2: CSF > GM > WM
    assert _med(case, FLAIR, gm) > _med(case, FLAIR, wm) > _med(case, FLAIR, csf)  # FLAIR: CSF suppressed
    assert _med(case, T1CE, wm) > _med(case, T1CE, csf)


def test_contrasts_tumour(case_k2):
    c, lab = case_k2, case_k2.label
    wm = (c.tissues["wm"] > 0.85) & ~ndi.binary_dilation(lab > 0, iterations=2)
    oed, core, enh = lab == 1, lab == 2, lab == 3
    # oedema: bright on FLAIR and T2, slightly dark on T1, no enhancement
    assert _med(c, FLAIR, oed) > 1.3 * _med(c, FLAIR, wm)
    assert _med(c, T2, oed) > 1.3 * _med(c, T2, wm)
    assert _med(c, T1, oed) < _med(c, T1, wm)
    assert _med(c, T1CE, oed) < _med(c, T1CE, wm)
    # enhancing: bright on T1ce (brighter than core and WM), iso/dark on T1
    assert _med(c, T1CE, enh) > 1.3 * _med(c, T1CE, core)
    assert _med(c, T1CE, enh) > 1.3 * _med(c, T1CE, wm)
    assert _med(c, T1, enh) < 1.05 * _med(c, T1, wm)
    # necrosis / non-enhancing core: dark on T1 and T1ce, bright on T2
    assert _med(c, T1, core) < 0.8 * _med(c, T1, wm)
    assert _med(c, T1CE, core) < _med(c, T1CE, wm)
    assert _med(c, T2, core) > 1.5 * _med(c, T2, wm)


def test_contrast_table_keeps_orderings():
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = phantom.contrast_table(rng)
        assert t["wm"][T1] > t["gm"][T1] > t["csf"][T1]
        assert t["csf"][T2] > t["gm"][T2] > t["wm"][T2]
        assert t["gm"][FLAIR] > t["wm"][FLAIR] > t["csf"][FLAIR]
        assert t["enhancing"][T1CE] > t["wm"][T1CE] > t["necrosis"][T1CE]


# ------------------------------------------------------------------------------------------------- noise
def test_rician_noise_of_zero_signal_is_rayleigh():
    rng = np.random.default_rng(1)
    sigma = 7.0
    m = rician_noise(np.zeros(400_000, np.float32), sigma, rng)
    assert m.mean() / m.std() == pytest.approx(math.sqrt(math.pi / 2) / math.sqrt(2 - math.pi / 2), rel=0.02)
    assert m.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    assert np.all(m >= 0)


def test_rician_noise_high_snr_is_gaussian():
    rng = np.random.default_rng(2)
    s, sigma = 500.0, 10.0
    m = rician_noise(np.full(400_000, s, np.float32), sigma, rng)
    assert m.mean() == pytest.approx(math.sqrt(s * s + sigma * sigma), rel=2e-3)
    assert m.std() == pytest.approx(sigma, rel=0.02)


def test_case_noise_level_matches_params(case):
    clean = make_case(SEED, K, noise=False)
    assert np.array_equal(clean.label, case.label)
    for m, name in enumerate(MODALITIES):
        sigma = case.params["noise_sigma"][name]
        sel = clean.image[..., m] > 15 * sigma  # high SNR: noisy - clean ~ N(0, sigma^2)
        d = case.image[..., m][sel] - clean.image[..., m][sel]
        assert sel.sum() > 1000
        assert d.std() == pytest.approx(sigma, rel=0.12)
        assert abs(d.mean()) < 0.2 * sigma


def test_bias_field_is_smooth_and_near_one():
    aff = phantom.grid_affine(K)
    axes = [aff[i, 3] + K * np.arange(n) for i, n in enumerate((60, 60, 39))]
    brain = np.ones((60, 60, 39), np.float32)
    b = phantom.bias_field(np.random.default_rng(0), axes, brain, amplitude=0.1)
    assert b.shape == (60, 60, 39) and np.all(b > 0)
    assert abs(float(np.log(b).mean())) < 1e-3
    assert 0.05 < float(np.log(b).std()) < 0.2
    assert np.abs(np.diff(np.log(b), axis=0)).max() < 0.05  # smooth: < 5 % change per 4 mm


# --------------------------------------------------------------------------------------------- dataset
def test_write_dataset_in_processes_writes_the_same_cases(tmp_path):
    one = write_dataset(tmp_path / "one", n_cases=3, seed=6, downsample=K, n_test=1, progress=False)
    two = write_dataset(tmp_path / "two", n_cases=3, seed=6, downsample=K, n_test=1, progress=False, workers=2)
    assert json.loads(one.read_text()) == json.loads(two.read_text())
    for sub in ("imagesTr/case_000", "imagesTr/case_001", "imagesTs/case_002", "labelsTs/case_002"):
        a, b = (nib.load(str(p.parent / f"{sub}.nii.gz")) for p in (one, two))
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_allclose(a.affine, b.affine)


def test_write_dataset_layout(tmp_path):
    path = write_dataset(tmp_path / "ds", n_cases=3, seed=5, downsample=K, n_test=1, progress=False)
    assert path == tmp_path / "ds" / "dataset.json"
    meta = json.loads(path.read_text())
    for key in ("name", "description", "tensorImageSize", "modality", "labels", "numTraining", "numTest",
                "training", "test", "sparsesight"):
        assert key in meta
    assert meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
    assert meta["labels"] == {"0": "background", "1": "oedema", "2": "non-enhancing core", "3": "enhancing"}
    assert meta["numTraining"] == 2 and meta["numTest"] == 1
    assert [e["image"] for e in meta["training"]] == ["./imagesTr/case_000.nii.gz", "./imagesTr/case_001.nii.gz"]
    assert meta["test"] == [{"image": "./imagesTs/case_002.nii.gz", "label": "./labelsTs/case_002.nii.gz"}]
    assert meta["sparsesight"]["seed"] == 5 and meta["sparsesight"]["downsample"] == K
    assert "version" in meta["sparsesight"]
    root = path.parent
    for i, entry in enumerate(meta["training"] + meta["test"]):
        img = nib.load(str(root / entry["image"]))
        lab = nib.load(str(root / entry["label"]))
        ref = make_case(case_seed(5, i), K)
        assert img.shape == (60, 60, 39, 4)
        np.testing.assert_allclose(img.affine, ref.affine)
        np.testing.assert_allclose(lab.affine, ref.affine)
        np.testing.assert_array_equal(np.asarray(img.dataobj, dtype=np.float32), ref.image)
        assert lab.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(lab.dataobj), ref.label)
        assert img.header.get_zooms()[:3] == (K, K, K)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_sample_data(tmp_path, capsys):
    from sparsesight.cli import main

    out = tmp_path / "cli"
    assert main(["sample-data", "--out", str(out), "--cases", "2", "--n-test", "1", "--downsample", "6",
                 "--quiet"]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and (out / "imagesTs" / "case_001.nii.gz").is_file()
    assert main(["sample-data", "--out", str(out), "--cases", "1", "--n-test", "2", "--quiet"]) == 2
    assert main([]) == 2


def test_make_sample_data_script(tmp_path):
    script = Path(__file__).resolve().parents[2] / "sample_data" / "make_sample_data.py"
    spec = importlib.util.spec_from_file_location("make_sample_data", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path / "s"), "--cases", "1", "--n-test", "0", "--downsample", "6",
                     "--quiet"]) == 0
    assert (tmp_path / "s" / "imagesTr" / "case_000.nii.gz").is_file()


# ------------------------------------------------------------------------------------------------ variety
@pytest.fixture(scope="module")
def varied() -> list:
    return [make_case(s, K, variety=True) for s in (1, 2, 3)]


def test_varied_cases_are_reproducible_and_leave_plain_cases_unchanged(varied, case):
    again = make_case(1, K, variety=True)
    assert again.image.tobytes() == varied[0].image.tobytes() and again.params == varied[0].params
    assert case.params["variety"] is None and varied[0].params["variety"]["warp"]["amplitude_mm"] >= 2.0


def test_varied_cases_lie_on_other_grids_in_the_same_world(varied):
    """Each case on its own grid (voxel sizes in range, an axis orientation, a cropped field of view), and the
    world geometry kept: every lesion centre (mm) falls on tumour voxels of the regridded label."""
    from sparsesight.data.phantom.variety import VARIETY

    shapes, orientations = set(), set()
    for c in varied:
        a = c.affine[:3, :3]
        spacing = np.sqrt((a ** 2).sum(0))
        assert K * VARIETY["spacing_xy_mm"][0] - 1e-6 <= spacing.min() <= spacing.max() <= K * VARIETY["spacing_z_mm"][1]
        assert np.count_nonzero(a) == 3  # an axis permutation with signs, scaled
        orientations.add(tuple(np.sign(a).astype(int).ravel()))
        shapes.add(c.image.shape)
        assert set(np.unique(c.label)) <= {0, 1, 2, 3} and c.label.shape == c.image.shape[:3]
        assert c.image.min() >= 0 and np.array_equal(c.image, np.round(c.image))
        inv = np.linalg.inv(c.affine)
        for lesion in c.params["lesions"]:
            ijk = np.round(inv[:3, :3] @ lesion["centre_mm"] + inv[:3, 3]).astype(int)
            lo, hi = np.maximum(ijk - 1, 0), ijk + 2
            assert (c.label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] > 0).any(), (lesion["centre_mm"], ijk)
    assert len(shapes) == 3 and len(orientations) >= 2 and (60, 60, 39, 4) not in shapes


def test_a_varied_case_on_the_plain_grid_is_that_case_without_its_random_grid():
    """make_case(plain_grid=True) (bench/off_grid_ablation): the varied case's anatomy, lesions, contrast and noise,
    on the plain grid; only the random grid is left out, so the tumour's volume is the same."""
    off = make_case(7, K, variety=True)
    plain = make_case(7, K, variety=True, plain_grid=True)
    assert plain.params["lesions"] == off.params["lesions"] and plain.params["contrast"] == off.params["contrast"]
    assert plain.params["noise_sigma"] == off.params["noise_sigma"] and plain.params["variety"]["plain_grid"]
    assert np.allclose(plain.affine, make_case(7, K).affine) and plain.image.shape == (60, 60, 39, 4)
    off_mm3 = np.prod(np.sqrt((off.affine[:3, :3] ** 2).sum(0)))
    # the whole tumour's volume (at 4 mm the random grid's voxels are 3-12 mm: a class of a few voxels is not kept)
    assert (off.label > 0).sum() * off_mm3 == pytest.approx((plain.label > 0).sum() * K**3, rel=0.15)


def test_varied_training_cases_are_resampled_onto_the_plain_grid(tmp_path):
    """pretrain --variety-cases: varied phantoms put on the RAS grid the served model resamples to, label with them."""
    from sparsesight.pretrain import variety_training_set

    items = variety_training_set(1, K, 0, tmp_path)
    assert len(items) == 1
    for it in items:
        img, lab = nib.load(it["image"]), nib.load(it["label"])
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and np.allclose(np.diag(img.affine)[:3], K)
        assert np.allclose(img.affine, lab.affine) and img.shape[:3] == lab.shape and img.shape[3] == 4
        label = np.asarray(lab.dataobj)
        assert set(np.unique(label)) <= {0, 1, 2, 3} and (label > 0).any()
        brain = np.asarray(img.dataobj)[..., 1] > 0
        assert brain[label > 0].mean() > 0.95  # the tumour lies in the brain of the resampled image


@pytest.mark.slow
def test_varied_training_cases_made_in_processes_are_those_made_in_one(tmp_path):
    """pretrain --workers: the varied cases and their resampling in a process pool give the same files."""
    from sparsesight.pretrain import variety_training_set

    one = variety_training_set(2, K, 0, tmp_path / "one")
    two = variety_training_set(2, K, 0, tmp_path / "two", workers=2)
    assert [it["id"] for it in one] == [it["id"] for it in two] == ["case_000", "case_001"]
    for a, b in zip(one, two):
        for key in ("image", "label"):
            x, y = nib.load(a[key]), nib.load(b[key])
            np.testing.assert_array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
            np.testing.assert_allclose(x.affine, y.affine)
