"""ops/kspace.py and data/lfmri.py: the forward model of seed 001 (eq. 1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesight.data import lfmri
from sparsesight.errors import InvalidInput
from sparsesight.ops import kspace


def _crandn(g, *shape):
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)).to(torch.complex128)


@pytest.mark.parametrize("shape", [(16, 16), (15, 22)])
def test_fft2c_matches_numpy_centred_orthonormal(shape):
    x = np.random.default_rng(0).standard_normal(shape) + 1j * np.random.default_rng(1).standard_normal(shape)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x), norm="ortho"))
    got = kspace.fft2c(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)
    np.testing.assert_allclose(kspace.ifft2c(torch.as_tensor(ref)).numpy(), x, atol=1e-12)
    assert np.isclose(np.linalg.norm(got), np.linalg.norm(x))  # unitary


def test_centre_is_dc():
    x = torch.ones(8, 10, dtype=torch.complex128)
    k = kspace.fft2c(x)
    assert abs(k[4, 5] - np.sqrt(80)) < 1e-12 and k.abs().sum() - k[4, 5].abs() < 1e-9


@pytest.mark.parametrize("mask_kind", ["lowres", "random"])
def test_forward_adjoint_dot_product(mask_kind):
    g = torch.Generator().manual_seed(3)
    shape = (2, 24, 20)
    mask = torch.as_tensor(lfmri.sampling_mask(shape[1:], mask_kind, keep=0.5, acceleration=3, seed=1))
    x, y = _crandn(g, *shape), _crandn(g, *shape)
    lhs = torch.vdot(kspace.forward(x, mask).flatten(), y.flatten())  # <A x, y>
    rhs = torch.vdot(x.flatten(), kspace.adjoint(y, mask).flatten())  # <x, A^H y>
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)
    np.testing.assert_allclose(kspace.normal(x, mask).numpy(), kspace.adjoint(kspace.forward(x, mask), mask).numpy(),
                               atol=1e-12)


def test_lowres_mask_counts_lines():
    m = lfmri.lowres_mask((320, 320), keep=160 / 320)
    assert m.sum() == 160 * 160 and m[160, 160]  # centred, DC inside
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (80, 239, 80, 239)
    assert lfmri.lowres_mask((320, 320), keep=120 / 320).sum() == 120 * 120


def test_random_mask_acceleration_and_centre():
    m = lfmri.random_mask((100, 64), acceleration=4, seed=2)
    rows = m.all(1)
    assert rows.sum() == 25 and (m.any(1) == rows).all()  # whole lines only
    assert rows[46:54].all()  # fully sampled centre (8 % of 100 rows around row 50)
    assert not np.array_equal(m, lfmri.random_mask((100, 64), acceleration=4, seed=3))


def test_simulate_noise_level_and_scale():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 64))
    x[16:48, 20:44] = 1.0
    mask = np.ones((64, 64), bool)
    y, s = lfmri.simulate(x, mask, 0.0, rng)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x), norm="ortho"))
    assert np.isclose(s, np.std(np.abs(k)))
    np.testing.assert_allclose(y, k / s, atol=1e-5)
    y2, _ = lfmri.simulate(x, mask, 0.2, rng)
    e = y2 - k / s
    assert abs(np.mean(np.abs(e) ** 2) - 0.04) < 0.004  # E|e|^2 = sigma^2
    y3, _ = lfmri.simulate(x, lfmri.lowres_mask((64, 64), 0.5), 0.2, rng)
    assert (y3[~lfmri.lowres_mask((64, 64), 0.5)] == 0).all()


def test_bad_options_are_named_errors():
    with pytest.raises(InvalidInput, match="keep"):
        lfmri.lowres_mask((32, 32), keep=1.5)
    with pytest.raises(InvalidInput, match="acceleration"):
        lfmri.random_mask((32, 32), acceleration=0.5)
    with pytest.raises(InvalidInput, match="unknown mask"):
        lfmri.sampling_mask((32, 32), "radial")
    with pytest.raises(InvalidInput, match="sigma"):
        lfmri.check_sigma(-0.1)
    with pytest.raises(InvalidInput, match="channel"):
        lfmri.channel_index("DWI")
    with pytest.raises(InvalidInput, match="complex"):
        lfmri.kspace_masks(np.zeros((4, 4, 2)))


def test_volume_roundtrip_and_kspace_masks():
    vol = np.zeros((32, 32, 3), np.float32)
    vol[8:24, 8:24, 1:] = 2.0
    ks, masks, scales = lfmri.simulate_volume(vol, "lowres", keep=0.5, sigma=0.0)
    assert (ks[..., 0] == 0).all() and scales[0] == 1.0
    x0 = lfmri.zero_filled(ks[..., 2], masks[..., 2])
    assert np.allclose(x0.mean() * scales[2], vol[..., 2].mean(), rtol=1e-4)  # DC kept: mean preserved
    ks, masks, _ = lfmri.simulate_volume(vol, "random", acceleration=3, sigma=0.1, seed=4)
    got = lfmri.kspace_masks(ks)  # measured samples are noisy, so non-zero exactly where sampled
    assert (got[..., 1:] == masks[..., 1:]).all()
