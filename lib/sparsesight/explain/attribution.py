"""Attribution maps for any model whose forward maps (B, C, *spatial) -> (B, K, *spatial) logits (segmentation,
2D or 3D) or (B, C, *spatial) -> (B, K) (classification). Seed 004 (Brima & Atemkeng 2023) and the papers it cites.

One entry point, `attribute(model, x, method, target, **options)`, returns a map of x's shape (C, *spatial).

Target of a segmentation model: F(x) = sum_{v in R} z_c(x)_v, the class-c logit summed over a region R:
  - region="predicted" (default): the voxels the model labels c at x (argmax); the whole image when it labels none,
  - region="all": every voxel; a tuple of ints: that one voxel; a boolean array of the spatial shape: a user ROI.
For a classifier F(x) = z_c(x).

Methods (captum for the first three, our own for the path methods the papers define):
  gradient             dF/dx (Simonyan et al. 2014)
  smoothgrad           1/N sum_n dF/dx (x + eps_n), eps_n ~ N(0, sigma^2), sigma = noise * (max x - min x)
                       (Smilkov et al. 2017, eq. 3); captum NoiseTunnel
  integrated_gradients IG_i = (x_i - x'_i) int_0^1 dF(x' + a (x - x'))/dx_i da (seed eq. 8; Sundararajan 2017);
                       captum, Gauss-Legendre steps, batched in chunks of `batch` path points
  guided_ig            Guided IG (Kapishnikov et al. 2021, Algorithm 1): an adaptive path that at each of `steps`
                       steps moves the `fraction` of features with the smallest |gradient| towards the input,
                       staying within `max_dist` (in alpha) of the straight line
  blur_ig              Blur IG (Xu et al. 2020, eq. 4): integrates along the scale-space path L(x, sigma) =
                       G_sigma * x from sigma_max to 0 (spatial blur only, never across channels)
  xrai                 XRAI (Kapishnikov et al. 2019, Algorithm 1): IG with black and white baselines, summed over
                       the baselines' mean, ranked over an over-segmentation (Felzenszwalb in 2D, SLIC supervoxels
                       in 3D, several scales, dilated) by attribution density, greedily
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidInput

METHODS = ("gradient", "smoothgrad", "integrated_gradients", "guided_ig", "blur_ig", "xrai")
ALIASES = {"grad": "gradient", "vanilla_gradient": "gradient", "sg": "smoothgrad", "ig": "integrated_gradients",
           "gig": "guided_ig", "blurig": "blur_ig"}
SHORT = {"gradient": "gradient", "smoothgrad": "smoothgrad", "integrated_gradients": "ig", "guided_ig": "guided_ig",
         "blur_ig": "blur_ig", "xrai": "xrai"}
BASELINES = ("zero", "min", "max", "blur")
#: input elements per chunk of path points (one 240x240x155x4 volume is 35.7 M: it is then one point per chunk)
CHUNK_ELEMENTS = 2 ** 24


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
def region_mask(model, x: torch.Tensor, target: int, region="predicted") -> tuple[torch.Tensor | None, str]:
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
        m = (z[:1].argmax(1) == target).to(x.dtype)
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


class TargetScore(nn.Module):
    """F(x) = sum_{v in R} z_c(x)_v per batch element, (B,); z_c(x) for a classifier (B, K) output."""

    def __init__(self, model: nn.Module, target: int, mask: torch.Tensor | None = None):
        super().__init__()
        self.model, self.target, self.mask = model, int(target), mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        if self.target >= z.shape[1]:
            raise InvalidInput(f"target class {self.target} but the model has {z.shape[1]} classes")
        zc = z[:, self.target]
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
def gradient(F, x, progress=False, **_):
    """Vanilla gradient dF/dx (signed)."""
    from captum.attr import Saliency

    return Saliency(F).attribute(x.detach().requires_grad_(True), abs=False)


def smoothgrad(F, x, samples: int = 16, noise: float = 0.15, batch=None, seed: int = 0, **_):
    """SmoothGrad (Smilkov et al. 2017, eq. 3): mean gradient over `samples` noisy copies, sigma = noise * range."""
    from captum.attr import NoiseTunnel, Saliency

    stdev = float(noise) * float(x.max() - x.min())
    with torch.random.fork_rng(devices=[]):  # reproducible noise without touching the caller's generator
        torch.manual_seed(seed)
        return NoiseTunnel(Saliency(F)).attribute(x.detach().requires_grad_(True), nt_type="smoothgrad",
                                                  nt_samples=int(samples), stdevs=stdev,
                                                  nt_samples_batch_size=_chunk(x, batch), abs=False)


def integrated_gradients(F, x, baseline, steps: int = 32, batch=None, rule: str = "gausslegendre", **_):
    """IG (eq. 8) by captum with `steps` path points of the quadrature `rule`, `batch` points per chunk."""
    from captum.attr import IntegratedGradients

    return IntegratedGradients(F).attribute(x, baselines=baseline, n_steps=int(steps), method=rule,
                                            internal_batch_size=_chunk(x, batch))


def guided_ig(F, x, baseline, steps: int = 32, fraction: float = 0.25, max_dist: float = 0.02, **_):
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


def blur_ig(F, x, steps: int = 32, max_sigma: float = 10.0, grad_step: float = 0.01, batch=None, **_):
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


# ----------------------------------------------------------------------------------------------- XRAI
def segments_2d(image: np.ndarray, scales=(50, 100, 150, 250, 500, 1200), sigma: float = 0.8, min_size: int = 150,
                resize: int = 224, dilation: int = 5) -> list[np.ndarray]:
    """XRAI's over-segmentation of a (C, H, W) image (Kapishnikov et al. 2019, Sec. 3.1): Felzenszwalb at several
    scales on the image rescaled to [-1, 1] and resized to resize^2, every segment a mask, dilated by a disk."""
    from skimage.morphology import dilation as dilate, disk
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize as sk_resize

    im = np.moveaxis(np.asarray(image, dtype=np.float64), 0, -1)
    im = (im - im.min()) / max(im.max() - im.min(), 1e-12) * 2 - 1
    shape = im.shape[:2]
    if resize:
        im = sk_resize(im, (resize, resize), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    masks = []
    for sc in scales:
        seg = felzenszwalb(im, scale=sc, sigma=sigma, min_size=min_size)
        if resize:
            seg = sk_resize(seg, shape, order=0, preserve_range=True, mode="constant", anti_aliasing=False).astype(int)
        masks += [seg == lab for lab in range(seg.min(), seg.max() + 1)]
    if dilation:
        fp = disk(dilation)
        masks = [dilate(m, footprint=fp) for m in masks]
    return masks


def segments_3d(volume: np.ndarray, n_segments=(32, 128, 512), compactness: float = 0.1, resize: int = 64,
                dilation: int = 1) -> list[np.ndarray]:
    """The 3D counterpart: SLIC supervoxels (skimage) at several scales on the (C, X, Y, Z) volume rescaled to
    [-1, 1] and resized so its longest side is `resize` (XRAI resizes to 224^2 for the same reason), each label
    upsampled by nearest neighbour and dilated by `dilation` voxels (6-connected) within its bounding box.
    Masks are returned as flat voxel indices (a full-size volume has hundreds of 9 M-voxel masks)."""
    from skimage.segmentation import slic
    from skimage.transform import resize as sk_resize

    vol = np.moveaxis(np.asarray(volume, dtype=np.float64), 0, -1)
    vol = (vol - vol.min()) / max(vol.max() - vol.min(), 1e-12) * 2 - 1
    shape = vol.shape[:3]
    f = min(1.0, resize / max(shape)) if resize else 1.0
    small = tuple(max(2, int(round(s * f))) for s in shape)
    if small != shape:
        vol = sk_resize(vol, small + (vol.shape[-1],), order=1, mode="edge", preserve_range=True, anti_aliasing=True)
    struct = ndimage.generate_binary_structure(3, 1)
    masks = []
    for n in n_segments:
        seg = slic(vol, n_segments=int(n), compactness=compactness, channel_axis=-1, start_label=1,
                   enforce_connectivity=True)
        if small != shape:
            seg = sk_resize(seg, shape, order=0, preserve_range=True, mode="edge", anti_aliasing=False).astype(np.int32)
        for lab, box in enumerate(ndimage.find_objects(seg), start=1):
            if box is None:
                continue
            box = tuple(slice(max(0, b.start - dilation), min(d, b.stop + dilation)) for b, d in zip(box, shape))
            m = seg[box] == lab
            if dilation:
                m = ndimage.binary_dilation(m, structure=struct, iterations=dilation)
            coords = np.nonzero(m)
            masks.append(np.ravel_multi_index(tuple(c + b.start for c, b in zip(coords, box)), shape))
    return masks


def xrai_regions(attr: np.ndarray, masks: list[np.ndarray], min_diff: int = 50, algorithm: str = "full",
                 area_threshold: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """XRAI's region ranking (Kapishnikov et al. 2019, Algorithm 1) on a voxel attribution `attr` (*spatial).

    full: repeatedly add the mask whose new part has the highest attribution density (mean), dropping masks that
    add fewer than `min_diff` voxels, until `area_threshold` of the image is covered; fast: rank masks once by
    their own density, ignoring overlaps. Every region's voxels get its density; the voxels no mask reached form
    the last region with their own density. Returns (map, ranks): ranks 1..N partition the image (1 = best)."""
    from scipy import sparse

    flat_attr = attr.ravel().astype(np.float64)
    n = flat_attr.size
    out = np.full(n, -np.inf)
    current = np.zeros(n, bool)
    trace = []
    if algorithm not in ("full", "fast"):
        raise InvalidInput(f"unknown XRAI algorithm {algorithm!r}: 'full' or 'fast'")
    # masks (boolean arrays of attr's shape, or flat voxel indices) as a sparse (masks x voxels) incidence
    # matrix whose columns are sliced as voxels get covered
    idx = [np.flatnonzero(m) if m.dtype == bool else np.unique(np.asarray(m, dtype=np.int64)) for m in masks]
    rows = np.repeat(np.arange(len(idx)), [len(i) for i in idx])
    M = sparse.csc_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(idx) if idx else [])),
                          shape=(len(idx), n))
    counts = np.asarray(M.sum(1)).ravel()                 # voxels each mask would add
    sums = M @ flat_attr                                   # attribution they would add
    if algorithm == "fast":
        own = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
        for i in np.argsort(-own, kind="stable"):
            new = idx[i][~current[idx[i]]]
            if len(new) < min_diff:
                continue
            gain = flat_attr[new].mean()
            trace.append((new, gain))
            out[new] = gain
            current[new] = True
    else:
        alive = np.ones(len(idx), bool)
        while current.mean() <= area_threshold:
            alive &= counts >= min_diff
            if not alive.any():
                break
            gains = np.where(alive, sums / np.maximum(counts, 1), -np.inf)
            best = int(np.argmax(gains))
            new = idx[best][~current[idx[best]]]
            gain = flat_attr[new].mean()
            trace.append((new, gain))
            out[new] = gain
            current[new] = True
            alive[best] = False
            cols = M[:, new]                                # masks that also held the newly covered voxels
            counts -= np.asarray(cols.sum(1)).ravel()
            sums -= cols @ flat_attr[new]
    out = out.reshape(attr.shape)
    rest = out == -np.inf
    if rest.any():
        out[rest] = attr[rest].mean()
    ranks = np.zeros(n, int)
    trace.sort(key=lambda t: -t[1])
    for r, (new, _) in enumerate(trace, start=1):
        ranks[new] = r
    ranks = ranks.reshape(attr.shape)
    if rest.any():
        ranks[rest] = len(trace) + 1
    return out, ranks


def xrai(F, x, steps: int = 32, batch=None, baselines=("min", "max"), masks=None, algorithm=None,
         min_diff: int = 50, base_attribution=None, return_ranks: bool = False, segment_options=None, **_):
    """XRAI: IG averaged over black and white baselines (per channel min and max), reduced over channels by max,
    ranked over the over-segmentation (segments_2d or segments_3d with `segment_options`). Returns the map
    broadcast to x's shape (and the region ranks when return_ranks)."""
    seg_options = dict(segment_options or {})
    if base_attribution is None:
        igs = [integrated_gradients(F, x, make_baseline(x, b), steps=steps, batch=batch) for b in baselines]
        base_attribution = torch.stack(igs).mean(0)
    a = torch.as_tensor(base_attribution)[0].detach().cpu().numpy().astype(np.float64).max(0)
    img = x[0].detach().cpu().numpy()
    if masks is None:
        masks = segments_2d(img, **seg_options) if a.ndim == 2 else segments_3d(img, **seg_options)
    algorithm = algorithm or "full"
    out, ranks = xrai_regions(a, masks, min_diff=min_diff, algorithm=algorithm)
    m = torch.as_tensor(out, dtype=x.dtype, device=x.device).expand_as(x[0]).unsqueeze(0).clone()
    return (m, ranks) if return_ranks else m


_FUNCS = {"gradient": gradient, "smoothgrad": smoothgrad, "integrated_gradients": integrated_gradients,
          "guided_ig": guided_ig, "blur_ig": blur_ig, "xrai": xrai}
_NEEDS_BASELINE = {"integrated_gradients", "guided_ig"}


def n_evaluations(method: str, steps: int = 32, samples: int = 16, baselines: int = 2) -> int:
    """Forward+backward passes a method makes (the progress bar's total)."""
    return {"gradient": 1, "smoothgrad": samples, "integrated_gradients": steps, "guided_ig": steps,
            "blur_ig": steps, "xrai": baselines * steps}[method]


def attribute(model: nn.Module, x, method: str = "integrated_gradients", target: int = 1, region="predicted",
              baseline="zero", steps: int = 32, progress: bool = False, spatial_dims: int | None = None,
              **options) -> torch.Tensor:
    """Attribution map of x (C, *spatial) or (1, C, *spatial) for class `target` of `model`; returns x's shape.

    x is (1, C, *spatial) when its first axis is 1 and it has 4+ axes, else (C, *spatial); spatial_dims settles
    it otherwise (a one-channel 3D volume without the batch axis).
    Options: region (see the module doc); baseline ('zero', 'min', 'max', 'blur', a number or an array; IG and
    Guided IG); steps (path points); batch (path points per forward/backward chunk; default fits CHUNK_ELEMENTS);
    samples and noise (SmoothGrad); fraction and max_dist (Guided IG); max_sigma (Blur IG); algorithm
    ('full'/'fast'), masks, min_diff and segment_options (XRAI); progress (a tqdm bar over the passes).
    """
    m = method_name(method)
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
        total = n_evaluations(m, int(steps), int(options.get("samples", 16)))
        with tqdm(total=total, desc=f"{SHORT[m]} class {target}", disable=not progress, leave=False) as bar:
            Fc = _Counted(F, bar)
            kw = dict(options, steps=int(steps))
            if m in _NEEDS_BASELINE:
                kw["baseline"] = make_baseline(xb, baseline)
            out = _FUNCS[m](Fc, xb, **kw)
    finally:
        model.train(was_training)
    out = out.detach()
    return out if batched else out[0]
