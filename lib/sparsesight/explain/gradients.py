"""The gradient-based attribution methods and what they share: dF/dx of a batch, baselines, spatial blur and
chunking of path points (the methods are described in attribution.py, whose `attribute` calls them)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from ..errors import InvalidInput

BASELINES = ("zero", "min", "max", "blur")
#: input elements per chunk of path points (one 240x240x155x4 volume is 35.7 M: it is then one point per chunk)
CHUNK_ELEMENTS = 2 ** 24



def grad_and_score(F: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dF/dx and F(x) for a batch x (F sums over the batch, so each row gets its own gradient)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = F(x)
        (g,) = torch.autograd.grad(y.sum(), x)
    return g, y.detach()


def make_baseline(x: torch.Tensor, baseline="zero", sigma: float = 5.0) -> torch.Tensor:
    """Baseline x' of the path methods: 'zero' (the seed's choice), 'min'/'max' (per channel), 'blur' (Gaussian,
    sigma voxels, spatial only), a number, or an array of x's shape."""
    if isinstance(baseline, torch.Tensor) or isinstance(baseline, np.ndarray):
        b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        if b.shape != x.shape:
            b = b.reshape(x.shape) if b.numel() == x.numel() else None
        if b is None:
            raise InvalidInput(f"baseline array must have the input's shape {list(x.shape)}")
        return b
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline in ("min", "max"):
        red = x.amin if baseline == "min" else x.amax
        return red(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x).clone()
    if baseline == "blur":
        return gaussian_blur(x, sigma)
    try:
        return torch.full_like(x, float(baseline))
    except (TypeError, ValueError):
        raise InvalidInput(f"unknown baseline {baseline!r}; choose from {list(BASELINES)} or a number") from None


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """G_sigma * x over the spatial axes only (zero padding as in the Blur IG reference), per batch and channel."""
    if sigma == 0:
        return x.clone()
    arr = x.detach().cpu().numpy()
    s = [0, 0] + [sigma] * (x.ndim - 2)
    return torch.as_tensor(ndimage.gaussian_filter(arr, sigma=s, mode="constant"), device=x.device)


def _chunk(x: torch.Tensor, batch: int | None) -> int:
    return int(batch) if batch else max(1, CHUNK_ELEMENTS // x[0].numel())



# ----------------------------------------------------------------------------------------------- methods
def gradient(F, x):
    """Vanilla gradient dF/dx (signed)."""
    from captum.attr import Saliency

    return Saliency(F).attribute(x.detach().requires_grad_(True), abs=False)


def brain_mask(x: torch.Tensor) -> torch.Tensor:
    """The voxels with signal in some channel, (B, 1, *spatial); every voxel when none has (a blank input)."""
    m = (x != 0).any(1, keepdim=True)
    return m if bool(m.any()) else torch.ones_like(m)


def noise_sigma(x: torch.Tensor, noise: float, mask: torch.Tensor) -> float:
    """sigma = noise * (max x - min x) over the brain voxels `mask` (Smilkov et al. 2017, Sec. 3: noise level as
    a fraction of the input's range; the background would stretch a z-scored MRI's range)."""
    v = x[mask.expand_as(x)]
    return float(noise) * float(v.max() - v.min())


def smoothgrad(F, x, samples: int = 16, noise: float = 0.05, squared: bool = False, batch=None, seed: int = 0):
    """SmoothGrad (Smilkov et al. 2017, eq. 3): 1/N sum_n dF/dx(x + eps_n), eps_n ~ N(0, sigma^2) on the brain
    voxels only (sigma: noise_sigma; the background stays as it is, as the model saw it), N = `samples`;
    squared: SmoothGrad-Squared 1/N sum_n (dF/dx(x + eps_n))^2 (Hooker et al. 2019, SG-SQ).

    Defaults: signed, noise 0.05, by deletion gain over random and the model-randomisation check on the off-grid
    held-out split (4 phantoms at 1 mm, 64^3 around the tumour, served weights, 8 samples; oedema / enhancing):
    SUM signed 0.05 7.0x / 3.6x, 0.10 5.8x / 1.7x, 0.20 4.0x / 1.4x; SG-SQ 7.3x / 9.3x; ML-CSC signed (any noise)
    6.6x / 7.8x, SG-SQ 6.6x / 7.7x. SG-SQ fails the model-randomisation check (Spearman 0.88-0.99 with a random
    model's map: a squared gradient is a magnitude, and the magnitude is the target region's footprint); the signed
    maps pass it (|rho| <= 0.25)."""
    mask = brain_mask(x)
    sigma = noise_sigma(x, noise, mask)
    total = torch.zeros_like(x)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    chunk = _chunk(x, batch)
    for start in range(0, int(samples), chunk):
        k = min(chunk, int(samples) - start)
        eps = torch.randn((k, *x.shape[1:]), generator=gen, dtype=x.dtype, device=x.device) * sigma * mask
        g, _ = grad_and_score(F, x + eps)
        total += (g * g if squared else g).sum(0, keepdim=True)
    return total / int(samples)


def integrated_gradients(F, x, baseline, steps: int = 32, batch=None, rule: str = "gausslegendre"):
    """IG (eq. 8) by captum with `steps` path points of the quadrature `rule`, `batch` points per chunk."""
    from captum.attr import IntegratedGradients

    return IntegratedGradients(F).attribute(x, baselines=baseline, n_steps=int(steps), method=rule,
                                            internal_batch_size=_chunk(x, batch))


def guided_ig(F, x, baseline, steps: int = 32, fraction: float = 0.25, max_dist: float = 0.02):
    """Guided IG (Kapishnikov et al. 2021, Algorithm 1), one gradient per step (the path depends on it).

    Step k has the L1 target d_k = (1 - k/steps) ||x - x'||_1. While the point is farther from x than d_k, the
    features with the smallest |grad| (quantile `fraction`, lower) among those not yet at their upper bound
    x_max(alpha + max_dist) move towards it; features lagging behind alpha - max_dist are pulled to x_min first.
    The attribution accumulates (x_new - x_old) * grad (the path integral of eq. 8 along the adaptive path)."""
    eps = 1e-9
    x_in, x_bl = x.detach(), baseline.detach()
    diff = x_in - x_bl
    attr = torch.zeros_like(x_in)
    l1_total = diff.abs().sum()
    if float(l1_total) == 0:
        return attr
    cur = x_bl.clone()
    n = cur.numel()
    k_frac = int(math.floor(float(fraction) * (n - 1))) + 1  # 'lower' quantile = k-th smallest
    nz = diff != 0
    for step in range(int(steps)):
        g_actual, _ = grad_and_score(F, cur)
        g = g_actual.clone()
        alpha = (step + 1.0) / steps
        a_min, a_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_min, x_max = x_bl + diff * a_min, x_bl + diff * a_max
        l1_target = float(l1_total) * (1 - (step + 1) / steps)
        gamma = math.inf
        while gamma > 1.0:
            x_old = cur.clone()
            x_alpha = torch.where(nz, (cur - x_bl) / torch.where(nz, diff, torch.ones_like(diff)),
                                  torch.full_like(cur, a_max))
            behind = x_alpha < a_min
            cur = torch.where(behind, x_min, cur)
            l1_cur = float((cur - x_in).abs().sum())
            if math.isclose(l1_target, l1_cur, rel_tol=eps, abs_tol=eps):
                attr += (cur - x_old) * g_actual
                break
            g = torch.where(cur == x_max, torch.full_like(g, math.inf), g)
            thr = g.abs().flatten().kthvalue(k_frac).values
            s = (g.abs() <= thr) & torch.isfinite(g)
            l1_s = float(((cur - x_max).abs() * s).sum())
            gamma = (l1_cur - l1_target) / l1_s if l1_s > 0 else math.inf
            if gamma > 1.0:
                cur = torch.where(s, x_max, cur)
            else:
                cur = torch.where(s, cur + (x_max - cur) * gamma, cur)
            attr += (cur - x_old) * g_actual
    return attr


def blur_ig(F, x, steps: int = 32, max_sigma: float = 10.0, grad_step: float = 0.01, batch=None):
    """Blur IG (Xu et al. 2020, eq. 4): -sum_k dsigma * dL/dsigma(sigma_k) * dF/dx(L(x, sigma_k)) for
    sigma_k = k sigma_max / steps, k = 0..steps-1, with dL/dsigma by the forward difference of step grad_step."""
    sigmas = [k * max_sigma / steps for k in range(steps + 1)]
    total = torch.zeros_like(x)
    chunk = _chunk(x, batch)
    for start in range(0, steps, chunk):
        ks = range(start, min(steps, start + chunk))
        pts = torch.cat([gaussian_blur(x, sigmas[k]) for k in ks])
        dL = torch.cat([(gaussian_blur(x, sigmas[k] + grad_step) - gaussian_blur(x, sigmas[k])) / grad_step
                        for k in ks])
        g, _ = grad_and_score(F, pts)
        dsig = torch.tensor([sigmas[k + 1] - sigmas[k] for k in ks], dtype=x.dtype, device=x.device)
        total += (dsig.view(-1, *[1] * (x.ndim - 1)) * dL * g).sum(0, keepdim=True)
    return -total


