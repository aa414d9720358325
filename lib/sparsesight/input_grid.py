"""How thick the input's slices are, and whether the served weights were measured to hold up on such slices.

A scan of thick slices reaches a model trained at 1 mm resampled (runners.segmentation.load_on_model_grid), but
resampling cannot bring back what the slice profile averaged away: a 2-4 mm enhancing rim or a thin core seen
through 3 mm slices. `bench/slice_tolerance.py` measures the shipped weights' Dice on held-out phantoms whose slices
were made thicker (the off-grid generator's slice profile, data/phantom/variety.regrid) and records, per model
version, the thickest slice at which every region's Dice stayed within SLICE_DICE_DROP of its 1 mm Dice
(data/slice_tolerance.json, shipped with the package). `assess` compares an input's largest voxel size with it: a
segmentation of a scan with thicker slices than any the weights were measured on is flagged in its bundle.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

from .input_noise import NOISE_DICE_DROP

SLICE_DICE_DROP = NOISE_DICE_DROP  # the Dice a region may lose and still count as holding up
TOLERANCE_FILE = "slice_tolerance.json"
#: a voxel this much larger than the tolerance still counts as within it (scanners round slice thickness)
SLACK = 0.02


@lru_cache(maxsize=1)
def tolerances() -> dict:
    """{model: {"version", "slice_mm", ...}} of data/slice_tolerance.json ({} when the package has none)."""
    path = resources.files("sparsesight") / "data" / TOLERANCE_FILE
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def assess(voxel: np.ndarray | list, model: str, version: str, table: dict | None = None,
           series: dict | None = None) -> dict:
    """The manifest's `input_grid`: the input's voxel size (before any resampling to the model's grid), its
    largest (the slice thickness of a 2D acquisition), the thickest slice measured to hold up for this model
    version (None when it was not measured) and `flags` (empty when the input is within it). `series`: {channel:
    voxel size} of series resampled onto the input's grid before it was written (a PACS study): the slice thickness
    is then the thickest of them all, and `series_voxel_mm` lists them. `table`: the tolerances to compare with
    (default: the package's, tolerances())."""
    v = [round(float(x), 3) for x in voxel]
    own = {c: [round(float(x), 3) for x in mm] for c, mm in (series or {}).items()}
    thickest = max([*v, *(max(mm) for mm in own.values())])
    coarsest = next((c for c, mm in own.items() if max(mm) == thickest and thickest > max(v)), None)
    tol = (tolerances() if table is None else table).get(model, {})
    measured = tol.get("version") == version
    out: dict = {"voxel_mm": v, "slice_mm": thickest, "tolerance_mm": tol.get("slice_mm") if measured else None,
                 "flags": []}
    if own:
        out["series_voxel_mm"] = own
    if not measured:
        out["note"] = (f"the slice-thickness tolerance of {model} {version[:19]} was not measured "
                       f"(python -m sparsesight.bench.slice_tolerance)")
    elif thickest > tol["slice_mm"] * (1 + SLACK):
        where = f" (the {coarsest} series, resampled onto the scan's grid)" if coarsest else ""
        out["flags"].append(
            f"voxels up to {thickest:.2f} mm{where} are thicker than {tol['slice_mm']:.2f} mm, the most at which this "
            f"model's Dice was measured to stay within {SLICE_DICE_DROP} of its 1 mm Dice on held-out phantoms "
            f"(bench/slice_tolerance): the tumour core and enhancing rim may be missed")
    return out
