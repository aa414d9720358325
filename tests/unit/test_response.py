"""Impulse/frequency responses and the SDS/FDS/FDV features (seed 003, Appendices B and C)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import signal

from sparsesight.explain import response
from sparsesight.models.sum import SUM

# eq. 28 (the middle row of s_h is (-2, 0, 2); the paper's print drops the sign pattern's 2)
S_H = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
S_V = S_H.T


def test_impulse_response_recovers_a_known_filter_bank():
    """A linear 2-in / 3-out convolution: the response to the impulse in channel i, read out on channel j, is
    the kernel w[j, i] (flipped: torch convolutions are correlations)."""
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, 3)
    fn = lambda x: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731
    r = response.impulse_response(fn, 2, (9, 11))
    assert r.shape == (3, 2, 9, 11)
    z = (4, 5)
    for j in range(3):
        for i in range(2):
            np.testing.assert_allclose(r[j, i, z[0] - 1:z[0] + 2, z[1] - 1:z[1] + 2], w[j, i].flip(0, 1).numpy(),
                                       atol=1e-6)
            outside = r[j, i].copy()
            outside[z[0] - 1:z[0] + 2, z[1] - 1:z[1] + 2] = 0
            assert np.abs(outside).max() == 0


def test_frequency_response_closed_form():
    """h = [1/4, 1/2, 1/4] along each axis: |H(w)| = cos^2(w/2) per axis."""
    h = np.array([0.25, 0.5, 0.25])
    k = torch.tensor(np.outer(h, h), dtype=torch.float32).view(1, 1, 3, 3)
    n = 16
    r = response.impulse_response(lambda x: torch.nn.functional.conv2d(x, k, padding=1), 1, (n, n))
    f = response.frequency_response(r)[0, 0]
    w = 2 * np.pi * (np.arange(n) - n // 2) / n  # fftshift-ed frequencies
    expected = np.outer(np.cos(w / 2) ** 2, np.cos(w / 2) ** 2)
    np.testing.assert_allclose(f, expected, atol=1e-6)
    assert f[n // 2, n // 2] == pytest.approx(1.0)  # zero frequency at the centre: DC gain sum h = 1


def test_sobel_tv_and_fdv_hand_computed():
    f = np.zeros((3, 3))
    f[1, 1] = 1.0
    # |d_h| = [[1,0,1],[2,0,2],[1,0,1]], |d_v| its transpose: corners sqrt(2), edge midpoints 2, centre 0
    assert response.total_variation(f) == pytest.approx(4 * math.sqrt(2) + 8)
    assert response.fdv(f) == pytest.approx(4 * math.sqrt(2) + 8)  # ||f||_F = 1
    assert response.fdv(3.0 * f) == pytest.approx(response.fdv(f))  # scale invariant
    # eq. 27-28 on a random array: scipy's Sobel is the correlation with s_h, s_v (zero padding)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 6))
    d0, d1 = response.sobel_gradients(a)
    np.testing.assert_allclose(np.abs(d1), np.abs(signal.correlate2d(a, S_H, mode="same")), atol=1e-12)
    np.testing.assert_allclose(np.abs(d0), np.abs(signal.correlate2d(a, S_V, mode="same")), atol=1e-12)
    tv = np.sqrt(signal.correlate2d(a, S_H, mode="same") ** 2 + signal.correlate2d(a, S_V, mode="same") ** 2).sum()
    assert response.fdv(a) == pytest.approx(tv / np.linalg.norm(a))
    assert response.fdv(np.ones((5, 5))) > 0  # zero padding: the border of a constant has variation


def test_spreads_hand_computed():
    r = np.zeros((7, 7))
    r[3, 3] = 5.0
    assert response.sds(r) == 0.0  # an impulse at the impulse position does not spread
    r = np.zeros((7, 7))
    r[3, 4], r[3, 1] = 1.0, -1.0  # |r|: equal weights at distances 1 and 2 from z = (3, 3)
    assert response.sds(r) == pytest.approx(1.5)
    assert response.sds(r, impulse=(3, 4)) == pytest.approx(0.5 * 0 + 0.5 * 3)
    f = np.ones((3, 3))  # flat spectrum: mean distance to the centre
    assert response.fds(f) == pytest.approx((4 * 1 + 4 * math.sqrt(2)) / 9)
    # an identity system: flat spectrum of the impulse, spread as above; the delta has SDS 0
    rows = response.response_metrics(np.eye(1)[:, :, None, None] * np.pad(np.ones((1, 1)), 1))
    assert rows[0]["SDS"] == 0.0 and rows[0]["FDS"] == pytest.approx((4 + 4 * math.sqrt(2)) / 9, abs=1e-4)


def test_sum_with_identity_filters_has_a_delta_response():
    torch.manual_seed(1)
    model = SUM(spatial_dims=2, in_channels=2, features=4, levels=2)
    with torch.no_grad():
        for name, conv in model.named_modules():
            if isinstance(conv, torch.nn.Conv2d) and name != "omega":
                conv.weight.zero_()
                if not name.startswith("dec_skip"):
                    for c in range(min(conv.in_channels, conv.out_channels)):
                        conv.weight[c, c, 1, 1] = 1.0
    r = response.impulse_response(lambda t: model(t, alpha=0.0, output="ed"), 2, (16, 16))
    expected = np.zeros_like(r)
    expected[0, 0, 8, 8] = expected[1, 1, 8, 8] = 1.0
    np.testing.assert_allclose(r, expected, atol=1e-6)
    rows = response.response_metrics(r, ["a", "b"])
    by = {(row["input"], row["output"]): row for row in rows}
    assert by[("a", "a")]["SDS"] == 0.0 and by[("a", "a")]["dc_gain"] == pytest.approx(1.0)
    assert math.isnan(by[("a", "b")]["SDS"]) and math.isnan(by[("a", "b")]["FDV"])  # no cross-talk: no spread


@pytest.mark.slow
def test_alpha_sweep_and_pictures(tmp_path):
    torch.manual_seed(2)
    model = SUM(spatial_dims=3, features=4, levels=2).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("b_"):
                p.copy_(0.3 * torch.rand(p.shape))
    x = torch.randn(1, 4, 16, 16, 8)
    label = np.zeros((16, 16, 8), np.uint8)
    label[4:10, 4:10, 2:6] = 1
    rows, images = response.alpha_sweep(model, x, (0.0, 1.0, 2.0), label=label)
    assert [r["alpha"] for r in rows] == [0.0, 1.0, 2.0]
    assert rows[0]["noise_transfer"] == pytest.approx(1.0) and rows[0]["detail"] == pytest.approx(1.0)
    assert rows[0]["survival"] >= rows[1]["survival"] >= rows[2]["survival"]
    assert rows[2]["noise_transfer"] < 1.0  # stronger shrinkage lets less noise through
    assert {"dice_WT", "dice_TC", "dice_ET"} <= set(rows[0])
    assert images["ed"][0.0].shape == (4, 16, 16, 8)
    files = response.explain(model, x, tmp_path, names=["FLAIR", "T1", "T1ce", "T2"], alphas=(0.0, 1.0), size=16)
    for key in ("response_png", "alpha_sweep_png"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = files["response_csv"].read_text().splitlines()
    assert lines[0] == "input,output,SDS,FDS,FDV,dc_gain" and len(lines) == 1 + 16
