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
