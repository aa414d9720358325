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
