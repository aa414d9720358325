"""Batched non-negative least squares: min_{w >= 0} ||y - A w||² for many voxels at once (torch, vectorised).

The solver is the active-set algorithm of Lawson & Hanson (1995, ch. 23, p. 161; the one scipy.optimize.nnls
implements) in its normal-equation form, run for a whole batch: each outer step moves, in every voxel that is
not converged, the variable with the largest positive gradient of -½||y - A w||² into the passive set; the
inner loop solves the unconstrained least squares on the passive set and steps back to the feasible region when
a passive variable would turn negative. It only needs A^T y and the Gram G = A^T A through two operations:

    matvec(idx, val)  = G[:, idx] @ val   (B, N): the gradient A^T y - G w for a sparse w
    sub(idx)          = G[idx][:, idx]     (B, P, P): the normal equations on the passive set

so dictionaries with structure (FactoredGram: atoms that are combinations of two columns of a small basis, as
in microstructure fingerprinting) never build G. Computation is float64: dictionary atoms are strongly
correlated and the normal equations square their condition number.
"""
from __future__ import annotations

import torch


class DenseGram:
    """G = A^T A for a dictionary shared by the batch (M, N) or one per voxel (B, M, N)."""

    def __init__(self, a: torch.Tensor):
        a = a.to(torch.float64)
        self.g = a.transpose(-1, -2) @ a  # (N, N) or (B, N, N)
        self.n = self.g.shape[-1]

    def _rows(self, rows):
        return self.g if self.g.ndim == 2 else self.g[rows]

    def matvec(self, idx, val, rows):
        g = self._rows(rows)
        if g.ndim == 2:
            cols = g[:, idx].permute(1, 0, 2)  # (B, N, P)
        else:
            cols = torch.gather(g, 2, idx[:, None, :].expand(-1, g.shape[1], -1))
        return (cols @ val[..., None])[..., 0]

    def sub(self, idx, rows):
        g = self._rows(rows)
        if g.ndim == 2:
            return g[idx[:, :, None], idx[:, None, :]]
        b = torch.arange(len(idx))[:, None, None]
        return g[b, idx[:, :, None], idx[:, None, :]]


class FactoredGram:
    """G = S^T H S where H = Φ^T Φ (B, Q, Q) is the Gram of a basis Φ and every atom is a combination of at
    most two basis columns: atom j = ca[j] Φ[:, ia[j]] + cb[j] Φ[:, ib[j]] (S is Q x N with 2 non-zeros a
    column). Costs O(P Q + N) per matvec (P the passive atoms) instead of O(N²)."""

    def __init__(self, h: torch.Tensor, ia, ca, ib, cb, grid=None):
        """`grid` (optional): blocks (a0, na, b0, nb) that tile the first atoms in order, atom (i, j) of a block
        combining basis columns a0 + i and b0 + j (i major), as fingerprints over a (radius, fraction) grid do;
        S^T then needs no gather on them (checked against ia, ib here)."""
        self.h = h.to(torch.float64).contiguous()
        self.ia, self.ib = torch.as_tensor(ia, dtype=torch.long), torch.as_tensor(ib, dtype=torch.long)
        self.ca = torch.as_tensor(ca, dtype=torch.float64)
        self.cb = torch.as_tensor(cb, dtype=torch.float64)
        self.n = len(self.ia)
        self.q = self.h.shape[-1]
        self.grid = [tuple(int(x) for x in blk) for blk in grid or []]
        o = 0
        for a0, na, b0, nb in self.grid:
            ok = (torch.equal(self.ia[o:o + na * nb], a0 + torch.arange(na).repeat_interleave(nb))
                  and torch.equal(self.ib[o:o + na * nb], b0 + torch.arange(nb).repeat(na)))
            if not ok:
                raise ValueError(f"grid block {(a0, na, b0, nb)} at atom {o} does not match ia, ib")
            o += na * nb

    def basis_coefficients(self, idx, val):
        """S[:, idx] @ val: (B, Q) coefficients on the basis of a sparse w."""
        v = torch.zeros(idx.shape[0], self.q, dtype=torch.float64)
        v.scatter_add_(1, self.ia[idx], self.ca[idx] * val)
        v.scatter_add_(1, self.ib[idx], self.cb[idx] * val)
        return v

    def apply_st(self, u):
        """S^T u for u (B, Q, ...) -> (B, N, ...): on grid blocks ca ⊗ u[a] + cb ⊗ u[b] by broadcasting (30x a
        gather of 256 voxels at the paper's grid), on the other atoms a gather."""
        tail = [1] * (u.ndim - 2)
        out = u.new_empty(u.shape[0], self.n, *u.shape[2:])
        o = 0
        for a0, na, b0, nb in self.grid:
            blk = out[:, o:o + na * nb].view(u.shape[0], na, nb, *u.shape[2:])
            torch.mul(u[:, a0:a0 + na].unsqueeze(2), self.ca[o:o + na * nb].view(na, nb, *tail), out=blk)
            blk.addcmul_(u[:, b0:b0 + nb].unsqueeze(1), self.cb[o:o + na * nb].view(na, nb, *tail))
            o += na * nb
        if o < self.n:
            ia, ib = self.ia[o:], self.ib[o:]
            ca, cb = self.ca[o:].view(1, -1, *tail), self.cb[o:].view(1, -1, *tail)
            out[:, o:] = ca * u.index_select(1, ia) + cb * u.index_select(1, ib)  # index_select: 2x a fancy index
        return out

    def matvec(self, idx, val, rows):
        # H (S w) from the rows of H at the basis columns of w's support only (H is symmetric): 2P rows of Q
        # entries per voxel instead of all Q², the rows contiguous in memory
        cols = torch.cat([self.ia[idx], self.ib[idx]], 1)  # (R, 2P)
        coef = torch.cat([self.ca[idx] * val, self.cb[idx] * val], 1)
        at = (rows[:, None] * self.q + cols).reshape(-1)
        h_rows = self.h.view(-1, self.q).index_select(0, at).view(len(rows), -1, self.q)  # (R, 2P, Q)
        return self.apply_st((coef[:, None, :] @ h_rows)[:, 0])

    def sub(self, idx, rows):
        # (S^T H S)[a, b] = sum over the two basis columns of atoms a and b: one gather of the (2P)² entries of H
        # at the support's basis columns (a flat index: a tenth of the time of a three-tensor fancy index), then
        # the four P x P blocks weighted and summed
        p = idx.shape[1]
        cols = torch.cat([self.ia[idx], self.ib[idx]], 1)  # (R, 2P)
        coef = torch.cat([self.ca[idx], self.cb[idx]], 1)
        at = rows[:, None, None] * (self.q * self.q) + cols[:, :, None] * self.q + cols[:, None, :]
        g = torch.take(self.h, at) * coef[:, :, None] * coef[:, None, :]
        return g[:, :p, :p] + g[:, :p, p:] + g[:, p:, :p] + g[:, p:, p:]


def _solve_passive(op, aty, idx, valid, rows):
    """Least squares on each voxel's passive set: G_PP z = (A^T y)_P; padded slots are decoupled (z = 0)."""
    g = op.sub(idx, rows)
    eye = torch.eye(idx.shape[1], dtype=torch.float64)
    vv = valid[:, :, None] & valid[:, None, :]
    g = torch.where(vv, g, eye.expand_as(g))
    rhs = torch.where(valid, torch.gather(aty, 1, idx), torch.zeros((), dtype=torch.float64))
    z = torch.linalg.solve(g, rhs[..., None])[..., 0]
    return torch.where(valid, z, torch.zeros((), dtype=torch.float64))


def _compact(idx, val, valid):
    """Move each row's passive entries to the front (stable)."""
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    return torch.gather(idx, 1, order), torch.gather(val, 1, order), torch.gather(valid, 1, order)


def nnls_gram(op, aty: torch.Tensor, max_iter: int | None = None, max_passive: int | None = None,
              tol: float = 1e-10) -> tuple[torch.Tensor, dict]:
    """Batched Lawson-Hanson NNLS from A^T y (B, N) and a Gram operator (DenseGram, FactoredGram).

    Stops in a voxel when no inactive variable has a gradient above tol · max|A^T y| (the KKT conditions),
    after max_iter outer steps (default 3 N) or when max_passive variables are passive. Returns w (B, N) and
    {"iterations", "passive" (B,) final |w|_0 bound, "converged" (B,) bool}.
    """
    aty = aty.to(torch.float64)
    bsz, n = aty.shape
    max_iter = max_iter or 3 * n
    cap = min(n, max_passive or n)
    thr = tol * aty.abs().amax(1).clamp_min(1e-300)
    idx = torch.zeros(bsz, 0, dtype=torch.long)
    val = torch.zeros(bsz, 0, dtype=torch.float64)
    valid = torch.zeros(bsz, 0, dtype=torch.bool)
    done = torch.zeros(bsz, dtype=torch.bool)
    converged = torch.zeros(bsz, dtype=torch.bool)
    it = 0
    neg_inf = torch.tensor(-torch.inf, dtype=torch.float64)
    while it < max_iter:
        rows = torch.nonzero(~done)[:, 0]
        if len(rows) == 0:
            break
        it += 1
        i_r, v_r, ok_r = idx[rows], val[rows], valid[rows]
        grad = aty[rows] - op.matvec(i_r, v_r * ok_r, rows)
        grad = grad.scatter(1, i_r, torch.where(ok_r, neg_inf, grad.gather(1, i_r)))
        gmax, j = grad.max(1)
        cnt = ok_r.sum(1)
        kkt = gmax <= thr[rows]
        stop = kkt | (cnt >= cap)
        converged[rows[kkt]] = True
        done[rows[stop]] = True
        keep = ~stop
        rows, j = rows[keep], j[keep]
        if len(rows) == 0:
            break
        # one more slot when a row is full, then put j into the first free slot of each active row
        if int(cnt[keep].max()) >= idx.shape[1]:
            idx = torch.cat([idx, torch.zeros(bsz, 1, dtype=torch.long)], 1)
            val = torch.cat([val, torch.zeros(bsz, 1, dtype=torch.float64)], 1)
            valid = torch.cat([valid, torch.zeros(bsz, 1, dtype=torch.bool)], 1)
        slot = valid[rows].sum(1)
        idx[rows, slot] = j
        valid[rows, slot] = True
        val[rows, slot] = 0.0
        first = True
        while len(rows):  # inner loop of Lawson-Hanson
            p = int(valid[rows].sum(1).max())
            i_r, v_r, ok_r = idx[rows, :p], val[rows, :p], valid[rows, :p]
            z = _solve_passive(op, aty[rows], i_r, ok_r, rows)
            neg = ok_r & (z <= 0)
            need = neg.any(1)
            if first:  # the variable just added must come in positive; otherwise the voxel is at its optimum
                new_bad = z.gather(1, slot[:, None])[:, 0] <= 0
                if new_bad.any():
                    nb = rows[new_bad]
                    valid[nb, slot[new_bad]] = False
                    done[nb] = True
                    converged[nb] = True
                    keep = ~new_bad
                    rows, z, neg, need, v_r, ok_r, slot = (rows[keep], z[keep], neg[keep], need[keep],
                                                           v_r[keep], ok_r[keep], slot[keep])
                first = False
            accept = ~need
            val[rows[accept], :p] = z[accept]
            rows, z, neg, v_r, ok_r = rows[need], z[need], neg[need], v_r[need], ok_r[need]
            if len(rows) == 0:
                break
            ratio = torch.where(neg, v_r / (v_r - z), torch.tensor(torch.inf, dtype=torch.float64))
            alpha, amin = ratio.min(1)
            alpha = alpha.clamp(0, 1)
            v_new = v_r + alpha[:, None] * (z - v_r)
            drop = ok_r & (v_new <= 1e-14 * v_new.abs().amax(1, keepdim=True).clamp_min(1e-300))
            drop[torch.arange(len(rows)), amin] = True  # the blocking variable leaves even under round-off
            ok_new = ok_r & ~drop
            v_new = torch.where(ok_new, v_new, torch.zeros((), dtype=torch.float64))
            ii, vv, oo = _compact(idx[rows, :p], v_new, ok_new)
            idx[rows, :p], val[rows, :p], valid[rows, :p] = ii, vv, oo
        val = torch.where(valid, val, torch.zeros((), dtype=torch.float64))
    w = torch.zeros(bsz, n, dtype=torch.float64)
    w.scatter_add_(1, idx, torch.where(valid, val, torch.zeros((), dtype=torch.float64)))
    return w, {"iterations": it, "passive": valid.sum(1), "converged": converged}


def nnls(a: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    """Batched NNLS: a (M, N) shared or (B, M, N), y (B, M) -> w (B, N) >= 0 minimising ||y - a w||²."""
    a = torch.as_tensor(a, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.ndim == 1:
        return nnls(a, y[None], **kw)[0]
    aty = (y[:, None, :] @ a)[:, 0] if a.ndim == 3 else y @ a
    return nnls_gram(DenseGram(a), aty, **kw)[0]


def nnls_small(g, b, yy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact NNLS of many tiny problems (K <= 3 variables) from their Gram g, A^T y and ||y||² (...,): the
    optimum is the unconstrained least squares on its support, so every support is solved in closed form
    (Cramer's rule) and the best feasible one kept (eq. 4's sub-problems).

    g is a (..., K, K) tensor or a K x K nested list of tensors that broadcast together (no copy of shared
    entries), b a (..., K) tensor or a list of K tensors. Returns (w (..., K), ||y - A w||² (...))."""
    if isinstance(g, torch.Tensor):
        k = g.shape[-1]
        g = [[g[..., i, j] for j in range(k)] for i in range(k)]
    if isinstance(b, torch.Tensor):
        b = [b[..., i] for i in range(b.shape[-1])]
    k = len(b)
    if k > 3:
        raise ValueError("nnls_small solves K <= 3 variables; use nnls for larger problems")
    shape = torch.broadcast_shapes(yy.shape, *[t.shape for t in b], *[t.shape for row in g for t in row])
    best = yy.expand(shape).clone()  # w = 0
    w_best = [torch.zeros(shape, dtype=yy.dtype) for _ in range(k)]
    for mask in range(1, 2**k):
        s = [i for i in range(k) if mask >> i & 1]
        z = _cramer([[g[i][j] for j in s] for i in s], [b[i] for i in s])
        feas = z[0] > 0
        for zi in z[1:]:
            feas = feas & (zi > 0)
        obj = yy - sum(b[i] * zi for i, zi in zip(s, z))  # residual of the least squares on the support
        better = feas & (obj < best)
        best = torch.where(better, obj, best)
        for i in range(k):
            w_best[i] = torch.where(better, z[s.index(i)] if i in s else torch.zeros((), dtype=yy.dtype), w_best[i])
    return torch.stack(w_best, -1), best.clamp_min(0)


def _cramer(g, b):
    """Solve g z = b (1x1, 2x2, 3x3, symmetric, entries as broadcastable tensors) elementwise; singular
    systems give NaN, never feasible."""
    k = len(b)
    if k == 1:
        return [b[0] / g[0][0]]
    nan = torch.tensor(torch.nan, dtype=b[0].dtype)
    if k == 2:
        a, c, d = g[0][0], g[0][1], g[1][1]
        det = a * d - c * c
        det = torch.where(det > 1e-12 * a * d, det, nan)
        return [(d * b[0] - c * b[1]) / det, (a * b[1] - c * b[0]) / det]
    m = g
    c00 = m[1][1] * m[2][2] - m[1][2] * m[2][1]
    c01 = m[1][2] * m[2][0] - m[1][0] * m[2][2]
    c02 = m[1][0] * m[2][1] - m[1][1] * m[2][0]
    c11 = m[0][0] * m[2][2] - m[0][2] * m[2][0]
    c12 = m[0][1] * m[2][0] - m[0][0] * m[2][1]
    c22 = m[0][0] * m[1][1] - m[0][1] * m[1][0]
    det = m[0][0] * c00 + m[0][1] * c01 + m[0][2] * c02
    det = torch.where(det > 1e-12 * m[0][0] * m[1][1] * m[2][2], det, nan)
    # symmetric g: the adjugate is the cofactor matrix
    return [(c00 * b[0] + c01 * b[1] + c02 * b[2]) / det,
            (c01 * b[0] + c11 * b[1] + c12 * b[2]) / det,
            (c02 * b[0] + c12 * b[1] + c22 * b[2]) / det]
