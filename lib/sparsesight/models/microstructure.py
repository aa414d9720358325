"""White-matter microstructure from DW-MRI (Rensonnet, Adam & Macq, ICML IMLH 2021, seed 002).

Per voxel, K = 2 crossing axon populations with orientations u_k (pre-estimated, or given), volume fractions
ν_k, axon radius index r_k and intra-axonal fraction f_k; plus a free-water atom. Three estimators:

- fingerprinting (Section 3.2, eqs. 3-4): the best of N_1·N_2 small NNLS problems, one fingerprint per
  sub-dictionary C^k (and the free-water atom);
- fully-learned (Section 3.3, Fig. 2b): an MLP from the normalised signal y to (ν, r, f);
- hybrid (Section 3.4, Fig. 2a): one NNLS over the whole dictionary D = [C^1 C^2 fw] (eq. 5), then split MLPs,
  one per sub-vector w_k, and a joint MLP on their concatenation.

The dictionary for the orientations of a voxel is never built atom by atom: every fingerprint is
f · intra(r) + (1 - f) · extra(f) (data/diffusion/), so D = Φ S with a small basis Φ (the 34 intra- and 23
extra-axonal signals per population and free water, Q = 115 columns at the paper's grid) and a fixed 2-sparse
S. NNLS and fingerprinting work on Φ^T Φ and Φ^T y only (ops/nnls.FactoredGram).

The nn.Module `Microstructure` holds the two networks and the dictionary's definition (protocol, (r, f) grid);
`estimate(model, y, u, method)` runs any method; `interpret(...)` gives the named outputs (NNLS weights and the
(r, f) of the chosen fingerprints, sparsity |w|_0, residual, activations of the split/joint layers).
The model, its factored dictionary and the three estimators stay in one file (about 400 lines): they share the
basis layout and decode the same targets; training is training/microstructure.py, figures explain/.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from scipy.linalg import blas
from threadpoolctl import threadpool_limits
from torch import nn

from ..data import diffusion as dif
from ..errors import InvalidInput
from ..ops.nnls import FactoredGram, nnls_gram, nnls_small

K = 2  # axon populations per voxel
METHODS = ("fingerprinting", "mlp", "hybrid")
PARAMS = ("nu", "r", "f")
R_SCALE = 7.0  # µm: network targets are r / R_SCALE, ν and f as they are


def default_config() -> dict:
    """The paper's dictionary (HCP MGH protocol, N = 782 per population) and networks sized for a CPU
    (the paper's: 3,600 / 1,700 hidden units, 3e6 / 4.6e5 parameters, Table 1)."""
    return {
        "protocol": dif.hcp_mgh_protocol().to_config(),
        "grid": dif.paper_grid().to_config(),
        "free_water": True,
        "extra_axonal": "tortuosity",  # or "mc" (data/diffusion/extra_axonal.py)
        "mlp_hidden": [512, 256, 256],
        "split_hidden": [256, 128],
        "joint_hidden": [256, 128],
        "dropout_mlp": 0.05,  # Table 1
        "dropout_hybrid": 0.1,  # Table 1
    }


def _mlp(sizes: list[int], dropout: float, last_relu: bool = True) -> nn.Sequential:
    """fc -> ReLU -> Dropout per layer (Fig. 2: ReLU after every fc layer; dropout in every layer, Section 3.3)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if last_relu or i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class FullyLearnedMLP(nn.Module):
    """Fig. 2b: y (M) -> hidden fc layers -> (ν_k, r_k, f_k) for k = 1..K."""

    def __init__(self, m: int, hidden: list[int], dropout: float):
        super().__init__()
        self.body = _mlp([m, *hidden], dropout)
        self.head = nn.Linear(hidden[-1], 3 * K)

    def forward(self, y, activations: dict | None = None):
        h = y
        for i, layer in enumerate(self.body):
            h = layer(h)
            if activations is not None and isinstance(layer, nn.ReLU):
                activations[f"mlp/layer{i // 3 + 1}"] = h.detach()
        return self.head(h)


class HybridNet(nn.Module):
    """Fig. 2a: NNLS weights w = [w_1 .. w_K, w_fw] -> split MLP per w_k (independent branches) -> joint MLP on
    the concatenated branch outputs (and w_fw) -> (ν_k, r_k, f_k)."""

    def __init__(self, n: int, split_hidden: list[int], joint_hidden: list[int], dropout: float,
                 free_water: bool):
        super().__init__()
        self.n = n
        self.free_water = free_water
        self.split = nn.ModuleList([_mlp([n, *split_hidden], dropout) for _ in range(K)])
        self.joint = _mlp([K * split_hidden[-1] + int(free_water), *joint_hidden], dropout)
        self.head = nn.Linear(joint_hidden[-1], 3 * K)

    def forward(self, w, activations: dict | None = None):
        hs = []
        for k, branch in enumerate(self.split):
            h = w[:, k * self.n:(k + 1) * self.n]
            relu = 0
            for layer in branch:  # type: ignore[attr-defined]  # (an nn.Sequential)
                h = layer(h)
                if activations is not None and isinstance(layer, nn.ReLU):
                    relu += 1
                    activations[f"split{k + 1}/layer{relu}"] = h.detach()
            hs.append(h)
        if activations is not None:
            activations["split/last"] = torch.cat(hs, 1).detach()
        h = torch.cat(hs + ([w[:, K * self.n:]] if self.free_water else []), 1)
        relu = 0
        for layer in self.joint:
            h = layer(h)
            if activations is not None and isinstance(layer, nn.ReLU):
                relu += 1
                activations[f"joint/layer{relu}"] = h.detach()
        return self.head(h)


class Microstructure(nn.Module):
    """Both networks plus the dictionary's definition; built by name from its config (sparsesight.models)."""

    def __init__(self, protocol: dict | None = None, grid: dict | None = None, free_water: bool = True,
                 mlp_hidden=(512, 256, 256), split_hidden=(256, 128), joint_hidden=(256, 128),
                 dropout_mlp: float = 0.05, dropout_hybrid: float = 0.1, extra_axonal: str | None = None):
        super().__init__()
        self.protocol = dif.Protocol.from_config(protocol) if protocol else dif.hcp_mgh_protocol()
        g = grid or dif.paper_grid().to_config()
        self.grid = dif.Grid(tuple(g["radii_um"]), tuple(g["fractions"]))
        self.free_water = bool(free_water)
        # the dictionary's extra-axonal law (data/diffusion/extra_axonal.py); a config without it: tortuosity
        self.extra_law = dif.extra_law(extra_axonal)
        self.config = {"protocol": self.protocol.to_config(), "grid": self.grid.to_config(),
                       "free_water": self.free_water, "extra_axonal": self.extra_law.name, "mlp_hidden": list(mlp_hidden),
                       "split_hidden": list(split_hidden), "joint_hidden": list(joint_hidden),
                       "dropout_mlp": dropout_mlp, "dropout_hybrid": dropout_hybrid}
        self.mlp = FullyLearnedMLP(self.protocol.m, list(mlp_hidden), dropout_mlp)
        self.hybrid = HybridNet(self.grid.n, list(split_hidden), list(joint_hidden), dropout_hybrid, self.free_water)
        self._cache: dict = {}

    @property
    def n_atoms(self) -> int:
        return K * self.grid.n + int(self.free_water)

    def interpret(self, y: np.ndarray, u: np.ndarray, device="cpu") -> dict:
        """The hybrid's named interpretable outputs for voxels y (B, M) with orientations u (B, K, 3): see the
        module function `interpret`."""
        return interpret(self, y, u, device)

    def atom_table(self) -> list[dict]:
        """(population, r, f) of every column of D (the free-water atom last)."""
        rows = [{"population": k + 1, "r_um": float(r), "f": float(f)}
                for k in range(K) for r, f in zip(self.grid.r_of_atom, self.grid.f_of_atom)]
        if self.free_water:
            rows.append({"population": "free water", "r_um": None, "f": None})
        return rows


# ------------------------------------------------------------------------------------------------ dictionary
def basis_layout(grid: dif.Grid, free_water: bool) -> dict:
    """Columns of Φ = [I_1 E_1 I_2 E_2 (fw)] and the 2-sparse S with D = Φ S: atom (k, r_i, f_j) is
    f_j · I_k[:, i] + (1 - f_j) · E_k[:, j]; "grid" the (I_k, E_k) blocks of every population (FactoredGram)."""
    nr, nf = len(grid.radii_um), len(grid.fractions)
    ir = np.repeat(np.arange(nr), nf)
    jf = np.tile(np.arange(nf), nr)
    fv = np.asarray(grid.fractions, dtype=np.float64)[jf]
    ia, ib, ca, cb, blocks = [], [], [], [], []
    for k in range(K):
        off = k * (nr + nf)
        blocks.append((off, nr, off + nr, nf))
        ia.append(off + ir)
        ib.append(off + nr + jf)
        ca.append(fv)
        cb.append(1 - fv)
    q = K * (nr + nf)
    if free_water:
        ia.append(np.array([q]))
        ib.append(np.array([q]))
        ca.append(np.array([1.0]))
        cb.append(np.array([0.0]))
        q += 1
    return {"ia": np.concatenate(ia), "ib": np.concatenate(ib), "ca": np.concatenate(ca),
            "cb": np.concatenate(cb), "q": q, "grid": blocks}


def basis_t(protocol: dif.Protocol, grid: dif.Grid, u: np.ndarray, free_water: bool = True,
            log_perp: np.ndarray | None = None, law: dif.ExtraAxonalLaw = dif.TORTUOSITY) -> np.ndarray:
    """Φᵀ for each voxel's orientations u (B, K, 3): (B, Q, M) float64, rows as the columns in basis_layout, each
    contiguous over the measurements; extra-axonal rows by `law`."""
    u = np.asarray(u, dtype=np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-12)
    lp = dif.intra_log_perp_table(protocol, grid.radii_um) if log_perp is None else log_perp
    nr, nf = len(grid.radii_um), len(grid.fractions)
    phi_t = np.empty((len(u), K * (nr + nf) + int(free_water), protocol.m))
    for k in range(K):  # each block written in place: no per-population copies, no concatenation
        c2 = dif.cos2_angles(protocol, u[:, k])  # (B, M)
        o = k * (nr + nf)
        dif.intra_signal(protocol, c2, lp, out=phi_t[:, o:o + nr])
        dif.extra_signal(protocol, c2, grid.fractions, out=phi_t[:, o + nr:o + nr + nf], law=law)
    if free_water:
        phi_t[:, -1] = dif.free_water_signal(protocol)
    return phi_t


def basis(protocol: dif.Protocol, grid: dif.Grid, u: np.ndarray, free_water: bool = True,
          log_perp: np.ndarray | None = None, law: dif.ExtraAxonalLaw = dif.TORTUOSITY) -> torch.Tensor:
    """Φ for each voxel's orientations u (B, K, 3): (B, M, Q) float64 (a view of basis_t's Φᵀ)."""
    return torch.from_numpy(basis_t(protocol, grid, u, free_water, log_perp, law)).transpose(1, 2)


def _measured_rows(model: Microstructure, protocol: dif.Protocol) -> tuple[dif.Protocol, np.ndarray, np.ndarray]:
    """(the protocol with one of its b = 0 volumes, the mask of the others, ln E⊥ on the kept volumes), built on
    demand per protocol hash. Every column of Φ is exactly 1 at b = 0 (no gradient), so the other b = 0 rows
    enter the Gram as n · 11^T and Φ^T y as their sum: they need no building (7 % of HCP MGH's rows)."""
    key = ("rows", protocol.hash)  # the dictionary of the user's protocol, cached by its hash
    if key not in model._cache:
        model._cache.clear()
        merged = protocol.bvals == 0
        merged[np.argmax(merged)] = False  # one stays: a protocol needs its b = 0
        kept = protocol.subset(np.flatnonzero(~merged)) if merged.any() else protocol
        model._cache[key] = (kept, merged, dif.intra_log_perp_table(kept, model.grid.radii_um))
    return model._cache[key]


def _gram(phi_t: np.ndarray, out: np.ndarray) -> None:
    """out[i] = Φ_iᵀ Φ_i from Φᵀ (B, Q, M) by BLAS syrk (one triangle: half the flops of a matrix product), then
    mirrored."""
    for i in range(len(phi_t)):
        # phi_t[i].T is Φ in Fortran order: syrk's AᵀA (trans=1) is ΦᵀΦ; its lower triangle, written through
        # the Fortran view out[i].T, is the upper triangle of out[i]
        c = blas.dsyrk(1.0, phi_t[i].T, c=out[i].T, trans=1, lower=1, overwrite_c=1)
        if not np.shares_memory(c, out[i]):  # f2py copied: keep its result
            out[i] = c.T
    np.copyto(out, out.transpose(0, 2, 1), where=np.tri(out.shape[-1], k=-1, dtype=bool))


def _problem(model: Microstructure, y: np.ndarray, u: np.ndarray, protocol: dif.Protocol | None = None):
    """(FactoredGram of D^T D, Φ^T y, ||y||²) for a batch of voxels. Φ is built and reduced GRAM_CHUNK voxels at
    a time and never kept: its Gram is all that NNLS and fingerprinting need."""
    kept, merged, lp = _measured_rows(model, protocol or model.protocol)
    lay = basis_layout(model.grid, model.free_water)
    y = np.asarray(y, dtype=np.float64)
    yk = np.ascontiguousarray(y[:, ~merged])
    h = np.empty((len(y), lay["q"], lay["q"]))
    aty = np.empty((len(y), lay["q"]))
    # one BLAS thread: each product is small (Q x M), and threads made it 2x slower on 2 cores; the parallelism
    # is over voxel chunks, one process per core (runners/microstructure.py)
    with threadpool_limits(1, user_api="blas"):
        for s in range(0, len(y), GRAM_CHUNK):
            phi_t = basis_t(kept, model.grid, u[s:s + GRAM_CHUNK], model.free_water, lp, model.extra_law)
            _gram(phi_t, h[s:s + GRAM_CHUNK])
            np.matmul(phi_t, yk[s:s + GRAM_CHUNK, :, None], out=aty[s:s + GRAM_CHUNK, :, None])
    h += merged.sum()  # the merged b = 0 rows: n · 11^T
    aty += y[:, merged].sum(1, keepdims=True)
    yt = torch.from_numpy(y)
    return (FactoredGram(torch.from_numpy(h), lay["ia"], lay["ca"], lay["ib"], lay["cb"], lay["grid"]),
            torch.from_numpy(aty), (yt * yt).sum(1))


#: voxels whose Φᵀ (GRAM_CHUNK, Q, M) is built and reduced to its Gram at once: small enough to stay in the CPU's
#: caches between the two (float64, M = 552, Q = 115: 8 MB). Measured on that protocol, one thread, the whole
#: _problem (basis, syrk Gram, Φᵀy): 0.45 ms/voxel at 8-16 voxels, 0.47 at 4 and 32, 0.53 at 64, 0.68 at 256
GRAM_CHUNK = 16


#: voxels per NNLS batch: their H (chunk, Q, Q) in float64 and the solver's state (Φ is reduced GRAM_CHUNK voxels at
#: a time). Recorded (bench microstructure_scale --parts nnls_chunks: HCP-size protocol, M = 288, the paper's
#: dictionary, one thread): 0.80 ms/voxel at 2048, 0.63 at 1024, 0.65 at 512, 0.62 at 256, 0.69 at 128 (runs at 256,
#: 512 and 1024 overlap; 256 holds a quarter of the memory of 1024). The residual is the same
#: at every size; the weights of some voxels whose optimum is not unique (nearly collinear small-radius atoms)
#: follow the round-off, which the batch's padding changes
NNLS_CHUNK = 256


def nnls_weights(model: Microstructure, y: np.ndarray, u: np.ndarray, protocol: dif.Protocol | None = None,
                 chunk: int = NNLS_CHUNK, progress: Callable[[int, int], None] | None = None) -> dict:
    """First stage of the hybrid (eq. 5): ŵ = argmin_{w >= 0} ||y - D w||² over the whole dictionary, per voxel.
    `chunk` voxels at a time (their Φ, H and solver state: memory in proportion, see NNLS_CHUNK).

    y (B, M) normalised signals, u (B, K, 3). Returns {"w" (B, N_tot) float32, "residual" (B,) relative RMS
    ||y - D ŵ|| / ||y||, "sparsity" (B,) |ŵ|_0}.
    """
    y = np.asarray(y, dtype=np.float64)
    out_w = np.zeros((len(y), model.n_atoms), dtype=np.float32)
    res = np.zeros(len(y), dtype=np.float32)
    for s in range(0, len(y), chunk):
        e = min(s + chunk, len(y))
        with torch.inference_mode():  # no autograd bookkeeping: the solver's many small steps run ~10 % faster
            op, aty, yy = _problem(model, y[s:e], u[s:e], protocol)
            w, _ = nnls_gram(op, op.apply_st(aty[..., None])[..., 0])
            # residual through the Gram: ||y - Φ v||² = ||y||² - 2 v·Φ^T y + v^T H v, v = S w
            v = op.basis_coefficients(*_sparse(w, w > 0))
            r2 = yy - 2 * (v * aty).sum(1) + (v * (op.h @ v[..., None])[..., 0]).sum(1)
            res[s:e] = (r2.clamp_min(0).sqrt() / yy.sqrt().clamp_min(1e-12)).numpy()
            out_w[s:e] = w.numpy()
        if progress is not None:
            progress(e, len(y))
    return {"w": out_w, "residual": res, "sparsity": (out_w > 0).sum(1).astype(np.int32)}


def _sparse(w: torch.Tensor, nz: torch.Tensor):
    p = max(int(nz.sum(1).max()), 1)
    order = torch.argsort((~nz).to(torch.int8), dim=1, stable=True)[:, :p]
    val = torch.gather(w, 1, order) * torch.gather(nz, 1, order)
    return order, val


def fingerprint(model: Microstructure, y: np.ndarray, u: np.ndarray, protocol: dif.Protocol | None = None,
                max_pairs: int = 4_000_000, progress: Callable[[int, int], None] | None = None) -> dict:
    """Dictionary fingerprinting (eqs. 3-4): for every pair (j_1, j_2) of fingerprints of C^1 and C^2 (plus the
    free-water atom) solve the K(+1)-variable NNLS exactly and keep the pair of smallest residual.

    Returns {"j" (B, K) chosen atoms, "w" (B, K+fw) their weights, "residual" (B,) relative RMS}.
    """
    y = np.asarray(y, dtype=np.float64)
    n = model.grid.n
    lay = basis_layout(model.grid, model.free_water)
    per = max(1, max_pairs // (n * n))
    j_out = np.zeros((len(y), K), dtype=np.int64)
    w_out = np.zeros((len(y), K + int(model.free_water)), dtype=np.float64)
    res = np.zeros(len(y), dtype=np.float32)
    for s in range(0, len(y), per):
        e = min(s + per, len(y))
        op, aty, yy = _problem(model, y[s:e], u[s:e], protocol)
        b = op.apply_st(aty[..., None])[..., 0]  # D^T y (B, N_tot)
        h = op.h
        q2 = lay["q"] - int(model.free_water)  # basis columns of the populations
        # D^T D restricted to the blocks that eq. 4 needs: <A_j1, A_j2>, ||A_j||², <A_j, fw>
        st_h = op.apply_st(h)  # (B, N_tot, Q) = S^T H
        cross = op.apply_st(st_h[:, :n].transpose(1, 2))  # (B, N_tot, n) = S^T H S[:, pop1]
        g12 = cross[:, n:2 * n].transpose(1, 2)  # (B, n, n): rows pop1, cols pop2
        diag = _gram_diag(op, h)
        g11, g22 = diag[:, :n], diag[:, n:2 * n]
        kk = K + int(model.free_water)
        bsz = e - s
        # the Gram and A^T y of every pair as broadcastable (B, n, n) views: nothing of size n² x K² is built
        g = [[g11[:, :, None], g12], [g12, g22[:, None, :]]]
        rhs = [b[:, :n, None], b[:, None, n:2 * n]]
        if model.free_water:
            fw = st_h[:, :, q2]  # <A_j, fw> (B, N_tot)
            g[0].append(fw[:, :n, None])
            g[1].append(fw[:, None, n:2 * n])
            g.append([g[0][2], g[1][2], h[:, q2, q2][:, None, None]])
            rhs.append(b[:, 2 * n, None, None])
        w, r2 = nnls_small(g, rhs, yy[:, None, None])
        best = r2.reshape(bsz, -1).argmin(1)
        j_out[s:e, 0] = (best // n).numpy()
        j_out[s:e, 1] = (best % n).numpy()
        w_out[s:e] = w.reshape(bsz, n * n, kk)[torch.arange(bsz), best].numpy()
        res[s:e] = (r2.reshape(bsz, -1)[torch.arange(bsz), best].sqrt() / yy.sqrt().clamp_min(1e-12)).numpy()
        if progress is not None:
            progress(e, len(y))
    return {"j": j_out, "w": w_out, "residual": res}


def _gram_diag(op: FactoredGram, h: torch.Tensor) -> torch.Tensor:
    """||A_j||² = ca² H[ia, ia] + 2 ca cb H[ia, ib] + cb² H[ib, ib] for every atom, (B, N_tot)."""
    d = torch.diagonal(h, dim1=1, dim2=2)
    hab = h[:, op.ia, op.ib]
    return op.ca**2 * d[:, op.ia] + 2 * op.ca * op.cb * hab + op.cb**2 * d[:, op.ib]


# ------------------------------------------------------------------------------------------------ estimates
def targets(nu: np.ndarray, r: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Network targets (B, 3K): (ν_k, r_k / 7 µm, f_k) per population."""
    return np.stack([nu, r / R_SCALE, f], -1).reshape(len(nu), -1).astype(np.float32)


def project_capped_simplex(v: np.ndarray, cap) -> np.ndarray:
    """Euclidean projection of each row of v (B, K) onto {x >= 0, Σ x <= cap} (cap scalar or (B,)).

    Rows whose positive part already sums to at most cap keep it; the others go onto the face Σ x = cap by the
    sort-based projection (Held et al. 1974; Duchi et al. 2008): x = max(v - θ, 0) with θ the threshold that
    makes the sum cap."""
    v = np.asarray(v, dtype=np.float64)
    cap = np.broadcast_to(np.maximum(np.asarray(cap, dtype=np.float64), 0.0), (len(v),))
    pos = np.maximum(v, 0.0)
    over = pos.sum(1) > cap
    if over.any():
        u = -np.sort(-v[over], axis=1)  # descending
        css = np.cumsum(u, 1) - cap[over][:, None]
        k = np.arange(1, v.shape[1] + 1)
        rho = (u - css / k > 0).sum(1)  # >= 1: the largest component always qualifies
        theta = css[np.arange(len(u)), rho - 1] / rho
        pos[over] = np.maximum(v[over] - theta[:, None], 0.0)
    return pos


def decode(out: np.ndarray, r_range: tuple[float, float] = (0.1, 10.0), nu_fw: np.ndarray | None = None) -> dict:
    """Network outputs (B, 3K) -> {"nu", "r" (µm), "f"} each (B, K): physically valid by construction.

    ν: projected onto the simplex {ν_k >= 0, Σ ν_k <= 1 - ν_fw} (ν_fw from the NNLS weights for the hybrid, 0 for
    the MLP), so ν_1 + ν_2 + ν_fw <= 1, not each clipped on its own; r: inside the dictionary's radius range
    `r_range`; f in [0, 1]."""
    o = out.reshape(len(out), K, 3)
    cap = 1.0 if nu_fw is None else 1.0 - np.asarray(nu_fw, dtype=np.float64)
    return {"nu": project_capped_simplex(o[..., 0], cap), "r": (o[..., 1] * R_SCALE).clip(*r_range),
            "f": o[..., 2].clip(0, 1)}


def _net_forward(net: nn.Module, x: np.ndarray, device="cpu", chunk: int = 65536,
                 activations: dict | None = None) -> np.ndarray:
    net = net.to(device).eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            xt = torch.as_tensor(x[s:s + chunk], dtype=torch.float32, device=device)
            outs.append(net(xt, activations).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 3 * K), np.float32)


def estimate(model: Microstructure, y: np.ndarray, u: np.ndarray | None = None, method: str = "hybrid",
             protocol: dif.Protocol | None = None, device="cpu", activations: dict | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """(ν_k, r_k, f_k) of each voxel by `method` (fingerprinting | mlp | hybrid).

    y (B, M) signals normalised by their b=0 mean, in the model's protocol (or `protocol`, for the
    dictionary methods); u (B, K, 3) orientations (not used by the MLP). Returns {"nu", "r", "f"} (B, K) and
    "nu_fw" (B,) with ν_1 + ν_2 + ν_fw <= 1 and r inside the grid's radii (decode; the MLP's ν_fw is the share
    it leaves, 1 - ν_1 - ν_2); for the dictionary methods "residual", "sparsity", and "w" (hybrid: NNLS weights
    (B, N_tot); fingerprinting: "j" the chosen atoms), "seconds" (wall) and "cpu_seconds" (this process' CPU time).
    """
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    t0, c0 = time.perf_counter(), time.process_time()
    y = np.asarray(y, dtype=np.float64)
    if method != "mlp" and u is None:
        raise InvalidInput(f"method {method} needs the populations' orientations")
    r_range = (float(min(model.grid.radii_um)), float(max(model.grid.radii_um)))
    if method == "mlp":
        out = decode(_net_forward(model.mlp, y, device, activations=activations), r_range)
        out["nu_fw"] = np.clip(1.0 - out["nu"].sum(1), 0.0, 1.0)  # the share the MLP leaves to free water
    elif method == "fingerprinting":
        assert u is not None
        fp = fingerprint(model, y, u, protocol, progress=progress)
        w = fp["w"]
        tot = np.maximum(w.sum(1, keepdims=True), 1e-12)
        r_atoms, f_atoms = model.grid.r_of_atom, model.grid.f_of_atom
        out = {"nu": w[:, :K] / tot, "r": r_atoms[fp["j"]], "f": f_atoms[fp["j"]],
               "nu_fw": (w[:, K] / tot[:, 0]) if model.free_water else np.zeros(len(y)),
               "residual": fp["residual"], "sparsity": (w > 0).sum(1).astype(np.int32), "j": fp["j"],
               "w_pair": w}
    else:
        assert u is not None
        nw = nnls_weights(model, y, u, protocol, progress=progress)
        tot = np.maximum(nw["w"].sum(1), 1e-12)
        nu_fw = (nw["w"][:, -1] / tot) if model.free_water else np.zeros(len(y))
        out = decode(_net_forward(model.hybrid, nw["w"], device, activations=activations), r_range, nu_fw)
        out.update({"nu_fw": nu_fw, "residual": nw["residual"], "sparsity": nw["sparsity"], "w": nw["w"]})
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - c0  # CPU time of this process: less inflated by a shared CPU
    return out


def chosen_fingerprints(model: Microstructure, w: np.ndarray, min_share: float = 0.01) -> list[list[dict]]:
    """Interpretability of the hybrid's first stage: per voxel, the fingerprints with non-zero NNLS weight
    (at least `min_share` of the voxel's total) and their (population, r, f, weight), largest first."""
    table = model.atom_table()
    out = []
    for row in np.atleast_2d(w):
        tot = max(float(row.sum()), 1e-12)
        idx = np.nonzero(row > min_share * tot)[0]
        idx = idx[np.argsort(-row[idx])]
        out.append([{**table[j], "atom": int(j), "weight": float(row[j])} for j in idx])
    return out


def weighted_atom_parameters(model: Microstructure, w: np.ndarray) -> dict:
    """The NNLS weights' own estimates, Σ_j w_j r_j / Σ_j w_j per population (and f likewise): what the
    first stage alone says, before the networks."""
    n = model.grid.n
    out = {}
    for name, vals in (("r", model.grid.r_of_atom), ("f", model.grid.f_of_atom)):
        cols = []
        for k in range(K):
            wk = w[:, k * n:(k + 1) * n]
            cols.append((wk * vals).sum(1) / np.maximum(wk.sum(1), 1e-12))
        out[name] = np.stack(cols, 1)
    return out


def interpret(model: Microstructure, y: np.ndarray, u: np.ndarray, device="cpu") -> dict:
    """Named interpretable outputs of the hybrid on a batch of voxels:

    "w" (B, N_tot) NNLS weights; "sparsity" (B,) |w|_0; "residual" (B,) relative RMS of y - D w;
    "weighted_r", "weighted_f" (B, K) weight-averaged (r, f) of the chosen fingerprints; "chosen" the
    fingerprints per voxel (chosen_fingerprints); "activations" {layer: (B, units)} of the split branches
    (first and last layer) and the joint MLP (Fig. 4); "nu", "r", "f" the predictions.
    """
    acts: dict = {}
    est = estimate(model, y, u, "hybrid", device=device, activations=acts)
    wp = weighted_atom_parameters(model, est["w"])
    return {**est, "weighted_r": wp["r"], "weighted_f": wp["f"], "chosen": chosen_fingerprints(model, est["w"]),
            "activations": {k: v.cpu().numpy() for k, v in acts.items()}}


def mae(est: dict, truth: dict) -> dict:
    """Mean absolute errors of ν, r (µm), f over populations and voxels."""
    return {p: float(np.mean(np.abs(np.asarray(est[p]) - np.asarray(truth[p])))) for p in PARAMS}


def n_parameters(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


__all__ = ["Microstructure", "default_config", "estimate", "fingerprint", "nnls_weights", "interpret", "mae",
           "METHODS"]
