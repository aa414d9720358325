"""The acquisition: PGSE protocol (b-values, directions, gradient timing), the HCP MGH-USC protocol and
FSL bval/bvec files in DIPY's conventions."""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Protocol:
    """A PGSE protocol: b-values (s/mm², FSL/DIPY units), unit gradient directions, pulse timing (s).

    Every measurement shares Δ and δ (as in the HCP MGH protocol); the gradient strength of each follows
    from b = γ² G² δ² (Δ - δ/3).
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    big_delta: float = HCP_MGH_BIG_DELTA
    small_delta: float = HCP_MGH_SMALL_DELTA
    name: str = "custom"

    def __post_init__(self):
        self.bvals = np.asarray(self.bvals, dtype=np.float64).reshape(-1)
        bvecs = np.asarray(self.bvecs, dtype=np.float64)
        if bvecs.ndim == 2 and bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
            bvecs = bvecs.T  # FSL stores 3 rows
        self.bvecs = bvecs
        check_gradients(self.bvals, self.bvecs)
        if not (0 < self.small_delta <= self.big_delta):
            raise InvalidInput(f"pulse timing must satisfy 0 < δ <= Δ; got δ={self.small_delta} s, "
                               f"Δ={self.big_delta} s")
        n = np.linalg.norm(self.bvecs, axis=1, keepdims=True)
        self.bvecs = np.where(n > 1e-6, self.bvecs / np.maximum(n, 1e-12), 0.0)

    @property
    def m(self) -> int:
        return len(self.bvals)

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
        d, big = self.small_delta, self.big_delta
        return np.sqrt(np.maximum(self.b_si, 0.0) / (GAMMA**2 * d**2 * (big - d / 3.0)))

    def shells(self, tol: float = 100.0) -> np.ndarray:
        """The distinct b-values (rounded to `tol`)."""
        return np.unique(np.round(self.bvals / tol) * tol)

    def gtab(self):
        """DIPY GradientTable (with Δ, δ in ms as DIPY stores them)."""
        from dipy.core.gradients import gradient_table

        return gradient_table(self.bvals, bvecs=self.bvecs, big_delta=self.big_delta * 1e3,
                              small_delta=self.small_delta * 1e3, b0_threshold=B0_THRESHOLD)

    def subset(self, idx) -> "Protocol":
        idx = np.asarray(idx)
        return Protocol(self.bvals[idx], self.bvecs[idx], self.big_delta, self.small_delta, self.name + "-subset")

    def to_config(self) -> dict:
        return {"bvals": [float(b) for b in self.bvals], "bvecs": np.round(self.bvecs, 6).tolist(),
                "big_delta": float(self.big_delta), "small_delta": float(self.small_delta), "name": self.name}

    @classmethod
    def from_config(cls, c: dict) -> "Protocol":
        return cls(np.asarray(c["bvals"]), np.asarray(c["bvecs"]), float(c["big_delta"]), float(c["small_delta"]),
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
    norms = np.linalg.norm(bvecs[bvals > B0_THRESHOLD], axis=1)
    if (np.abs(norms - 1.0) > 0.1).any():
        raise InvalidInput("every diffusion-weighted volume needs a unit gradient direction in bvec")


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


def read_bvals_bvecs(bval_path, bvec_path, big_delta: float = HCP_MGH_BIG_DELTA,
                     small_delta: float = HCP_MGH_SMALL_DELTA) -> Protocol:
    """FSL bval/bvec files -> Protocol (read by dipy.io.read_bvals_bvecs)."""
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
