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

A scan on another grid than the model's is resampled before it is segmented (runners.segmentation.
load_on_model_grid), and interpolation turns its white noise into correlated noise that the finest band no longer
holds: estimated on the resampled image, sigma^ came out 0.11-0.33 of the noise put in (bench/noise_grid.py). So
sigma^ is estimated on the scan's own grid, where its noise is white, and times the share g of white noise's
standard deviation the resampling keeps (runners.segmentation.interpolation_noise_gain: about 0.55 for unaligned
grids, 1 for a mere flip of axes): the noise per voxel the network sees, in its z-scored units. Correlated noise
is not white noise of the same sigma to a network, so a resampled scan is compared with a tolerance of its own,
measured on phantoms on other grids with white noise on their own grid (bench/noise_grid.py,
data/noise_tolerance_resampled.json).
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
RESAMPLED_TOLERANCE_FILE = "noise_tolerance_resampled.json"
WHITE_GAIN = 0.95  # a resampling that keeps more of white noise's sigma than this kept it white (a flip of axes)


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


def figure(v) -> float | None:
    """A manifest's figure: rounded to 4 decimals, None for a missing or non-finite one (JSON has no NaN)."""
    return round(float(v), 4) if v is not None and np.isfinite(v) else None


def brain_std(image: np.ndarray) -> np.ndarray:
    """The standard deviation of each channel over the brain (voxels non-zero in any channel); nan without one."""
    brain = np.any(image != 0, axis=0)
    return np.array([float(c[brain].std()) if brain.any() else np.nan for c in image])


def sigma_z(image: np.ndarray) -> np.ndarray:
    """sigma^ per channel over the standard deviation of that channel's brain voxels: the noise in the units of
    the z-scored image the networks see (runners.segmentation.normalise)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sigma_hat(image) / brain_std(image)


@lru_cache(maxsize=2)
def tolerances(resampled: bool = False) -> dict:
    """{model: {"version", "sigma_z", ...}} of data/noise_tolerance.json, measured on scans on the model's grid
    (bench/noise_tolerance), or with `resampled` of data/noise_tolerance_resampled.json, measured on scans resampled
    onto it (bench/noise_grid); {} when the package has none."""
    path = resources.files("sparsesight") / "data" / (RESAMPLED_TOLERANCE_FILE if resampled else TOLERANCE_FILE)
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def resampled_sigma_z(image: np.ndarray, sigma_own, gain: float) -> np.ndarray:
    """sigma_z per channel of a scan resampled onto the model's grid (`image`, (C, *S)): sigma^ estimated on its own
    grid (`sigma_own`, the scan's units; None for a channel without an estimate) times the share `gain` of the
    noise's standard deviation the resampling kept, over the brain's standard deviation on the model's grid."""
    own = np.array([np.nan if v is None else v for v in sigma_own], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return own * gain / brain_std(image)


def assess(image: np.ndarray, model: str, version: str, modalities, table: dict | None = None,
           resampled: dict | None = None) -> dict:
    """The manifest's `input_noise`: sigma_z per modality of `image` (the scan on the model's grid), its largest,
    the tolerance measured for this model version (None when it was not measured) and `flags` (empty when the
    input is within it). `resampled`: what load_on_model_grid did to the scan, when it did (its `from_sigma` and
    `noise_gain`): sigma_z is then resampled_sigma_z, the entry also says the sigma_z on the scan's own grid and
    the gain, and the tolerance is the one measured on resampled scans (unless the gain is above WHITE_GAIN: voxel
    centres moved onto voxel centres). `table`: the tolerances to compare with (default: the package's,
    tolerances(resampled=...))."""
    own = resampled is not None and "from_sigma" in resampled
    s = resampled_sigma_z(image, resampled["from_sigma"], resampled["noise_gain"]) if own else sigma_z(image)
    worst = float(np.nanmax(s)) if np.isfinite(s).any() else float("nan")
    # voxel centres that land on voxel centres (a flip of axes) leave the noise white: the model-grid tolerance holds
    correlated = own and resampled["noise_gain"] < WHITE_GAIN  # type: ignore[index]
    tol = (tolerances(resampled=correlated) if table is None else table).get(model, {})
    measured = tol.get("version") == version
    method = "median |finest Haar detail| / 0.6745 inside the brain, over the brain's standard deviation"
    if own:
        method += (": on the scan's own grid, before it was resampled to the model's, times the share of white noise "
                   "the resampling keeps (noise_gain)")
    out: dict = {"sigma_z": {m: figure(v) for m, v in zip(modalities, s)}, "sigma_z_max": figure(worst),
                 "method": method, "tolerance": tol.get("sigma_z") if measured else None, "flags": []}
    if own:
        out["own_grid_sigma_z"] = {m: figure(v) for m, v in zip(modalities, resampled["from_sigma_z"])}
        out["noise_gain"] = resampled["noise_gain"]
    bench = "noise_grid" if correlated else "noise_tolerance"
    if not measured:
        out["note"] = (f"the noise tolerance of {model} {version[:19]} on {'resampled scans' if correlated else 'its grid'} "
                       f"was not measured (python -m sparsesight.bench.{bench})")
    elif np.isfinite(worst) and worst > tol["sigma_z"]:
        out["flags"].append(
            f"input noise sigma_z {worst:.3f} is above {tol['sigma_z']:.3f}, the most at which this model's Dice was "
            f"measured to stay within {NOISE_DICE_DROP} of its Dice on "
            + ("phantoms on other grids with their own noise (bench/noise_grid)" if correlated else
               "clean held-out phantoms (bench/noise_tolerance)") + ": the segmentation may be wrong")
    return out
