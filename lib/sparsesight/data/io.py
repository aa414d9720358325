"""NIfTI reading and writing with the checks every entry point needs (named errors, never a stack trace)."""
from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InvalidInput, TooLarge

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


_CHUNK = 1 << 20  # bytes read / inflated per step by check_nifti


def _header(head: bytes, name: str):
    """The NIfTI-1 or NIfTI-2 header of a file's first bytes (either byte order)."""
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        size = cls.sizeof_hdr
        if len(head) >= 4 and size in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")):
            if len(head) < size:
                break
            try:
                return cls.from_fileobj(io.BytesIO(head[:size]), check=False)  # raw pixdim, not "fixed"
            except (nib.spatialimages.HeaderDataError, ValueError) as e:
                raise InvalidInput(f"{name} has a broken NIfTI header: {e}") from None
    raise InvalidInput(f"{name} is not a readable NIfTI image (truncated or another format?)")


def _inflated_size(path: Path, cap: int, name: str) -> int:
    """Bytes a gzip file inflates to, counted in bounded steps (never more than _CHUNK in memory): TooLarge past cap."""
    total, d, fed = 0, zlib.decompressobj(31), False
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                data = chunk
                while data:
                    fed = True
                    total += len(d.decompress(data, _CHUNK))
                    if total > cap:
                        raise TooLarge(f"{name} inflates to more than {cap} bytes (max_decompressed_bytes {cap})")
                    data = d.unconsumed_tail
                    if d.eof:  # a further gzip member may follow; zero padding after the last one is allowed
                        data, d, fed = d.unused_data + data, zlib.decompressobj(31), False
                        if not data.strip(b"\0"):
                            data = b""
    except zlib.error as e:
        raise InvalidInput(f"{name} is not a readable NIfTI image (truncated or another format?): {e}") from None
    if fed and not d.eof:
        raise InvalidInput(f"{name} is not a readable NIfTI image (truncated or another format?): the gzip "
                           f"stream ends early")
    return total


def check_nifti(path, max_voxels: int | None = None, max_bytes: int | None = None, what: str = "image"):
    """Refuse a NIfTI file before its voxels are allocated; returns its header.

    Reads only the header: more than `max_voxels` voxels (product of all dimensions) or more than `max_bytes`
    implied by the header -> TooLarge; a .nii.gz is then inflated once in bounded steps and refused (TooLarge)
    as soon as it passes `max_bytes`, whatever its header says. Voxel spacing that is not positive and finite
    (pixdim or the affine's columns) -> InvalidInput."""
    path = Path(path)
    name = f"{what} {path.name}"
    if not path.is_file():
        raise InvalidInput(f"{what} file not found: {path.name}")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                head = f.read(nib.Nifti2Header.sizeof_hdr)
        else:
            with open(path, "rb") as f:
                head = f.read(nib.Nifti2Header.sizeof_hdr)
    except (gzip.BadGzipFile, zlib.error, EOFError, OSError) as e:
        raise InvalidInput(f"{name} is not a readable NIfTI image (truncated or another format?): {e}") from None
    header = _header(head, name)
    shape = tuple(int(d) for d in header.get_data_shape())
    voxels = int(np.prod(shape, dtype=object)) if shape else 0
    if not shape or min(shape) < 1:
        raise InvalidInput(f"{name} has no voxels (dimensions {shape})")
    if max_voxels is not None and voxels > max_voxels:
        raise TooLarge(f"{name} has {voxels} voxels (dimensions {shape}); the limit is {max_voxels} "
                       f"(max_voxels)")
    implied = int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
    if max_bytes is not None and implied > max_bytes:
        raise TooLarge(f"{name} holds {implied} bytes of voxels (dimensions {shape}, "
                       f"{header.get_data_dtype()}); the limit is {max_bytes} (max_decompressed_bytes)")
    ndim = min(len(shape), 3)
    pixdim = np.asarray(header["pixdim"][1:ndim + 1], dtype=np.float64)
    with np.errstate(all="ignore"):
        columns = np.linalg.norm(np.asarray(header.get_best_affine(), dtype=np.float64)[:3, :ndim], axis=0)
    if not (np.isfinite(pixdim).all() and (pixdim > 0).all() and np.isfinite(columns).all() and (columns > 0).all()):
        raise InvalidInput(f"{name} has voxel spacing {pixdim.tolist()} (affine columns {columns.round(4).tolist()}); "
                           f"spacing must be positive and finite: fix the header (pixdim / sform) before uploading")
    if gz and max_bytes is not None:
        _inflated_size(path, max_bytes, name)
    return header


def load_image(path, channels: int = 4, max_voxels: int | None = None,
               max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a multimodal image as (C, X, Y, Z) float32 plus its affine.

    Accepts 4D channel-last NIfTI (MSD Task01: X, Y, Z, C); for channels == 1 a 3D image too.
    Raises InvalidInput for unreadable/truncated files, wrong dimensionality or channel count, complex values,
    NaN/Inf; with limits, check_nifti runs first (TooLarge before anything is allocated).
    """
    if max_voxels is not None or max_bytes is not None:
        check_nifti(path, max_voxels, max_bytes, "image")
    data, affine = _read(path, "image")
    if np.iscomplexobj(data):
        raise InvalidInput(f"image has complex values ({data.dtype}); upload the magnitude image (real numbers)")
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


def load_label(path, spatial_shape=None, max_voxels: int | None = None,
               max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map as (X, Y, Z) uint8 with values in 0..3, checking it against the image's spatial shape
    (with limits, check_nifti first)."""
    if max_voxels is not None or max_bytes is not None:
        check_nifti(path, max_voxels, max_bytes, "label")
    data, affine = _read(path, "label")
    if np.iscomplexobj(data):
        raise InvalidInput(f"label has complex values ({data.dtype}); a label holds class numbers 0..3")
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
