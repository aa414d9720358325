"""Held-out evaluation of a segmentation model as it is served: Dice per BraTS region of the label that
runners.segmentation.predict_file gives (whole image, resampled to the model's grid and back), per case and mean.
Used for the shipped weights' cards (pretrain.py) and the cards of models retrained in the app."""
from __future__ import annotations

import numpy as np

from ..data.io import load_label
from ..metrics import grid_ceiling_dice, region_dice


def mean_dice(per_case: list[dict]) -> dict:
    """Mean of each region over the cases (other keys, e.g. "case", ignored)."""
    regions = [k for k in per_case[0] if k != "case"]
    return {r: round(float(np.mean([d[r] for d in per_case])), 4) for r in regions}


def evaluate(model, items: list[dict]) -> tuple[dict, list[dict]]:
    """(mean Dice per region, per-case Dice with the case id) of `items` = [{"image", "label", "id"}]."""
    from ..runners.segmentation import predict_file

    per_case = []
    for it in items:
        label, _ = load_label(it["label"])
        per_case.append({"case": it["id"], **region_dice(predict_file(model, it["image"])[0], label)})
    return mean_dice(per_case), per_case


def grid_ceiling(items: list[dict], factor: int) -> tuple[dict, list[dict]]:
    """(mean, per-case) Dice that the labels of `items` keep on a grid `factor` times coarser
    (metrics.grid_ceiling_dice): what a read-out on that grid reaches at best."""
    per_case = [{"case": it["id"], **grid_ceiling_dice(load_label(it["label"])[0], factor)} for it in items]
    return mean_dice(per_case), per_case
