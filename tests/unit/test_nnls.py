"""Batched NNLS (ops/nnls.py) against scipy.optimize.nnls."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls as scipy_nnls

from sparsesight.ops.nnls import DenseGram, FactoredGram, nnls, nnls_gram, nnls_small


def _objective(a, y, w):
    return float(np.sum((y - a @ w) ** 2))


def test_batched_nnls_equals_scipy_on_random_overdetermined_problems():
    rng = np.random.default_rng(0)
    for m, n in ((30, 20), (12, 5), (50, 40)):
        a = rng.standard_normal((m, n))
        y = rng.standard_normal((64, m))
        w = nnls(torch.tensor(a), torch.tensor(y)).numpy()
        assert (w >= 0).all()
        for b in range(len(y)):
            ref, _ = scipy_nnls(a, y[b])
            np.testing.assert_allclose(w[b], ref, atol=1e-9)


def test_batched_nnls_per_voxel_dictionaries():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 20, 9))
    y = rng.standard_normal((16, 20))
    w = nnls(torch.tensor(a), torch.tensor(y)).numpy()
    for b in range(16):
        np.testing.assert_allclose(w[b], scipy_nnls(a[b], y[b])[0], atol=1e-9)


def test_underdetermined_nonnegative_dictionary_reaches_scipys_optimum():
    # N > M with positive, strongly correlated atoms (like fingerprints): the minimiser may not be unique, the
    # optimum is; check it and the KKT conditions
    rng = np.random.default_rng(2)
    m, n = 25, 60
    t = np.linspace(0, 1, m)[:, None]
    a = np.exp(-t * rng.uniform(0.5, 5, n)[None])
    w_true = np.zeros((20, n))
    for b in range(20):
        w_true[b, rng.choice(n, 3, replace=False)] = rng.uniform(0.2, 1, 3)
    y = w_true @ a.T + 0.01 * rng.standard_normal((20, m))
    w = nnls(torch.tensor(a), torch.tensor(y)).numpy()
    for b in range(20):
        ref, _ = scipy_nnls(a, y[b], maxiter=10 * n)
        assert _objective(a, y[b], w[b]) <= _objective(a, y[b], ref) * (1 + 1e-8) + 1e-14
        grad = a.T @ (y[b] - a @ w[b])  # -½ gradient: <= 0 where w = 0, = 0 where w > 0
        scale = np.abs(a.T @ y[b]).max()
        assert (grad[w[b] == 0] <= 1e-8 * scale).all()
        np.testing.assert_allclose(grad[w[b] > 0], 0, atol=1e-8 * scale)


def test_zero_and_negative_data_give_zero_weights():
    a = torch.rand(10, 4, dtype=torch.float64)
    w = nnls(a, torch.stack([torch.zeros(10, dtype=torch.float64), -a.sum(1)]))
    assert torch.equal(w, torch.zeros(2, 4, dtype=torch.float64))


def test_factored_gram_matches_the_dense_dictionary():
    # atoms j = ca Φ[:, ia] + cb Φ[:, ib]: the factored Gram gives the dense dictionary's solution
    rng = np.random.default_rng(3)
    m, q, n, b = 30, 8, 25, 6
    phi = np.abs(rng.standard_normal((b, m, q)))
    ia, ib = rng.integers(0, q, n), rng.integers(0, q, n)
    ca = rng.uniform(0.1, 1, n)
    cb = 1 - ca
    s = np.zeros((q, n))
    np.add.at(s, (ia, np.arange(n)), ca)
    np.add.at(s, (ib, np.arange(n)), cb)
    d = phi @ s  # (B, M, N)
    y = np.abs(rng.standard_normal((b, m)))
    op = FactoredGram(torch.tensor(np.einsum("bmq,bmr->bqr", phi, phi)), ia, ca, ib, cb)
    aty = torch.tensor(np.einsum("bmn,bm->bn", d, y))
    w, info = nnls_gram(op, aty)
    dense = nnls(torch.tensor(d), torch.tensor(y)).numpy()
    for v in range(b):
        ref = _objective(d[v], y[v], scipy_nnls(d[v], y[v], maxiter=50 * n)[0])
        assert _objective(d[v], y[v], w[v].numpy()) == pytest.approx(ref, rel=1e-8, abs=1e-12)
        assert _objective(d[v], y[v], dense[v]) == pytest.approx(ref, rel=1e-8, abs=1e-12)
    assert bool(info["converged"].all())
    # the operator's products equal the dense Gram's
    g = DenseGram(torch.tensor(d))
    idx = torch.tensor([[0, 3, 7]] * b)
    val = torch.rand(b, 3, dtype=torch.float64)
    rows = torch.arange(b)
    torch.testing.assert_close(op.matvec(idx, val, rows), g.matvec(idx, val, rows))
    torch.testing.assert_close(op.sub(idx, rows), g.sub(idx, rows))


def test_factored_gram_on_a_few_active_rows_gives_the_whole_batchs_numbers():
    # matvec and sub on a few active rows give the whole batch's numbers, bit for bit (NNLS ties)
    rng = np.random.default_rng(4)
    m, q, n, b = 40, 9, 30, 12
    phi = torch.tensor(np.abs(rng.standard_normal((b, m, q))))
    ia, ib = rng.integers(0, q, n), rng.integers(0, q, n)
    ca = rng.uniform(0.1, 1, n)
    op = FactoredGram(phi.transpose(1, 2) @ phi, ia, ca, ib, 1 - ca)
    idx = torch.tensor(rng.integers(0, n, (b, 4)))
    val = torch.rand(b, 4, dtype=torch.float64)
    every = op.matvec(idx, val, torch.arange(b))
    for rows in (torch.tensor([1, 5, 9]), torch.tensor([0, 11]), torch.tensor([7])):
        assert torch.equal(op.matvec(idx[rows], val[rows], rows), every[rows])
        assert torch.equal(op.sub(idx[rows], rows), op.sub(idx, torch.arange(b))[rows])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_tiny_nnls_closed_form_equals_scipy(k):
    rng = np.random.default_rng(10 + k)
    a = rng.standard_normal((500, 7, k))
    y = rng.standard_normal((500, 7))
    g = torch.tensor(np.einsum("bmi,bmj->bij", a, a))
    b = torch.tensor(np.einsum("bmi,bm->bi", a, y))
    yy = torch.tensor((y**2).sum(1))
    w, r2 = nnls_small(g, b, yy)
    for v in range(500):
        ref, rn = scipy_nnls(a[v], y[v])
        np.testing.assert_allclose(w[v].numpy(), ref, atol=1e-10)
        assert r2[v].item() == pytest.approx(rn**2, abs=1e-10)


def test_factored_gram_grid_blocks_give_the_gathers_numbers():
    # S^T on (radius, fraction) grid blocks by broadcasting equals the gather over ia, ib; a grid that does not
    # describe ia, ib is refused
    rng = np.random.default_rng(5)
    na, nb = 4, 3
    ia = np.concatenate([np.repeat(np.arange(na), nb), np.repeat(np.arange(na), nb) + na + nb, [2 * (na + nb)]])
    ib = np.concatenate([np.tile(np.arange(nb), na) + na, np.tile(np.arange(nb), na) + 2 * na + nb, [2 * (na + nb)]])
    ca = rng.uniform(0, 1, len(ia))
    q = 2 * (na + nb) + 1
    h = torch.tensor(rng.standard_normal((2, q, q)))
    plain = FactoredGram(h, ia, ca, ib, 1 - ca)
    grid = FactoredGram(h, ia, ca, ib, 1 - ca, [(0, na, na, nb), (na + nb, na, 2 * na + nb, nb)])
    for u in (torch.tensor(rng.standard_normal((2, q))), torch.tensor(rng.standard_normal((2, q, 5)))):
        torch.testing.assert_close(grid.apply_st(u), plain.apply_st(u), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="does not match"):
        FactoredGram(h, ia, ca, ib, 1 - ca, [(0, nb, na, na)])
