"""XRAI (Kapishnikov et al. 2019, Algorithm 1): IG with black and white baselines ranked over an
over-segmentation (Felzenszwalb in 2D, SLIC supervoxels in 3D, several scales, dilated) by attribution density."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..errors import InvalidInput
from .gradients import integrated_gradients, make_baseline


# ----------------------------------------------------------------------------------------------- XRAI
def segments_2d(image: np.ndarray, scales=(50, 100, 150, 250, 500, 1200), sigma: float = 0.8, min_size: int = 150,
                resize: int = 224, dilation: int = 5) -> list[np.ndarray]:
    """XRAI's over-segmentation of a (C, H, W) image (Kapishnikov et al. 2019, Sec. 3.1): Felzenszwalb at several
    scales on the image rescaled to [-1, 1] and resized to resize^2, every segment a mask, dilated by a disk."""
    from skimage.morphology import dilation as dilate
    from skimage.morphology import disk
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
         min_diff: int = 50, base_attribution=None, return_ranks: bool = False, segment_options=None):
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

