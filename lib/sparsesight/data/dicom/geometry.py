"""Volume geometry between a NIfTI affine (RAS) and a DICOM slice stack (LPS).

Convention (both directions): DICOM frame k is the NIfTI slice ``volume[:, :, k]`` transposed, so the DICOM
column index runs along NIfTI axis i and the row index along axis j:

- ImageOrientationPatient = (unit LPS direction of axis i, unit LPS direction of axis j)
- PixelSpacing = (spacing along j [between rows], spacing along i [between columns])
- ImagePositionPatient of frame k = LPS position of voxel (0, 0, k)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InvalidInput

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SliceGeometry:
    orientation: tuple[float, ...]  # ImageOrientationPatient (6 values)
    pixel_spacing: tuple[float, float]  # PixelSpacing (row spacing, column spacing)
    slice_thickness: float
    positions: tuple[tuple[float, float, float], ...]  # ImagePositionPatient per frame


def _ds(x: float) -> float:
    """A value that fits a DICOM decimal string (16 characters) without losing sub-micrometre precision."""
    return float(f"{x:.6f}")


def _point(p) -> tuple[float, float, float]:
    return _ds(p[0]), _ds(p[1]), _ds(p[2])


def slices_from_affine(affine, n_slices: int) -> SliceGeometry:
    """DICOM slice geometry of a volume with RAS ``affine`` and ``n_slices`` slices along its third axis."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    cols = lps[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0):
        raise InvalidInput("the affine has a zero-length axis")
    unit = cols / spacing
    if abs(float(np.dot(unit[:, 0], unit[:, 1]))) > 1e-4:
        raise InvalidInput("the affine's first two axes are not orthogonal: not representable as DICOM slices")
    positions = tuple(_point(lps[:3, 3] + k * cols[:, 2]) for k in range(n_slices))
    return SliceGeometry(orientation=tuple(_ds(v) for v in (*unit[:, 0], *unit[:, 1])),
                         pixel_spacing=(_ds(spacing[1]), _ds(spacing[0])), slice_thickness=_ds(spacing[2]),
                         positions=positions)


def affine_from_slices(orientation, pixel_spacing, positions, tolerance_mm: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """(RAS affine, frame order) of a slice stack: frames sorted along the slice normal; their spacing must be even.

    ``orientation``: ImageOrientationPatient, ``pixel_spacing``: PixelSpacing, ``positions``: one
    ImagePositionPatient per frame (any order). ``order[k]`` is the index of the frame that is slice k."""
    iop = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    row_dir, col_dir = iop[0], iop[1]  # axis i, axis j
    normal = np.cross(row_dir, col_dir)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    if len(pos) > 1:
        steps = np.diff(pos, axis=0)
        step = (pos[-1] - pos[0]) / (len(pos) - 1)
        if np.linalg.norm(step) < 1e-6:
            raise InvalidInput("several frames share one position: not a volume")
        if np.max(np.linalg.norm(steps - step, axis=1)) > tolerance_mm:
            raise InvalidInput("the slices are not evenly spaced (missing or duplicated slices?)")
    else:
        step = normal * 1.0
    ps = np.asarray(pixel_spacing, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return RAS_TO_LPS @ lps, order


def same_grid(shape_a, affine_a, shape_b, affine_b, tolerance_mm: float = 1e-3) -> bool:
    """True when two volumes share shape and voxel-to-world matrix (to ``tolerance_mm``)."""
    return tuple(shape_a) == tuple(shape_b) and bool(np.allclose(affine_a, affine_b, atol=tolerance_mm))
