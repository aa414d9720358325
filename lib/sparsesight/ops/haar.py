"""Orthonormal Haar discrete wavelet transform (one level) in 2D and 3D as strided convolutions.

The analysis filters are the tensor products of h = [1, 1]/sqrt(2) (low) and g = [1, -1]/sqrt(2) (high): 4 subbands
in 2D (LL, LH, HL, HH), 8 in 3D. Applied channel-wise with stride 2 they form an orthonormal transform W, so the
synthesis is its adjoint, W^T = W^{-1}: a transposed convolution with the same kernels (perfect reconstruction,
||W x|| = ||x||). Used by SUM (seed 003) for down- and up-sampling.

Channels-last tensors (torch.channels_last / channels_last_3d) stay channels-last: the analysis convolution is fast
in that format, and the synthesis then runs as the 1D butterflies (lo + hi, lo - hi) / sqrt 2 along each axis, which
on CPUs is several times faster than a grouped transposed convolution in channels-last.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ..errors import InvalidInput

_LOW = (1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0))
_HIGH = (1.0 / math.sqrt(2.0), -1.0 / math.sqrt(2.0))


def haar_filters(dims: int, dtype=torch.float32) -> torch.Tensor:
    """The 2**dims Haar analysis kernels, shape (2**dims, 1, 2, ..., 2); subband k's bit d (MSB first) picks
    high-pass along axis d, so index 0 is the all-low-pass (approximation) band."""
    if dims not in (2, 3):
        raise InvalidInput(f"Haar DWT is defined here for 2D and 3D; got {dims} spatial dimensions")
    kernels = []
    for bands in itertools.product((_LOW, _HIGH), repeat=dims):
        k = torch.tensor(bands[0], dtype=torch.float64)
        for b in bands[1:]:
            k = torch.tensordot(k, torch.tensor(b, dtype=torch.float64), dims=0)
        kernels.append(k)
    return torch.stack(kernels).unsqueeze(1).to(dtype)


def _check(x: torch.Tensor, dims: int):
    if x.dim() != dims + 2:
        raise InvalidInput(f"expected a (B, C, {', '.join('XYZ'[:dims])}) tensor for the {dims}D Haar DWT; got {tuple(x.shape)}")
    odd = [s for s in x.shape[2:] if s % 2]
    if odd:
        raise InvalidInput(f"Haar DWT needs even spatial sizes; got {tuple(x.shape[2:])} (pad to even first)")


def channels_last(t: torch.Tensor) -> bool:
    """Whether t is stored channels-last (and not also plain contiguous, as tensors with one channel are)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
    return fmt is not None and t.is_contiguous(memory_format=fmt) and not t.is_contiguous()


def dwt(x: torch.Tensor, dims: int | None = None) -> torch.Tensor:
    """One-level Haar analysis W x: (B, C, *S) -> (B, C * 2**dims, *S/2); channel c's subbands are
    c*2**dims ... (c+1)*2**dims - 1, band 0 the approximation."""
    dims = dims or x.dim() - 2
    _check(x, dims)
    C = x.shape[1]
    w = haar_filters(dims, x.dtype).to(x.device).repeat(C, 1, *([1] * dims))
    conv = F.conv2d if dims == 2 else F.conv3d
    return conv(x, w, stride=2, groups=C)


def idwt(y: torch.Tensor, dims: int | None = None) -> torch.Tensor:
    """Haar synthesis W^T y = W^{-1} y: (B, C * 2**dims, *S) -> (B, C, *2S)."""
    dims = dims or y.dim() - 2
    K = 2**dims
    if y.dim() != dims + 2 or y.shape[1] % K:
        raise InvalidInput(f"expected (B, C*{K}, ...) subbands for the {dims}D inverse Haar DWT; got {tuple(y.shape)}")
    C = y.shape[1] // K
    if channels_last(y):
        return _idwt_butterflies(y, dims)
    w = haar_filters(dims, y.dtype).to(y.device).repeat(C, 1, *([1] * dims))
    convT = F.conv_transpose2d if dims == 2 else F.conv_transpose3d
    return convT(y, w, stride=2, groups=C)


def _idwt_butterflies(y: torch.Tensor, dims: int) -> torch.Tensor:
    """W^T y for channels-last y, axis by axis: x[2i] = (lo_i + hi_i) / sqrt 2, x[2i + 1] = (lo_i - hi_i) / sqrt 2
    (the 1D Haar synthesis; the subband bits are ordered MSB first = first axis, as in haar_filters)."""
    B, CK, *S = y.shape
    C = CK // 2**dims
    t = y.movedim(1, -1).reshape(B, *S, C, *([2] * dims))  # (B, *S, C, band bit per axis); a view for channels-last
    t = t * (1.0 / math.sqrt(2.0)) ** dims  # the dims factors 1/sqrt 2 at once; then only sums and differences
    for ax in range(dims):
        lo, hi = t.select(dims + 2, 0), t.select(dims + 2, 1)  # this axis' band bit (the earlier ones are merged)
        if t.requires_grad and torch.is_grad_enabled():  # even / odd samples interleaved after axis ax
            out = torch.stack([lo + hi, lo - hi], 2 + ax)
        else:  # written in place (out= has no autograd): one copy less
            out = lo.new_empty((*lo.shape[:2 + ax], 2, *lo.shape[2 + ax:]))
            torch.add(lo, hi, out=out.select(2 + ax, 0))
            torch.sub(lo, hi, out=out.select(2 + ax, 1))
        t = out.flatten(1 + ax, 2 + ax)
    return t.movedim(dims + 1, 1)  # (B, C, *2S), channels-last
