"""FISTA for convolutional sparse coding (seed 001, Section 2.1; Beck & Teboulle 2009).

Convolutional synthesis (eq. 2): D s = sum_k d_k * s_k for K real filters d_k (K, kh, kw) of odd size and
feature maps s (B, K, H, W); "same" size with zero boundary. D^T is the correlation with the same filters, the
exact adjoint (conv_transpose2d / conv2d pair). The step size is 0.97 / ||D||^2 with ||D|| from power iteration,
as in the authors' code; the proximal map of the weighted l1 norm ||Lambda . s||_1 is soft-thresholding with
threshold step * Lambda (ops/soft_threshold.py).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InvalidInput
from .soft_threshold import soft_threshold

STEP_SAFETY = 0.97


def _check(d: torch.Tensor) -> None:
    if d.ndim != 3 or d.shape[1] % 2 == 0 or d.shape[2] % 2 == 0:
        raise InvalidInput(f"a dictionary must be (K, kh, kw) with odd kernel sizes; got shape {tuple(d.shape)}")


def synthesis(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """D s = sum_k d_k * s_k (eq. 2): s (B, K, H, W) -> (B, 1, H, W)."""
    _check(d)
    return F.conv_transpose2d(s, d.unsqueeze(1), padding=(d.shape[1] // 2, d.shape[2] // 2))


def analysis(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """D^T x = (d_k correlated with x)_k: x (B, 1, H, W) -> (B, K, H, W); the adjoint of synthesis."""
    _check(d)
    return F.conv2d(x, d.unsqueeze(1), padding=(d.shape[1] // 2, d.shape[2] // 2))


_NORMS: dict = {}


@torch.no_grad()
def operator_norm(d: torch.Tensor, shape, n_iter: int = 30, seed: int = 0) -> float:
    """||D|| = sqrt(lambda_max(D^T D)) on (H, W) images, by power iteration (cached per dictionary and shape)."""
    _check(d)
    d = d.detach().to(torch.float32)
    key = (hashlib.sha1(d.cpu().numpy().tobytes()).hexdigest(), tuple(d.shape), tuple(int(s) for s in shape), n_iter)
    if key not in _NORMS:
        g = torch.Generator().manual_seed(seed)
        # the same random image for every filter: the iterates are permuted with the filters, so the
        # estimate (and the step size) does not depend on the filters' order
        v = torch.randn((1, 1) + tuple(shape), generator=g).expand(1, d.shape[0], *shape).to(d.device)
        v = v / v.norm()
        lam = torch.tensor(0.0)
        for _ in range(n_iter):
            w = analysis(synthesis(v, d), d)
            lam = w.norm()
            v = w / lam
        _NORMS[key] = float(lam.sqrt())
    return _NORMS[key]


def step_size(d: torch.Tensor, shape, data_norm: float = 1.0) -> float:
    """tau = 0.97 / (||A|| ||D||)^2; ||A|| <= 1 for a masked unitary FFT."""
    return STEP_SAFETY / (data_norm * operator_norm(d, shape)) ** 2


def fista_step(s_prev: torch.Tensor, z: torch.Tensor, t: float, grad: Callable[[torch.Tensor], torch.Tensor],
               step: float, lam) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One FISTA iteration for min_s f(s) + ||lam . s||_1:

        s_k     = S_{step*lam}(z_k - step * grad f(z_k))
        t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2
        z_{k+1} = s_k + (t_k - 1) / t_{k+1} * (s_k - s_{k-1})

    Returns (s_k, z_{k+1}, t_{k+1}).
    """
    s = soft_threshold(z - step * grad(z), step * lam)
    t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
    z_next = s + ((t - 1.0) / t_next) * (s - s_prev)
    return s, z_next, t_next


def fista(grad: Callable[[torch.Tensor], torch.Tensor], s0: torch.Tensor, step: float, lam, n_iter: int,
          state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """n_iter FISTA iterations from s0 (or from `state` = (s, z, t) of an earlier call, so that a run split in
    two parts, e.g. for truncated back-propagation, gives the same iterates as one run). Returns (s, state)."""
    s, z, t = state if state is not None else (s0, s0, 1.0)
    for _ in range(n_iter):
        s, z, t = fista_step(s, z, t, grad, step, lam)
    return s, (s, z, t)


def csc(x: torch.Tensor, d: torch.Tensor, lam, n_iter: int = 64) -> torch.Tensor:
    """Convolutional basis pursuit denoising: argmin_s 1/2 ||D s - x||^2 + ||lam . s||_1 by FISTA from s = 0.

    x (B, 1, H, W) real; lam a scalar or (B, K, H, W) map; returns s (B, K, H, W).
    """
    step = step_size(d, x.shape[-2:])

    def grad(s):
        return analysis(synthesis(s, d) - x, d)

    s0 = torch.zeros((x.shape[0], d.shape[0]) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)
    return fista(grad, s0, step, lam, n_iter)[0]
