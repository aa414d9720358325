"""Hostile request bodies shared by the request-guard tests (issue 18, part B); the gzip bomb and the process
measurements come from sparsesight.bench.server_probes, which the reliability benchmark uses too."""
from __future__ import annotations

import gzip
import io
import socket
from urllib.parse import urlparse

import nibabel as nib
import numpy as np

from sparsesight.bench.server_probes import MiB, gzip_bomb, small_image  # noqa: F401  (shared with the bench)

TOKEN = "s3cret-test-token-0123456789"  # the guarded server's API token (conftest.py)
VIEWER = "http://viewer.example:3000"  # its one CORS origin


def nifti_bytes(array, affine=None, gz=True) -> bytes:
    raw = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine).to_bytes()
    return gzip.compress(raw, 1) if gz else raw


def header_only(shape, dtype=np.float32, gz=True) -> bytes:
    """A NIfTI file whose header claims `shape` and holds almost no voxels."""
    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(dtype)
    raw = h.binaryblock + b"\0" * 4 + b"\0" * 1024
    return gzip.compress(raw) if gz else raw


def with_header(data: bytes, **fields) -> bytes:
    """`data` (a .nii.gz of nifti_bytes) with raw header fields replaced, e.g. pixdim or srow_y."""
    raw = gzip.decompress(data)
    h = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    for k, v in fields.items():
        h[k] = v
    return gzip.compress(h.binaryblock + raw[348:], 1)


def zero_spacing() -> bytes:
    """A 16^3 x 4 image whose second axis has spacing 0 (pixdim and sform)."""
    pixdim = np.ones(8, np.float32)
    pixdim[2] = 0
    return with_header(nifti_bytes(small_image()), pixdim=pixdim, srow_y=[0, 0, 0, 0], qform_code=0, sform_code=1)


def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 30) -> tuple[int, bytes]:
    """Send `head` (request line + headers, no blank line) and `body` on a plain socket; (status, response)."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0
