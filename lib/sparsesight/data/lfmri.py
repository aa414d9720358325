"""Low-field MRI acquisition, simulated retrospectively as in seed 001 (Section 2.4, eq. 1).

y = M F x + e: the centred orthonormal 2D FFT of a slice (ops/kspace.py), scaled by 1/std|F x| so that the noise
level means the same for every slice, a binary mask M and complex Gaussian noise e with E|e_i|^2 = sigma^2
(sigma 0.075-0.30 in the paper). Masks:

* ``lowres``: the centred keep_x x keep_y block of k-space, e.g. 160 of 320 lines in each direction (keep 0.5),
  the low-resolution acquisition of a low-field scanner;
* ``random``: random Cartesian under-sampling of the phase-encoding lines (rows, axis 0) with a fully sampled
  centre, at a given acceleration.

Volumes are handled slice by slice along the last axis (axial slices of (X, Y, Z) images). K-space input (a
complex volume) is accepted as well: its mask is where the samples are non-zero.
Reference images for training and benchmarks are axial slices of the phantom anatomy (data/phantom/, the
MNI152 anatomy shipped with nilearn): nothing is downloaded.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .. import MODALITIES
from ..errors import InvalidInput
from ..ops import kspace

logger = logging.getLogger(__name__)

MASKS = ("lowres", "random")
SIGMA_RANGE = (0.0, 1.0)


def lowres_mask(shape, keep: float = 0.5) -> np.ndarray:
    """Centred Cartesian low-resolution mask: round(keep * n) central lines in each direction (bool (H, W))."""
    if not 0.0 < float(keep) <= 1.0:
        raise InvalidInput(f"'keep' (fraction of k-space lines kept per direction) must be in (0, 1]; got {keep}")
    m = np.zeros(shape, dtype=bool)
    sl = []
    for n in shape:
        k = max(1, int(round(keep * n)))
        lo = n // 2 - k // 2  # the DC sample of the centred FFT is at n // 2
        sl.append(slice(lo, lo + k))
    m[tuple(sl)] = True
    return m


def random_mask(shape, acceleration: float = 4.0, centre: float = 0.08, seed: int = 0) -> np.ndarray:
    """Random Cartesian under-sampling: whole rows (phase-encoding lines), a fully sampled centre of
    round(centre * H) rows and random other rows up to H / acceleration rows in all (bool (H, W))."""
    if not float(acceleration) >= 1.0:
        raise InvalidInput(f"'acceleration' must be >= 1; got {acceleration}")
    h = shape[0]
    n_lines = max(1, int(round(h / float(acceleration))))
    n_centre = min(n_lines, max(1, int(round(centre * h))))
    lo = h // 2 - n_centre // 2
    rows = set(range(lo, lo + n_centre))
    rest = np.array([r for r in range(h) if r not in rows])
    rng = np.random.default_rng(seed)
    rows |= set(rng.choice(rest, size=n_lines - len(rows), replace=False).tolist()) if n_lines > len(rows) else set()
    m = np.zeros(shape, dtype=bool)
    m[sorted(rows)] = True
    return m


def sampling_mask(shape, mask: str = "lowres", keep: float = 0.5, acceleration: float = 4.0,
                  seed: int = 0) -> np.ndarray:
    """The mask named `mask` (see MASKS) for (H, W) slices."""
    if mask == "lowres":
        return lowres_mask(shape, keep)
    if mask == "random":
        return random_mask(shape, acceleration, seed=seed)
    raise InvalidInput(f"unknown mask {mask!r}; choose from {list(MASKS)}")


def check_sigma(sigma) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise InvalidInput(f"'sigma' (k-space noise level) must be a number; got {sigma!r}") from None
    if not SIGMA_RANGE[0] <= s <= SIGMA_RANGE[1]:
        raise InvalidInput(f"'sigma' must be in [{SIGMA_RANGE[0]}, {SIGMA_RANGE[1]}] (the paper uses 0.075-0.30); "
                           f"got {s}")
    return s


def kspace_scale(k: np.ndarray) -> float:
    """std |k| of a fully sampled k-space slice; 1 for an empty slice."""
    s = float(np.std(np.abs(k)))
    return s if s > 0 else 1.0


def simulate(x: np.ndarray, mask: np.ndarray, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Measured data of one slice: y = M (F x / s + e) with s = std|F x| and e complex Gaussian,
    E|e|^2 = sigma^2. Returns (y (H, W) complex64, s); the reference in the same units is x / s."""
    k = kspace.fft2c(torch.as_tensor(np.asarray(x, dtype=np.complex64))).numpy()
    s = kspace_scale(k)
    e = sigma / np.sqrt(2.0) * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    return ((k / s + e) * mask).astype(np.complex64), s


def zero_filled(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A^H y (complex (H, W))."""
    return kspace.adjoint(torch.as_tensor(y), torch.as_tensor(mask)).numpy()


def channel_index(channel) -> int:
    """Index of a modality given by name (FLAIR, T1, T1ce, T2; any case) or number."""
    names = [m.lower() for m in MODALITIES]
    if isinstance(channel, str) and channel.lower() in names:
        return names.index(channel.lower())
    try:
        i = int(channel)
    except (TypeError, ValueError):
        raise InvalidInput(f"unknown channel {channel!r}; choose from {list(MODALITIES)} or 0..3") from None
    if not 0 <= i < len(MODALITIES):
        raise InvalidInput(f"channel index {i} out of range 0..{len(MODALITIES) - 1}")
    return i


def brain_slices(volume: np.ndarray, min_fraction: float = 0.15) -> list[int]:
    """Axial slice indices of (X, Y, Z) where at least `min_fraction` of the pixels are non-zero."""
    frac = (np.abs(volume) > 0).mean(axis=(0, 1))
    return [int(z) for z in np.nonzero(frac >= min_fraction)[0]]


def simulate_volume(volume: np.ndarray, mask: str = "lowres", keep: float = 0.5, acceleration: float = 4.0,
                    sigma: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slice-by-slice acquisition of a real (X, Y, Z) volume.

    Returns k-space (X, Y, Z) complex64 in scaled units, the masks (X, Y, Z) bool and the per-slice scales (Z,)
    (reference slice z in the same units: volume[..., z] / scales[z]). Empty slices give zero k-space.
    """
    sigma = check_sigma(sigma)
    rng = np.random.default_rng(seed)
    shape = volume.shape[:2]
    ks = np.zeros(volume.shape, dtype=np.complex64)
    masks = np.zeros(volume.shape, dtype=bool)
    scales = np.ones(volume.shape[2], dtype=np.float64)
    for z in range(volume.shape[2]):
        m = sampling_mask(shape, mask, keep, acceleration, seed=seed + z)
        masks[..., z] = m
        if np.any(volume[..., z]):
            ks[..., z], scales[z] = simulate(volume[..., z], m, sigma, rng)
    return ks, masks, scales


def kspace_masks(ks: np.ndarray) -> np.ndarray:
    """Sampling masks of measured k-space (X, Y, Z): where a sample is non-zero."""
    if not np.iscomplexobj(ks):
        raise InvalidInput("k-space input must be complex-valued")
    if not np.isfinite(ks).all():
        raise InvalidInput("k-space input has NaN/Inf samples")
    return ks != 0


def reference_slices(seeds, downsample: int = 2, channel="T2", min_fraction: float = 0.3,
                     every: int = 1, noise: bool = False, progress: bool = False) -> np.ndarray:
    """Axial slices (N, H, W) float32 of phantom cases (data/phantom.make_case) with enough brain in them,
    every `every`-th one, scaled to [0, 1] per case. noise=False gives clean references."""
    from .phantom import make_case

    c = channel_index(channel)
    out = []
    for i, seed in enumerate(seeds):
        if progress:
            logger.info("reference slices: case %d/%d (seed %d)", i + 1, len(seeds), seed)
        vol = make_case(int(seed), downsample=downsample, noise=noise).image[..., c]
        vol = vol / max(float(vol.max()), 1e-6)
        for z in brain_slices(vol, min_fraction)[::every]:
            out.append(vol[..., z])
    return np.stack(out).astype(np.float32)
