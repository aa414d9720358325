"""Attribution maps for any model whose forward maps (B, C, *spatial) -> (B, K, *spatial) logits (segmentation,
2D or 3D) or (B, C, *spatial) -> (B, K) (classification). Seed 004 (Brima & Atemkeng 2023) and the papers it cites.

One entry point, `attribute(model, x, method, target, **options)`, returns a map of x's shape (C, *spatial).

Target of a segmentation model: F(x) = sum_{v in R} z_c(x)_v, the class-c logit summed over a region R (a set of
classes S, e.g. a BraTS region WT = {1, 2, 3}: z_S = log sum_{c in S} exp z_c, the log-odds numerator of p(S)):
  - region="predicted" (default): the voxels the model labels c at x (argmax); the whole image when it labels none,
  - region="all": every voxel; a tuple of ints: that one voxel; a boolean array of the spatial shape: a user ROI.
For a classifier F(x) = z_c(x).

Methods (captum for the first three, our own for the path methods the papers define):
  gradient             dF/dx (Simonyan et al. 2014)
  smoothgrad           1/N sum_n dF/dx (x + eps_n), eps_n ~ N(0, sigma^2) on the brain (non-zero) voxels,
                       sigma = noise * (max x - min x) there (Smilkov et al. 2017, eq. 3); squared (default): the
                       mean of the squared gradients (SmoothGrad-Squared, Hooker et al. 2019)
  integrated_gradients IG_i = (x_i - x'_i) int_0^1 dF(x' + a (x - x'))/dx_i da (seed eq. 8; Sundararajan 2017);
                       captum, Gauss-Legendre steps, batched in chunks of `batch` path points
  guided_ig            Guided IG (Kapishnikov et al. 2021, Algorithm 1): an adaptive path that at each of `steps`
                       steps moves the `fraction` of features with the smallest |gradient| towards the input,
                       staying within `max_dist` (in alpha) of the straight line
  blur_ig              Blur IG (Xu et al. 2020, eq. 4): integrates along the scale-space path L(x, sigma) =
                       G_sigma * x from sigma_max to 0 (spatial blur only, never across channels)
  xrai                 XRAI (Kapishnikov et al. 2019, Algorithm 1): IG (zero baseline, as seed 004; `baselines`)
                       summed over channels, ranked over an over-segmentation (Felzenszwalb in 2D, SLIC supervoxels
                       in 3D, several scales, dilated) greedily by attribution gain per voxel; the map is each
                       region's rank as 1 - (share of the image added before it)
The methods live in gradients.py (the first five) and xrai.py; this module holds the target and the entry point.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidInput
from .gradients import (
    blur_ig,
    gradient,
    guided_ig,
    integrated_gradients,
    make_baseline,
    smoothgrad,
)
from .xrai import xrai

METHODS = ("gradient", "smoothgrad", "integrated_gradients", "guided_ig", "blur_ig", "xrai")
ALIASES = {"grad": "gradient", "vanilla_gradient": "gradient", "sg": "smoothgrad", "ig": "integrated_gradients",
           "gig": "guided_ig", "blurig": "blur_ig"}
SHORT = {"gradient": "gradient", "smoothgrad": "smoothgrad", "integrated_gradients": "ig", "guided_ig": "guided_ig",
         "blur_ig": "blur_ig", "xrai": "xrai"}


def plain(x) -> torch.Tensor:
    """x as a plain torch.Tensor (MONAI's MetaTensor routes every operation through __torch_function__)."""
    x = torch.as_tensor(x)
    return x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x


def method_name(method: str) -> str:
    """Canonical method name ('ig' -> 'integrated_gradients'); InvalidInput for an unknown one."""
    m = ALIASES.get(str(method).lower(), str(method).lower())
    if m not in METHODS:
        raise InvalidInput(f"unknown attribution method {method!r}; choose from {list(METHODS)} "
                           f"(or {sorted(ALIASES)})")
    return m


# ----------------------------------------------------------------------------------------------- target
def target_classes(target) -> tuple[int, ...]:
    """The class set S of a target: one class index, or several (a BraTS region such as TC = (2, 3))."""
    if isinstance(target, (int, np.integer)):
        return (int(target),)
    out = tuple(sorted({int(t) for t in target}))
    if not out:
        raise InvalidInput("the attribution target names no class")
    return out


def target_logit(z: torch.Tensor, target) -> torch.Tensor:
    """z_S of logits z (B, K, ...): the class logit for one class, log sum_{c in S} exp z_c for a set."""
    S = target_classes(target)
    if max(S) >= z.shape[1]:
        raise InvalidInput(f"target class {max(S)} but the model has {z.shape[1]} classes")
    return z[:, S[0]] if len(S) == 1 else torch.logsumexp(z[:, list(S)], 1)


def region_mask(model, x: torch.Tensor, target, region="predicted") -> tuple[torch.Tensor | None, str]:
    """The region R of the target score as a (1, *spatial) float mask (None: every voxel) and its description."""
    spatial = tuple(x.shape[2:])
    if region is None or (isinstance(region, str) and region == "all"):
        return None, "all"
    if isinstance(region, str):
        if region != "predicted":
            raise InvalidInput(f"unknown region {region!r}: 'predicted', 'all', a voxel [i, j, k] or a mask")
        with torch.no_grad():
            z = model(x)
        if z.ndim == 2:
            return None, "all"
        m = torch.isin(z[:1].argmax(1), torch.tensor(target_classes(target), device=z.device)).to(x.dtype)
        if not m.any():
            return None, "all (no voxel predicted as the target class)"
        return m, f"predicted ({int(m.sum())} voxels)"
    if isinstance(region, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in region):
        if len(region) != len(spatial) or not all(0 <= i < s for i, s in zip(region, spatial)):
            raise InvalidInput(f"voxel {list(region)} is not inside the image of spatial shape {list(spatial)}")
        m = torch.zeros((1, *spatial), dtype=x.dtype, device=x.device)
        m[(0, *region)] = 1
        return m, f"voxel {list(int(i) for i in region)}"
    arr = torch.as_tensor(np.asarray(region) if not torch.is_tensor(region) else region)
    if tuple(arr.shape) != spatial:
        raise InvalidInput(f"ROI mask has shape {list(arr.shape)}; the image's spatial shape is {list(spatial)}")
    m = (arr != 0).to(dtype=x.dtype, device=x.device).unsqueeze(0)
    if not m.any():
        raise InvalidInput("the ROI mask is empty")
    return m, f"roi ({int(m.sum())} voxels)"


def fixed_region(model, x: torch.Tensor, target, region="predicted") -> tuple[np.ndarray | str, str]:
    """The region of x (1, C, *spatial) computed once, as a value every later call takes unchanged (an ROI mask,
    or "all"): the same voxels for several maps, their faithfulness and a randomised model. Also its description."""
    mask, desc = region_mask(model, x, target, region)
    return (mask[0].cpu().numpy() if mask is not None else "all"), desc


class TargetScore(nn.Module):
    """F(x) = sum_{v in R} z_S(x)_v per batch element, (B,); z_S(x) for a classifier (B, K) output."""

    def __init__(self, model: nn.Module, target, mask: torch.Tensor | None = None):
        super().__init__()
        self.model, self.target, self.mask = model, target_classes(target), mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zc = target_logit(self.model(x), self.target)
        if zc.ndim == 1:
            return zc
        if self.mask is not None:
            zc = zc * self.mask
        return zc.flatten(1).sum(1)


class _Counted(nn.Module):
    """Wraps a score function and advances a progress bar by the batch size of each call."""

    def __init__(self, fn: nn.Module, bar):
        super().__init__()
        self.fn, self.bar = fn, bar

    def forward(self, x):
        out = self.fn(x)
        self.bar.update(x.shape[0])
        return out



_FUNCS: dict[str, Callable[..., Any]] = {"gradient": gradient, "smoothgrad": smoothgrad, "integrated_gradients": integrated_gradients,
          "guided_ig": guided_ig, "blur_ig": blur_ig, "xrai": xrai}
_NEEDS_BASELINE = {"integrated_gradients", "guided_ig"}


def _method_options(m: str) -> set[str]:
    """The keyword options of method `m`'s function (besides the score F, the input x and the baseline)."""
    return set(inspect.signature(_FUNCS[m]).parameters) - {"F", "x", "baseline", "return_ranks"}


def n_evaluations(method: str, steps: int = 32, samples: int = 16, baselines: int = 1) -> int:
    """Forward+backward passes a method makes (the progress bar's total)."""
    return {"gradient": 1, "smoothgrad": samples, "integrated_gradients": steps, "guided_ig": steps,
            "blur_ig": steps, "xrai": baselines * steps}[method]


def attribute(model: nn.Module, x, method: str = "integrated_gradients", target=1, region="predicted",
              baseline="zero", steps: int = 32, progress: bool = False, spatial_dims: int | None = None,
              **options) -> torch.Tensor:
    """Attribution map of x (C, *spatial) or (1, C, *spatial) for class `target` (or a set of classes) of `model`;
    returns x's shape.

    x is (1, C, *spatial) when its first axis is 1 and it has 4+ axes, else (C, *spatial); spatial_dims settles
    it otherwise (a one-channel 3D volume without the batch axis).
    Options: region (see the module doc); baseline ('zero', 'min', 'max', 'blur', a number or an array; IG and
    Guided IG); steps (path points); batch (path points per forward/backward chunk; default fits CHUNK_ELEMENTS);
    samples, noise and squared (SmoothGrad); fraction and max_dist (Guided IG); max_sigma (Blur IG); algorithm
    ('full'/'fast'), baselines, reduce, masks, min_diff and segment_options (XRAI); progress (a tqdm bar over the passes).
    An option the method does not take is refused (InvalidInput naming the method's options).
    """
    m = method_name(method)
    unknown = sorted(set(options) - _method_options(m))
    if unknown:
        raise InvalidInput(f"unknown option(s) {unknown} for {m}; its options: {sorted(_method_options(m) - {'steps'})}"
                           f", and for every method: region, baseline, steps, progress, spatial_dims")
    x = plain(x)
    nd = spatial_dims if spatial_dims is not None else (x.ndim - 2 if x.ndim >= 4 and x.shape[0] == 1 else x.ndim - 1)
    if nd not in (1, 2, 3) or x.ndim not in (nd + 1, nd + 2):
        raise InvalidInput(f"input must be (C, *spatial) or (1, C, *spatial) with 1-3 spatial axes; "
                           f"got shape {list(x.shape)}")
    batched = x.ndim == nd + 2
    xb = x if batched else x.unsqueeze(0)
    if xb.shape[0] != 1:
        raise InvalidInput(f"one image at a time; got a batch of {xb.shape[0]}")
    if not (isinstance(steps, (int, np.integer)) and 1 <= int(steps) <= 4096):
        raise InvalidInput(f"steps must be an integer in [1, 4096]; got {steps!r}")
    if not torch.isfinite(xb).all():
        raise InvalidInput("the input has NaN or Inf values")
    xb = xb.detach().float() if xb.dtype not in (torch.float32, torch.float64) else xb.detach()
    was_training = model.training
    model.eval()
    try:
        mask, _ = region_mask(model, xb, target, region)
        F = TargetScore(model, target, mask)
        n_bl = options.get("baselines", ("zero",))
        total = n_evaluations(m, int(steps), int(options.get("samples", 16)),
                              1 if isinstance(n_bl, str) else len(n_bl))
        with tqdm(total=total, desc=f"{SHORT[m]} class {target_classes(target)}", disable=not progress, leave=False) as bar:
            Fc = _Counted(F, bar)
            kw = dict(options, steps=int(steps)) if "steps" in _method_options(m) else dict(options)
            if m in _NEEDS_BASELINE:
                kw["baseline"] = make_baseline(xb, baseline)
            out = _FUNCS[m](Fc, xb, **kw)
    finally:
        model.train(was_training)
    out = out.detach()
    return out if batched else out[0]
