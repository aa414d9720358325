"""Haar DWT (ops/haar.py): orthonormality, perfect reconstruction, known coefficients, refusals."""
import math

import numpy as np
import pytest
import torch

from sparsesight.errors import InvalidInput
from sparsesight.ops.haar import dwt, haar_filters, idwt


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 4, 6, 8)])
def test_perfect_reconstruction_and_energy(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    y = dwt(x)
    dims = len(shape) - 2
    assert y.shape == (shape[0], shape[1] * 2**dims, *[s // 2 for s in shape[2:]])
    assert torch.allclose(idwt(y), x, atol=1e-12)
    assert torch.allclose(y.norm(), x.norm(), rtol=1e-12)  # orthonormal: energy preserved


@pytest.mark.parametrize("dims", [2, 3])
def test_filters_are_an_orthonormal_basis(dims):
    f = haar_filters(dims, torch.float64).flatten(1)
    assert torch.allclose(f @ f.T, torch.eye(2**dims, dtype=torch.float64), atol=1e-12)


def test_known_coefficients_2d():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    ll, lh, hl, hh = dwt(x).flatten().tolist()
    assert ll == pytest.approx(5.0)                      # (1+2+3+4)/2
    assert lh == pytest.approx((1 - 2 + 3 - 4) / 2)      # high-pass along the last axis
    assert hl == pytest.approx((1 + 2 - 3 - 4) / 2)      # high-pass along the first axis
    assert hh == pytest.approx((1 - 2 - 3 + 4) / 2)


def test_constant_image_has_only_approximation():
    x = torch.full((1, 1, 4, 4, 4), 3.0, dtype=torch.float64)
    y = dwt(x)
    assert torch.allclose(y[:, 0], torch.full_like(y[:, 0], 3.0 * 2 ** 1.5))  # 8 voxels * 3 / sqrt(8)
    assert torch.allclose(y[:, 1:], torch.zeros_like(y[:, 1:]))


def test_matches_pywavelets_style_reference():
    """Against a direct NumPy Haar step along each axis (averages and differences over sqrt 2)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 4))
    lo = lambda v, ax: (np.take(v, range(0, v.shape[ax], 2), ax) + np.take(v, range(1, v.shape[ax], 2), ax)) / math.sqrt(2)  # noqa: E731
    hi = lambda v, ax: (np.take(v, range(0, v.shape[ax], 2), ax) - np.take(v, range(1, v.shape[ax], 2), ax)) / math.sqrt(2)  # noqa: E731
    expect = [lo(lo(a, 0), 1), hi(lo(a, 0), 1), lo(hi(a, 0), 1), hi(hi(a, 0), 1)]
    y = dwt(torch.tensor(a).view(1, 1, 6, 4))[0].numpy()
    for k in range(4):
        assert np.allclose(y[k], expect[k])


def test_refusals():
    with pytest.raises(InvalidInput, match="even spatial sizes"):
        dwt(torch.zeros(1, 1, 5, 4))
    with pytest.raises(InvalidInput, match="2D and 3D"):
        dwt(torch.zeros(1, 1, 4))
    with pytest.raises(InvalidInput, match="subbands"):
        idwt(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 4, 6, 8)])
def test_channels_last_gives_the_same_transform_and_keeps_the_format(shape):
    """Channels-last input (SUM's format) goes through the butterfly synthesis: same numbers, format kept."""
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(*shape)
    y = dwt(x)
    y_cl = dwt(x.contiguous(memory_format=fmt)).contiguous(memory_format=fmt)
    assert torch.allclose(y_cl, y, atol=1e-6)
    x_cl = idwt(y_cl)
    assert x_cl.is_contiguous(memory_format=fmt) and not x_cl.is_contiguous()
    assert torch.allclose(x_cl, idwt(y.contiguous()), atol=1e-6)
    assert torch.allclose(x_cl, x, atol=1e-5)
    g = torch.randn(*shape)  # gradients through the butterflies: W^T's adjoint is W
    yr = y_cl.clone().requires_grad_()
    (idwt(yr) * g).sum().backward()
    assert torch.allclose(yr.grad, dwt(g), atol=1e-5)
