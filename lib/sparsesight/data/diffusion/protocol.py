"""The acquisition: PGSE protocol (b-values, directions, gradient timing), the HCP MGH-USC protocol and
FSL bval/bvec files in DIPY's conventions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InvalidInput

GAMMA = 2.6752218744e8  # proton gyromagnetic ratio, rad s^-1 T^-1
B0_THRESHOLD = 50.0  # s/mm²: volumes at or below are b = 0 (DIPY's default)

# HCP MGH-USC Adult Diffusion protocol (Setsompop et al. 2013), as in the authors' fingerprinting dictionary
HCP_MGH_SHELLS = ((0.0, 40), (1000.0, 64), (3000.0, 64), (5000.0, 128), (10000.0, 256))
HCP_MGH_BIG_DELTA = 21.8e-3  # s
HCP_MGH_SMALL_DELTA = 12.9e-3  # s
HCP_MGH_TE = 57e-3  # s (not used by the model: T2 weighting cancels in S/S0)


def hemisphere_directions(n: int, twist: float = 0.0) -> np.ndarray:
    """n unit vectors spread evenly over the half-sphere z >= 0 (Fibonacci spiral), (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # uniform in z over (0, 1]: equal areas
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i + twist
    s = np.sqrt(1.0 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], 1)


#: the strongest diffusion gradient a scanner delivers, T/m: human Connectom 2.0 systems reach 0.5 T/m (clinical
#: 0.04-0.08, HCP MGH Connectom 0.3). A protocol whose b and timing imply more is a unit error (b in s/m²,
#: timing in s read as ms, ...) and is refused with the G it implies.
MAX_GRADIENT = 0.5


def _timing(value, m: int, what: str) -> float | np.ndarray:
    """A pulse timing in s: one number, or one per volume (M,) -> float when every volume shares it."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number (s) or one number per volume") from None
    if arr.size == 1:
        return float(arr[0])
    if arr.size != m:
        raise InvalidInput(f"{what} has {arr.size} values for {m} volumes: give one number or one per volume")
    return float(arr[0]) if np.allclose(arr, arr[0], rtol=0, atol=1e-9) else arr


@dataclass
class Protocol:
    """A PGSE protocol: b-values (s/mm², FSL/DIPY units), unit gradient directions, pulse timing Δ (`big_delta`,
    gradient separation) and δ (`small_delta`, gradient duration) in s.

    Timing is required (there is no default: a protocol with other Δ/δ than assumed moves the radius by
    micrometres). Each is one number shared by every volume, or one number per volume (per-shell timing, as
    `protocol_files.per_shell_timing` expands it). The gradient strength of each volume follows from
    b = γ² G² δ² (Δ - δ/3); a protocol implying G > MAX_GRADIENT is refused as a unit error.
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    big_delta: float | np.ndarray
    small_delta: float | np.ndarray
    name: str = "custom"
    source: dict = field(default_factory=dict, compare=False)  # where it was read from, units detected

    def __post_init__(self):
        self.bvals = np.asarray(self.bvals, dtype=np.float64).reshape(-1)
        bvecs = np.asarray(self.bvecs, dtype=np.float64)
        if bvecs.ndim == 2 and bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
            bvecs = bvecs.T  # FSL stores 3 rows
        self.bvecs = bvecs
        check_gradients(self.bvals, self.bvecs)
        self.big_delta = _timing(self.big_delta, self.m, "Δ (big_delta, gradient separation)")
        self.small_delta = _timing(self.small_delta, self.m, "δ (small_delta, gradient duration)")
        bd, sd = self.big_deltas, self.small_deltas
        if not (np.isfinite(bd).all() and np.isfinite(sd).all() and (sd > 0).all() and (sd <= bd).all()):
            i = int(np.argmax(~((sd > 0) & (sd <= bd)))) if np.isfinite(bd).all() and np.isfinite(sd).all() else 0
            raise InvalidInput(f"pulse timing must satisfy 0 < δ <= Δ; got δ={sd[i]} s, Δ={bd[i]} s (volume {i})")
        n = np.linalg.norm(self.bvecs, axis=1, keepdims=True)
        self.bvecs = np.where(n > 1e-6, self.bvecs / np.maximum(n, 1e-12), 0.0)
        g = self.gradient_strength
        if g.max() > MAX_GRADIENT:
            i = int(g.argmax())
            raise InvalidInput(
                f"b = {self.bvals[i]:g} s/mm² with Δ = {1e3 * bd[i]:g} ms, δ = {1e3 * sd[i]:g} ms implies a gradient "
                f"of {g[i]:.3g} T/m, beyond any scanner ({MAX_GRADIENT} T/m): check the units (b in s/mm², "
                f"timing in s or ms)")

    @property
    def m(self) -> int:
        return len(self.bvals)

    @property
    def big_deltas(self) -> np.ndarray:
        """Δ of every volume (M,), s."""
        return np.broadcast_to(np.asarray(self.big_delta, dtype=np.float64), (self.m,))

    @property
    def small_deltas(self) -> np.ndarray:
        """δ of every volume (M,), s."""
        return np.broadcast_to(np.asarray(self.small_delta, dtype=np.float64), (self.m,))

    @property
    def uniform_timing(self) -> bool:
        return np.ndim(self.big_delta) == 0 and np.ndim(self.small_delta) == 0

    @property
    def b_si(self) -> np.ndarray:
        """b-values in s/m²."""
        return self.bvals * 1e6

    @property
    def b0_mask(self) -> np.ndarray:
        return self.bvals <= B0_THRESHOLD

    @property
    def gradient_strength(self) -> np.ndarray:
        """G (T/m) of each measurement from b = γ² G² δ² (Δ - δ/3)."""
        d, big = self.small_deltas, self.big_deltas
        return np.sqrt(np.maximum(self.b_si, 0.0) / (GAMMA**2 * d**2 * (big - d / 3.0)))

    def shells(self, tol: float = 100.0) -> np.ndarray:
        """The distinct b-values (rounded to `tol`)."""
        return np.unique(np.round(self.bvals / tol) * tol)

    def shell_table(self, tol: float = 100.0) -> list[dict]:
        """Per shell: b (s/mm²), volumes, Δ, δ (ms), G (mT/m) - what the bundle and the model card report."""
        rounded = np.round(self.bvals / tol) * tol
        rows = []
        for b in np.unique(rounded):
            sel = rounded == b
            rows.append({"b": float(b), "volumes": int(sel.sum()),
                         "big_delta_ms": round(float(np.median(self.big_deltas[sel])) * 1e3, 4),
                         "small_delta_ms": round(float(np.median(self.small_deltas[sel])) * 1e3, 4),
                         "G_mT_per_m": round(float(self.gradient_strength[sel].max()) * 1e3, 2)})
        return rows

    @property
    def hash(self) -> str:
        """A short digest of what the signal model depends on: b (to 1 s/mm²), directions (to 1e-4), Δ, δ (to
        1 µs), in the volumes' order. Same hash: the same dictionary, the same trained networks apply."""
        import hashlib

        parts = (np.round(self.bvals).astype(np.int64), np.round(self.bvecs * 1e4).astype(np.int64) + 0,
                 np.round(self.big_deltas * 1e6).astype(np.int64), np.round(self.small_deltas * 1e6).astype(np.int64))
        h = hashlib.sha256()
        for a in parts:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def gtab(self):
        """DIPY GradientTable (with Δ, δ in ms as DIPY stores them; None when they differ between shells)."""
        from dipy.core.gradients import gradient_table

        bd = self.big_delta * 1e3 if self.uniform_timing else None
        sd = self.small_delta * 1e3 if self.uniform_timing else None
        return gradient_table(self.bvals, bvecs=self.bvecs, big_delta=bd, small_delta=sd, b0_threshold=B0_THRESHOLD)

    def subset(self, idx) -> "Protocol":
        idx = np.asarray(idx)
        return Protocol(self.bvals[idx], self.bvecs[idx], self.big_deltas[idx], self.small_deltas[idx],
                        self.name + "-subset")

    def to_config(self) -> dict:
        def t(v):
            return float(v) if np.ndim(v) == 0 else [float(x) for x in v]

        return {"bvals": [float(b) for b in self.bvals], "bvecs": np.round(self.bvecs, 6).tolist(),
                "big_delta": t(self.big_delta), "small_delta": t(self.small_delta), "name": self.name}

    @classmethod
    def from_config(cls, c: dict) -> "Protocol":
        missing = [k for k in ("bvals", "bvecs", "big_delta", "small_delta") if c.get(k) is None]
        if missing:
            raise InvalidInput(f"the protocol lacks {', '.join(missing)} (Δ = big_delta and δ = small_delta in s "
                               f"are required; there is no default timing)")
        return cls(np.asarray(c["bvals"]), np.asarray(c["bvecs"]), c["big_delta"], c["small_delta"],
                   c.get("name", "custom"))


def check_gradients(bvals: np.ndarray, bvecs: np.ndarray, n_volumes: int | None = None) -> None:
    """Refuse gradient tables that cannot describe the image (InvalidInput with the reason)."""
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise InvalidInput(f"bvecs must be 3 x M (FSL) or M x 3; got shape {bvecs.shape}")
    if len(bvals) != len(bvecs):
        raise InvalidInput(f"{len(bvals)} b-values but {len(bvecs)} gradient directions: bval and bvec must list "
                           f"the same volumes")
    if n_volumes is not None and len(bvals) != n_volumes:
        raise InvalidInput(f"the image has {n_volumes} volumes but bval/bvec describe {len(bvals)}: they must "
                           f"list one entry per volume, in the image's order")
    if not (np.isfinite(bvals).all() and np.isfinite(bvecs).all()):
        raise InvalidInput("bval/bvec hold NaN or Inf values")
    if (bvals < 0).any():
        raise InvalidInput("b-values must be >= 0 (s/mm²)")
    if not (bvals <= B0_THRESHOLD).any():
        raise InvalidInput(f"no b = 0 volume (b <= {B0_THRESHOLD:g} s/mm²): the signal cannot be normalised by S0")
    if not (bvals > B0_THRESHOLD).any():
        raise InvalidInput("no diffusion-weighted volume (every b-value is 0)")
    dw = np.nonzero(bvals > B0_THRESHOLD)[0]
    norms = np.linalg.norm(bvecs[dw], axis=1)
    zero = dw[norms < 1e-6]
    if len(zero):
        raise InvalidInput(f"{len(zero)} diffusion-weighted volume(s) have a zero gradient direction in bvec "
                           f"(volumes {zero[:8].tolist()}{' ...' if len(zero) > 8 else ''}): every b > "
                           f"{B0_THRESHOLD:g} s/mm² volume needs a unit direction")
    bad = dw[np.abs(norms - 1.0) > 0.1]
    if len(bad):
        raise InvalidInput(f"every diffusion-weighted volume needs a unit gradient direction in bvec; volumes "
                           f"{bad[:8].tolist()}{' ...' if len(bad) > 8 else ''} have norms "
                           f"{np.round(np.linalg.norm(bvecs[bad[:8]], axis=1), 3).tolist()} (directions within "
                           f"10% of unit length are renormalised; a scaled vector encoding a scaled b is not read)")


def hcp_mgh_protocol(subsample: int = 1) -> Protocol:
    """The HCP MGH-USC protocol, M = 552 (paper, Section 3.1); `subsample` k keeps every k-th volume per shell
    (at least 2 b=0), e.g. k=4 gives M = 138 for fast tests."""
    bvals, bvecs = [], []
    for s, (b, n) in enumerate(HCP_MGH_SHELLS):
        keep = max(n // int(subsample), 2 if b == 0 else 6)
        if b == 0:
            bvals += [0.0] * keep
            bvecs += [[0.0, 0.0, 0.0]] * keep
        else:
            bvals += [b] * keep
            bvecs += hemisphere_directions(keep, twist=0.7 * s).tolist()
    name = "hcp-mgh" if subsample == 1 else f"hcp-mgh/{subsample}"
    return Protocol(np.array(bvals), np.array(bvecs), HCP_MGH_BIG_DELTA, HCP_MGH_SMALL_DELTA, name)


def read_bvals_bvecs(bval_path, bvec_path, big_delta, small_delta) -> Protocol:
    """FSL bval/bvec files -> Protocol (read by dipy.io.read_bvals_bvecs); Δ, δ in s are required (FSL files do
    not hold them; protocol_files.read_protocol reads them from a JSON sidecar)."""
    from dipy.io import read_bvals_bvecs as dipy_read

    try:
        bvals, bvecs = dipy_read(str(bval_path), str(bvec_path))
    except (OSError, IOError, ValueError) as e:
        raise InvalidInput(f"cannot read bval/bvec ({Path(bval_path).name}, {Path(bvec_path).name}): {e}") from None
    return Protocol(bvals, bvecs, big_delta, small_delta, Path(bval_path).stem)


def write_bvals_bvecs(protocol: Protocol, stem) -> tuple[Path, Path]:
    """Write `<stem>.bval` (one row) and `<stem>.bvec` (3 rows), FSL format."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    bval, bvec = Path(f"{stem}.bval"), Path(f"{stem}.bvec")
    np.savetxt(bval, protocol.bvals[None], fmt="%g")
    np.savetxt(bvec, protocol.bvecs.T, fmt="%.6f")
    return bval, bvec
