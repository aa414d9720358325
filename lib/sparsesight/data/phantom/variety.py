"""Variety for off-grid phantoms (`make_case(..., variety=True)`): what a model trained on the standard phantoms
has not seen. Each step is drawn from the case seed's streams, so a varied case is as reproducible as a plain one.

- ``VARIETY``          wider ranges than the plain generator: head size and pose, lesion count and size,
                       contrast jitter, bias-field amplitude;
- ``warp_anatomy``     a smooth random non-linear deformation of the template anatomy (other brains' shapes);
- ``random_grid``      another voxel grid for the finished case: voxel sizes 0.8-1.5 mm in plane, slices up to 3 mm
                       (times the downsample factor of a coarse case)
                       (anisotropic), any of the 48 axis orientations (LPS, sagittal or coronal acquisitions),
                       a field of view cropped to the head with a random margin instead of 240 x 240 x 155;
- ``regrid``           the image (trilinear) and label (nearest) resampled onto that grid.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .fields import random_fourier_field

#: ranges of the varied cases (the plain generator's in brackets)
VARIETY: dict[str, Any] = {
    "max_rot_deg": 12.0,            # (4)
    "scale_xy": (0.86, 1.08),       # head size (0.95-1.05)
    "scale_z": (0.84, 0.98),        # (0.92-0.98)
    "max_shift_mm": (6.0, 6.0, 3.0),  # (3, 3, 1.5)
    "warp_mm": (2.0, 5.0),          # largest displacement of the non-linear deformation (none)
    "warp_length_mm": 35.0,         # its length scale
    "lesions": (1, 3),              # multi-focal (1-2)
    "small_lesion_p": 0.3,          # a lesion of 6-14 mm whole-tumour radius (15-35 / 12-20)
    "contrast_jitter": 0.2,         # (0.13)
    "bias_amplitude": (0.06, 0.3),  # (0.06-0.12)
    "spacing_xy_mm": (0.8, 1.5),    # (1)
    "spacing_z_mm": (0.8, 3.0),     # (1)
    "margin_mm": (2.0, 25.0),       # field of view around the head (the 240 x 240 x 155 BraTS box)
}


def warp_anatomy(maps: np.ndarray, affine: np.ndarray, rng: np.random.Generator, amplitude_mm: float,
                 length_mm: float) -> tuple[np.ndarray, dict]:
    """maps (C, X, Y, Z) pulled through u(x) = amplitude g(x) / max|g| with g three independent smooth random fields
    (backward warp, trilinear): a diffeomorphism-like deformation when amplitude < length scale. Returns the warped
    maps and what was drawn."""
    step = np.abs(np.diag(affine)[:3])
    axes = [affine[i, 3] + affine[i, i] * np.arange(maps.shape[i + 1]) for i in range(3)]
    u = np.stack([random_fourier_field(rng, axes, length_mm) for _ in range(3)])
    u *= np.float32(amplitude_mm / max(float(np.sqrt((u ** 2).sum(0)).max()), 1e-6))
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in maps.shape[1:]], indexing="ij")
    coords = np.stack([g + u[i] / np.float32(step[i]) for i, g in enumerate(grid)])
    out = np.stack([ndi.map_coordinates(m, coords, order=1, mode="constant", cval=0.0) for m in maps])
    return out.astype(np.float32), {"amplitude_mm": float(amplitude_mm), "length_mm": float(length_mm)}


def _orientations() -> list[np.ndarray]:
    """The 48 signed axis permutations (3x3 matrices with one +-1 per row and column)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for row, (col, s) in enumerate(zip(perm, signs)):
                m[row, col] = s
            out.append(m)
    return out


def random_grid(rng: np.random.Generator, head_lo_mm: np.ndarray, head_hi_mm: np.ndarray,
                scale: float = 1.0) -> tuple[np.ndarray, tuple]:
    """(affine, shape) of a grid covering the world box [head_lo, head_hi] mm plus a random margin: voxel sizes
    (VARIETY's ranges x `scale`, the case's downsample factor), slice axis and orientation drawn from VARIETY."""
    v = VARIETY
    orient = _orientations()[int(rng.integers(48))]  # voxel axis j runs along world axis where orient[:, j] != 0
    spacing = scale * np.r_[rng.uniform(*v["spacing_xy_mm"], size=2), rng.uniform(*v["spacing_z_mm"])]
    margin = rng.uniform(*v["margin_mm"], size=3)
    lo, hi = head_lo_mm - margin, head_hi_mm + margin
    world_axis = np.abs(orient).argmax(0)  # the world axis of each voxel axis
    shape = tuple(int(np.ceil((hi[w] - lo[w]) / spacing[j])) + 1 for j, w in enumerate(world_axis))
    affine = np.eye(4)
    affine[:3, :3] = orient * spacing[None, :]
    # voxel (0,0,0) at the corner the axes start from: lo on a + axis, hi on a - axis
    start = np.where(orient.sum(1) > 0, lo, hi)
    affine[:3, 3] = start
    return affine, shape


def regrid(image: np.ndarray, label: np.ndarray, affine: np.ndarray, new_affine: np.ndarray,
           shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """image (X, Y, Z, C) and label (X, Y, Z) onto the grid (new_affine, shape): the image blurred to the new voxel
    size first (a Gaussian of FWHM sqrt(new^2 - old^2) per axis: thick slices average, they do not pick a plane),
    then trilinear; the label nearest-neighbour. `affine` must be axis-aligned (the phantom grid)."""
    m = np.linalg.inv(affine) @ new_affine  # new voxel -> old voxel
    old = np.abs(np.diag(affine)[:3])
    new = np.abs(new_affine[:3, :3]).max(1)  # the new voxel size along each world (= old voxel) axis
    sigma = np.sqrt(np.maximum(new ** 2 - old ** 2, 0.0)) / 2.355 / old

    def one(c):
        src = ndi.gaussian_filter(image[..., c], sigma) if sigma.any() else image[..., c]
        return ndi.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1, mode="constant",
                                    cval=0.0)

    out = np.stack([one(c) for c in range(image.shape[-1])], axis=-1)
    lab = ndi.affine_transform(label, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=0, mode="constant",
                               cval=0)
    return out.astype(np.float32), lab.astype(np.uint8)
