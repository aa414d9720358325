"""Single-coil Cartesian MRI forward model: centred orthonormal 2D FFT with a sampling mask (seed 001, eq. 1).

A = M F with F the centred unitary 2D DFT over the last two axes and M a binary mask (1 = sampled). Since F is
unitary and M a projection, A^H = F^H M and ||A|| <= 1. Tensors are complex torch tensors (..., H, W); masks
broadcast against them (bool or 0/1 floats).
"""
from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """F x: centred orthonormal 2D DFT (DC in the middle of the array), ||F x|| = ||x||."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """F^H k = F^{-1} k: the inverse of fft2c."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)


def forward(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A x = M F x (eq. 1 without the noise)."""
    return fft2c(x.to(torch.complex64) if not x.is_complex() else x) * mask


def adjoint(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A^H y = F^H M y: the zero-filled reconstruction of k-space data y."""
    return ifft2c(y * mask)


def normal(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A^H A x = F^H M F x (M binary: M^H M = M)."""
    return ifft2c(fft2c(x.to(torch.complex64) if not x.is_complex() else x) * mask)
