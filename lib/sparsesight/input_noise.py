"""How noisy an input scan is, and whether the served weights were measured to hold up on such noise.

The noise sigma of each channel comes from its finest wavelet detail: Donoho and Johnstone's robust estimate
sigma^ = median(|d|) / 0.6745 over the coefficients d of the one-level orthonormal Haar band that is high-pass
along every axis (ops.haar.dwt, band 2**dims - 1), taken over the 2x2x2 blocks lying wholly inside the brain
(non-zero voxels). Smooth anatomy hardly reaches that band; white noise keeps its sigma there (the transform is
orthonormal). It is reported in the units the networks see, the z-scored image's: sigma_z = sigma^ / the brain's
standard deviation (1 = as strong as the whole brain's contrast; noise of s brain-std units gives s / sqrt(1 + s^2)).

`bench/noise_tolerance.py` measures the shipped weights' Dice on held-out phantoms with added noise and records, per
model version, the largest sigma_z at which every region's Dice stayed within NOISE_DICE_DROP of the clean Dice
(data/noise_tolerance.json, shipped with the package). `assess` compares an input with that: a segmentation of a
scan noisier than any the weights were measured on is flagged in its bundle.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from .ops.haar import dwt

MAD_TO_SIGMA = 0.6745  # median |N(0, 1)|
NOISE_DICE_DROP = 0.05  # the Dice a region may lose and still count as holding up (noise_tolerance)
TOLERANCE_FILE = "noise_tolerance.json"


def sigma_hat(image: np.ndarray) -> np.ndarray:
    """sigma^ per channel of a (C, *S) scan (2D or 3D): median(|HH..H|) / 0.6745 over the blocks inside the brain,
    in the scan's own units; nan for a channel with no such block."""
    dims = image.ndim - 1
    K = 2**dims
    even = tuple(slice(0, s - s % 2) for s in image.shape[1:])
    x = torch.from_numpy(np.ascontiguousarray(image[(slice(None), *even)], dtype=np.float32))
    brain = (x != 0).any(0)
    pool = torch.nn.functional.avg_pool3d if dims == 3 else torch.nn.functional.avg_pool2d
    inside = (pool(brain[None, None].float(), 2)[0, 0] == 1).numpy()
    detail = dwt(x[None], dims)[0].reshape(x.shape[0], K, *inside.shape)[:, K - 1].numpy()
    return np.array([np.median(np.abs(d[inside])) / MAD_TO_SIGMA if inside.any() else np.nan for d in detail])


def sigma_z(image: np.ndarray) -> np.ndarray:
    """sigma^ per channel over the standard deviation of that channel's brain voxels: the noise in the units of
    the z-scored image the networks see (runners.segmentation.normalise)."""
    brain = np.any(image != 0, axis=0)
    std = np.array([float(c[brain].std()) if brain.any() else np.nan for c in image])
    with np.errstate(invalid="ignore", divide="ignore"):
        return sigma_hat(image) / std


@lru_cache(maxsize=1)
def tolerances() -> dict:
    """{model: {"version", "sigma_z", ...}} of data/noise_tolerance.json ({} when the package has none)."""
    path = resources.files("sparsesight") / "data" / TOLERANCE_FILE
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def assess(image: np.ndarray, model: str, version: str, modalities, table: dict | None = None) -> dict:
    """The manifest's `input_noise`: sigma_z per modality, its largest, the tolerance measured for this model
    version (None when it was not measured) and `flags` (empty when the input is within it). `table`: the
    tolerances to compare with (default: the package's, tolerances())."""
    s = sigma_z(image)
    worst = float(np.nanmax(s)) if np.isfinite(s).any() else float("nan")
    tol = (tolerances() if table is None else table).get(model, {})
    measured = tol.get("version") == version
    figure = lambda v: round(float(v), 4) if np.isfinite(v) else None  # noqa: E731  (JSON has no NaN)
    out = {"sigma_z": {m: figure(v) for m, v in zip(modalities, s)}, "sigma_z_max": figure(worst),
           "method": "median |finest Haar detail| / 0.6745 inside the brain, over the brain's standard deviation",
           "tolerance": tol.get("sigma_z") if measured else None, "flags": []}
    if not measured:
        out["note"] = (f"the noise tolerance of {model} {version[:19]} was not measured "
                       f"(python -m sparsesight.bench.noise_tolerance)")
    elif np.isfinite(worst) and worst > tol["sigma_z"]:
        out["flags"].append(
            f"input noise sigma_z {worst:.3f} is above {tol['sigma_z']:.3f}, the most at which this model's Dice was "
            f"measured to stay within {NOISE_DICE_DROP} of its clean Dice on held-out phantoms "
            f"(bench/noise_tolerance): the segmentation may be wrong")
    return out
