"""ops/fista.py: convolutional synthesis/analysis, ||D|| by power iteration, FISTA against closed forms and scipy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from sparsesight.errors import InvalidInput
from sparsesight.ops import fista as fo


def _dense(d, shape):
    """The matrix of D: (H*W) x (K*H*W), column j = D e_j."""
    k = d.shape[0]
    n = k * shape[0] * shape[1]
    eye = torch.eye(n, dtype=torch.float64).reshape(n, k, *shape)
    return fo.synthesis(eye, d).reshape(n, -1).T.numpy()


def test_synthesis_is_sum_of_convolutions_and_analysis_its_adjoint():
    from scipy.signal import convolve2d

    g = torch.Generator().manual_seed(0)
    d = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    s = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    ref = sum(convolve2d(s[0, k].numpy(), d[k].numpy(), mode="same") for k in range(3))
    np.testing.assert_allclose(fo.synthesis(s, d)[0, 0].numpy(), ref, atol=1e-12)
    x = torch.randn(2, 1, 9, 8, generator=g, dtype=torch.float64)
    lhs = (fo.synthesis(s, d) * x).sum()
    rhs = (s * fo.analysis(x, d)).sum()
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


def test_operator_norm_equals_largest_singular_value():
    d = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1))
    got = fo.operator_norm(d, (7, 6), n_iter=300)
    ref = np.linalg.norm(_dense(d.double(), (7, 6)), 2)
    assert abs(got - ref) < 1e-3 * ref
    assert fo.step_size(d, (7, 6)) == pytest.approx(0.97 / fo.operator_norm(d, (7, 6)) ** 2)
    assert abs(fo.operator_norm(d, (7, 6)) - ref) < 1e-2 * ref  # the default 30 iterations


def test_even_kernels_are_refused():
    with pytest.raises(InvalidInput, match="odd"):
        fo.synthesis(torch.zeros(1, 2, 4, 4), torch.zeros(2, 4, 4))


def test_fista_identity_dictionary_is_soft_threshold():
    """D = I (one 1x1 unit filter): argmin 1/2||s - x||^2 + lam||s||_1 = sign(x) max(|x| - lam, 0)."""
    x = torch.randn(1, 1, 6, 5, generator=torch.Generator().manual_seed(2))
    s = fo.csc(x, torch.ones(1, 1, 1), 0.3, n_iter=50)
    np.testing.assert_allclose(s.numpy(), (torch.sign(x) * (x.abs() - 0.3).clamp(min=0)).numpy(), atol=1e-6)


@pytest.mark.slow
def test_fista_weighted_l1_matches_scipy():
    """A tiny convolutional lasso with a per-pixel weight map, against L-BFGS-B on the split s = u - v, u, v >= 0."""
    g = torch.Generator().manual_seed(4)
    d = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    d /= d.flatten(1).norm(dim=1)[:, None, None]
    x = torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    lam = 0.05 + 0.2 * torch.rand(1, 2, 6, 6, generator=g, dtype=torch.float64)
    s = fo.csc(x, d, lam, n_iter=3000)
    M, w, b = _dense(d, (6, 6)), lam.flatten().numpy(), x.flatten().numpy()

    def f(z):
        u, v = np.split(z, 2)
        r = M @ (u - v) - b
        gr = M.T @ r
        return 0.5 * r @ r + w @ (u + v), np.concatenate([gr + w, -gr + w])

    res = minimize(f, np.zeros(2 * M.shape[1]), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * M.shape[1]),
                   options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-12})
    u, v = np.split(res.x, 2)
    obj_fista = f(np.concatenate([s.flatten().numpy().clip(0), (-s.flatten().numpy()).clip(0)]))[0]
    assert obj_fista <= res.fun + 1e-8
    np.testing.assert_allclose(s.flatten().numpy(), u - v, atol=2e-4)


def test_split_run_gives_the_same_iterates():
    """fista(n1) then fista(n2, state) = fista(n1 + n2): truncated back-propagation changes no forward value."""
    g = torch.Generator().manual_seed(5)
    d = torch.randn(3, 3, 3, generator=g)
    x = torch.randn(1, 1, 8, 8, generator=g)

    def grad(s):
        return fo.analysis(fo.synthesis(s, d) - x, d)

    s0 = torch.zeros(1, 3, 8, 8)
    tau = fo.step_size(d, (8, 8))
    full, _ = fo.fista(grad, s0, tau, 0.1, 12)
    _, st = fo.fista(grad, s0, tau, 0.1, 7)
    part, _ = fo.fista(grad, s0, tau, 0.1, 5, state=st)
    torch.testing.assert_close(part, full)
