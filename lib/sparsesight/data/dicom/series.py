"""A DICOM image series (single-frame instances) as a volume with its RAS affine, with the checks a PACS needs.

Every refusal is an InvalidInput naming the series and what is wrong (not an image, mixed sizes or
orientations, uneven slices, too many voxels)."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidInput, TooLarge
from .geometry import affine_from_slices


def _describe(ds) -> str:
    return f"series {getattr(ds, 'SeriesDescription', '') or '?'!r} ({getattr(ds, 'SeriesInstanceUID', '?')})"


def series_to_volume(datasets, max_voxels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 volume [i, j, k], RAS affine) of the instances of one series (any order)."""
    datasets = list(datasets)
    if not datasets:
        raise InvalidInput("an empty series has no volume")
    first = datasets[0]
    name = _describe(first)
    for ds in datasets:
        if "PixelData" not in ds or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InvalidInput(f"{name} is not an image series with geometry (no pixels or no position/orientation)")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
            raise InvalidInput(f"{name}: multi-frame instances are not supported; send one instance per slice")
        if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            raise InvalidInput(f"{name} is not a greyscale image (SamplesPerPixel {ds.SamplesPerPixel})")
    rows, cols = int(first.Rows), int(first.Columns)
    if max_voxels is not None and rows * cols * len(datasets) > max_voxels:
        raise TooLarge(f"{name} has {rows * cols * len(datasets)} voxels (max_voxels {max_voxels})")
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(first.PixelSpacing, dtype=np.float64)
    for ds in datasets[1:]:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InvalidInput(f"{name} mixes image sizes ({rows}x{cols} and {ds.Rows}x{ds.Columns})")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise InvalidInput(f"{name} mixes slice orientations")
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=np.float64), spacing, atol=1e-4):
            raise InvalidInput(f"{name} mixes pixel spacings")
    try:
        affine, order = affine_from_slices(iop, spacing, [ds.ImagePositionPatient for ds in datasets])
    except InvalidInput as e:
        raise InvalidInput(f"{name}: {e}") from None
    volume = np.empty((cols, rows, len(datasets)), dtype=np.float32)
    for k, idx in enumerate(order):
        ds = datasets[idx]
        try:
            plane = ds.pixel_array.astype(np.float32)
        except Exception as e:  # pydicom raises several types for undecodable pixel data
            raise InvalidInput(f"{name}: pixel data cannot be decoded ({e})") from None
        slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
        volume[:, :, k] = (plane * slope + intercept).T
    if not np.all(np.isfinite(volume)):
        raise InvalidInput(f"{name} has non-finite voxels")
    return volume, affine
