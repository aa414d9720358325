"""Whether a segmentation survives mirroring its input left-right, and whether the weights were measured to be
wrong when it does not.

The noise and slice checks (input_noise, input_grid) look at the input; some failures come with inputs that pass
both: SUM labels healthy cortex as tumour on two of the off-grid tumours made on the plain 1 mm grid, clean scans
(bench/off_grid_ablation). What such labels share is that the model is unsure of them: the label changes when the
scan is mirrored left-right (a test-time augmentation, Wang et al. 2019, Neurocomputing 338: 34-45; the models are
trained with flips along every axis, so the mirrored scan is one they were trained on). `agreement` is the Dice, per
BraTS region, between the served label and the label of the mirrored scan mirrored back (one more forward pass).

`bench/label_consistency.py` measures, per model version, the agreement and the true Dice of every segmentation of
the held-out, off-grid and plain-grid phantoms, and records as each region's threshold the least agreement of any
segmentation whose Dice met the issue-17 aim there (data/label_consistency.json, shipped with the package): below it,
no segmentation of the benchmark was good. `assess` compares a segmentation with it: a label that agrees with its
mirror less than that is flagged in its bundle.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from . import REGIONS
from .metrics import region_dice

THRESHOLD_FILE = "label_consistency.json"
#: the Dice aims a segmentation must meet to count as good when the thresholds are measured (issue 17)
AIMS = {"WT": 0.90, "TC": 0.80, "ET": 0.75}


def lr_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs left-right in the scanner's frame (the one whose column of the affine points
    most along x)."""
    return int(np.argmax(np.abs(np.asarray(affine, dtype=np.float64)[0, :3])))


@torch.no_grad()
def mirrored_label(model, x: torch.Tensor, axis: int, **forward) -> np.ndarray:
    """The label (X, Y, Z) uint8 the model gives the normalised scan x (1, C, X, Y, Z) mirrored along voxel `axis`,
    mirrored back: argmax of f(T x) read through T^-1. One whole-volume pass, as the bundle's own label;
    `forward`: the model's forward options the bundle's label was made with (SUM's alpha)."""
    dims = (axis + 2,)
    logits = model.eval()(torch.flip(x, dims), **forward)
    return torch.flip(logits, dims)[0].argmax(0).cpu().numpy().astype(np.uint8)


def agreement(label: np.ndarray, mirrored: np.ndarray) -> dict[str, float]:
    """Dice per BraTS region between the served label and the mirrored scan's (1.0: the same label)."""
    return region_dice(mirrored, label)


@lru_cache(maxsize=1)
def thresholds() -> dict:
    """{model: {"version", "threshold": {region: agreement}, ...}} of data/label_consistency.json ({} when the
    package has none)."""
    path = resources.files("sparsesight") / "data" / THRESHOLD_FILE
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def assess(agree: dict[str, float], model: str, version: str, table: dict | None = None,
           unmeasured: str | None = None) -> dict:
    """The manifest's `label_consistency`: the agreement per region, its least, the thresholds measured for this
    model version (None when they were not measured, or when `unmeasured` says why they do not apply) and `flags`
    (empty when every region agrees at least that much). `table`: the thresholds to compare with (default: the
    package's, thresholds())."""
    rec = (thresholds() if table is None else table).get(model, {})
    measured = rec.get("version") == version and unmeasured is None
    out: dict = {"mirror": "left-right", "agreement": {r: round(float(agree[r]), 4) for r in REGIONS},
                 "least_agreement": round(float(min(agree[r] for r in REGIONS)), 4),
                 "threshold": dict(rec["threshold"]) if measured else None, "flags": []}
    if not measured:
        out["note"] = unmeasured or (f"the label consistency of {model} {version[:19]} was not measured "
                                     f"(python -m sparsesight.bench.label_consistency)")
        return out
    low = [r for r in REGIONS if rec["threshold"].get(r) is not None and agree[r] < rec["threshold"][r]]
    if low:
        out["flags"].append(
            "the label changes when the scan is mirrored left-right: "
            + ", ".join(f"{r} agreement {agree[r]:.3f} < {rec['threshold'][r]:.3f}" for r in low)
            + ", less than any segmentation that met the Dice aims on held-out phantoms (bench/label_consistency): "
              "the model is unsure of this label; review it before use")
    return out
