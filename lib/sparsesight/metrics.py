"""Segmentation metrics on BraTS regions (WT = {1,2,3}, TC = {2,3}, ET = {3})."""
from __future__ import annotations

import numpy as np

from . import REGIONS


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice = 2|A and B| / (|A| + |B|); 1.0 when both masks are empty (nothing to find, nothing found)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def region_dice(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Dice of each BraTS region between two label maps with values 0..3."""
    return {r: dice(np.isin(pred, c), np.isin(label, c)) for r, c in REGIONS.items()}


def grid_ceiling_dice(label: np.ndarray, factor: int) -> dict[str, float]:
    """Dice per BraTS region of `label` after a trip through a grid `factor` times coarser: its one-hot averaged over
    factor^3 blocks, trilinearly upsampled and arg-maxed, as a read-out at 1/factor resolution is (MLCSC's
    logits). What a model reading out on that grid can reach with class probabilities equal to the true block
    fractions; thin structures (the enhancing rim, small lesions) lose most."""
    import torch
    import torch.nn.functional as F

    y = torch.from_numpy(np.asarray(label, np.int64))
    if factor <= 1:
        return region_dice(label, label)
    onehot = F.one_hot(y, 4).permute(3, 0, 1, 2)[None].float()
    pads = [p for d in reversed(y.shape) for p in (0, (-d) % factor)]
    coarse = F.avg_pool3d(F.pad(onehot, pads), factor)
    up = F.interpolate(coarse, scale_factor=factor, mode="trilinear", align_corners=False)
    pred = up[0, :, : y.shape[0], : y.shape[1], : y.shape[2]].argmax(0).numpy()
    return region_dice(pred, label)


# ---------------------------------------------------------------------- reconstruction (seed 001, Section 2.4)
def _masked(a: np.ndarray, b: np.ndarray, mask):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return a, b, (np.ones(a.shape, bool) if mask is None else np.asarray(mask, bool))


def mse(x: np.ndarray, ref: np.ndarray, mask=None) -> float:
    """Mean squared error (1/|M|) sum_{i in M} (x_i - ref_i)^2 over the mask M (all pixels by default)."""
    x, ref, m = _masked(x, ref, mask)
    return float(np.mean((x[m] - ref[m]) ** 2))


def ssim(x: np.ndarray, ref: np.ndarray, mask=None, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004; skimage, 7x7 uniform window, K1 0.01, K2 0.03) averaged over the
    mask M; data_range defaults to ref's max - min over the image."""
    from skimage.metrics import structural_similarity

    x, ref, m = _masked(x, ref, mask)
    if data_range is None:
        data_range = float(ref.max() - ref.min()) or 1.0
    _, smap = structural_similarity(x, ref, data_range=data_range, full=True)
    return float(smap[m].mean())


def blur(x: np.ndarray, mask=None, h_size: int = 11) -> float:
    """No-reference blur metric of Crete-Roffet et al. 2007 (skimage.measure.blur_effect; 0 sharp .. 1 blurred)
    on the bounding box of the mask (the whole image by default); the higher, the blurrier."""
    from skimage.measure import blur_effect

    x = np.asarray(x, np.float64)
    if mask is not None and np.any(mask):
        idx = np.nonzero(mask)
        x = x[tuple(slice(i.min(), i.max() + 1) for i in idx)]
    return float(blur_effect(x, h_size=h_size))
