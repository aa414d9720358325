"""NIfTI reading and writing with the checks every entry point needs (named errors, never a stack trace)."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InvalidInput

_NUM_LABELS = 4  # 0 background, 1 oedema, 2 non-enhancing core, 3 enhancing


def _read(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{what} file not found: {path.name}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise InvalidInput(f"{what} {path.name} is not a readable NIfTI image (truncated or another format?): {e}") from None
    return data, np.asarray(img.affine, dtype=np.float64)


def load_image(path, channels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Read a multimodal image as (C, X, Y, Z) float32 plus its affine.

    Accepts 4D channel-last NIfTI (MSD Task01: X, Y, Z, C); for channels == 1 a 3D image too.
    Raises InvalidInput for unreadable/truncated files, wrong dimensionality or channel count, NaN/Inf.
    """
    data, affine = _read(path, "image")
    if data.ndim == 5 and data.shape[3] == 1:  # (X, Y, Z, 1, C) as some writers store vectors
        data = data[:, :, :, 0]
    if data.ndim == 3 and channels == 1:
        data = data[..., None]
    if data.ndim != 4:
        raise InvalidInput(f"image must be 4D (X, Y, Z, {channels} channels: FLAIR, T1, T1ce, T2); got shape {data.shape}")
    if data.shape[3] != channels:
        raise InvalidInput(f"image has {data.shape[3]} channels; expected {channels} (FLAIR, T1, T1ce, T2 in this order)")
    if min(data.shape[:3]) < 8:
        raise InvalidInput(f"image spatial size {data.shape[:3]} is too small (at least 8 voxels per axis)")
    arr = np.asarray(data, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InvalidInput(f"image has {bad} NaN/Inf voxels; replace them (e.g. with 0) before uploading")
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0)), affine


def load_label(path, spatial_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map as (X, Y, Z) uint8 with values in 0..3, checking it against the image's spatial shape."""
    data, affine = _read(path, "label")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidInput(f"label must be a 3D map; got shape {data.shape}")
    if spatial_shape is not None and tuple(data.shape) != tuple(spatial_shape):
        raise InvalidInput(f"label shape {tuple(data.shape)} differs from its image's spatial shape {tuple(spatial_shape)}")
    arr = np.asarray(data)
    if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
        raise InvalidInput("label must hold integer class values (0 background, 1 oedema, 2 non-enhancing core, 3 enhancing)")
    if arr.min() < 0 or arr.max() >= _NUM_LABELS:
        raise InvalidInput(f"label values must be in 0..{_NUM_LABELS - 1}; found {sorted(np.unique(arr).tolist())[:10]}")
    return arr.astype(np.uint8), affine


def nifti_image_from_bytes(data: bytes) -> nib.Nifti1Image:
    """A NIfTI image from the bytes of a .nii or .nii.gz file (gzip detected by its magic number)."""
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def nifti_from_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(array as stored, affine) of the bytes of a .nii or .nii.gz file (a server's answer, a bundle member)."""
    img = nifti_image_from_bytes(data)
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


def save_nifti(array, affine, path) -> Path:
    """Write array with affine; (C, X, Y, Z) arrays of more than one channel are stored channel-last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path
