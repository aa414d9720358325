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
holds: estimated on the resampled image, sigma^ came out 0.08-0.32 of the noise put in (bench/noise_grid.py). So
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

from . import MODALITIES
from .ops.haar import dwt

MAD_TO_SIGMA = 0.6745  # median |N(0, 1)|
NOISE_DICE_DROP = 0.05  # the Dice a region may lose and still count as holding up (noise_tolerance)
TOLERANCE_FILE = "noise_tolerance.json"
RESAMPLED_TOLERANCE_FILE = "noise_tolerance_resampled.json"
WHITE_GAIN = 0.95  # a resampling that keeps more of white noise's sigma than this kept it white (a flip of axes)
#: where a tolerance was measured, for noise kept white (False) and noise correlated by resampling (True)
TOLERANCE_FROM = {False: "clean held-out phantoms (bench/noise_tolerance)",
                  True: "phantoms on other grids with their own noise (bench/noise_grid)"}


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


def resampled_sigma_z(image: np.ndarray, sigma_own, gain) -> np.ndarray:
    """sigma_z per channel of a scan resampled onto the model's grid (`image`, (C, *S)): sigma^ estimated on its own
    grid (`sigma_own`, the scan's units; None for a channel without an estimate) times the share `gain` (one, or
    one per channel) of the noise's standard deviation the resampling kept, over the brain's standard deviation on
    the model's grid."""
    own = np.array([np.nan if v is None else v for v in sigma_own], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return own * np.asarray(gain, dtype=float) / brain_std(image)


def channel_gains(resampled: dict, channels: int) -> np.ndarray:
    """The share of white noise's sigma each of the first `channels` channels (in MODALITIES order) kept: the scan's
    resampling (`noise_gain`), or for a series a PACS study had resampled onto the scan's grid first, both
    resamplings (its `series` entry's `noise_gain`)."""
    gains = np.full(channels, float(resampled["noise_gain"]))
    for m, g in (resampled.get("series") or {}).items():
        gains[MODALITIES.index(m)] = g["noise_gain"]
    return gains


def assess(image: np.ndarray, model: str, version: str, modalities, table: dict | None = None,
           resampled: dict | None = None) -> dict:
    """The manifest's `input_noise`: sigma_z per modality of `image` (the scan on the model's grid), its largest,
    the tolerance measured for this model version (None when it was not measured) and `flags` (empty when the
    input is within it). `resampled`: what load_on_model_grid did to the scan, when it did (its `from_sigma`,
    `noise_gain` and `series`): sigma_z is then resampled_sigma_z, the entry also says the sigma_z on the scan's
    own grid and the gain, and a channel whose noise was correlated by resampling (gain at most WHITE_GAIN; above
    it, voxel centres moved onto voxel centres) is compared with the tolerance measured on resampled scans, the
    others with that of scans on the model's grid; `tolerance` is the one of the channel nearest to or furthest
    above its own (with `tolerance_by_modality` when the channels differ), `tolerance_from` where it was measured.
    `table`: the tolerances to compare every channel with (default: the package's, tolerances(resampled=...))."""
    r: dict = resampled or {}
    own = "from_sigma" in r
    gains = channel_gains(r, len(modalities)) if own else np.ones(len(modalities))
    s = resampled_sigma_z(image, r["from_sigma"], gains) if own else sigma_z(image)
    worst = float(np.nanmax(s)) if np.isfinite(s).any() else float("nan")
    # voxel centres that land on voxel centres (a flip of axes) leave the noise white: the model-grid tolerance holds
    correlated = [bool(own and g < WHITE_GAIN) for g in gains]
    tols = [(tolerances(resampled=c) if table is None else table).get(model, {}) for c in correlated]
    limit = [t.get("sigma_z") if t.get("version") == version else None for t in tols]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.array([v / t if t and np.isfinite(v) else -np.inf for v, t in zip(s, limit)])
    key = int(np.argmax(ratio)) if np.isfinite(ratio).any() else int(np.nanargmax(np.nan_to_num(s, nan=-np.inf)))
    method = "median |finest Haar detail| / 0.6745 inside the brain, over the brain's standard deviation"
    if own:
        method += (": on the scan's own grid, before it was resampled to the model's, times the share of white noise "
                   "the resampling keeps (noise_gain)")
    out: dict = {"sigma_z": {m: figure(v) for m, v in zip(modalities, s)}, "sigma_z_max": figure(worst),
                 "method": method, "tolerance": limit[key], "tolerance_from": TOLERANCE_FROM[correlated[key]],
                 "flags": []}
    if own:
        out["own_grid_sigma_z"] = {m: figure(v) for m, v in zip(modalities, r["from_sigma_z"])}
        out["noise_gain"] = r["noise_gain"]
        if r.get("series"):  # a PACS study's series resampled before the file was written: their own gains
            out["noise_gain_by_modality"] = {m: float(g) for m, g in zip(modalities, gains)}
    if len(set(limit)) > 1:
        out["tolerance_by_modality"] = dict(zip(modalities, limit))
    missing = sorted({"noise_grid" if c else "noise_tolerance" for c, t in zip(correlated, limit) if t is None})
    if missing:
        kinds = " and ".join("resampled scans" if b == "noise_grid" else "its grid" for b in missing)
        out["note"] = (f"the noise tolerance of {model} {version[:19]} on {kinds} was not measured ("
                       + ", ".join(f"python -m sparsesight.bench.{b}" for b in missing) + ")")
    mixed = len(set(correlated)) > 1
    for m, v, t, c in zip(modalities, s, limit, correlated):
        if t is None or not np.isfinite(v) or v <= t or (not mixed and v < worst):
            continue  # one flag for the worst channel, or (channels of both kinds) one per channel over its own
        out["flags"].append(
            f"input noise sigma_z {v:.3f}{f' ({m})' if mixed else ''} is above {t:.3f}, the most at which this "
            f"model's Dice was measured to stay within {NOISE_DICE_DROP} of its Dice on {TOLERANCE_FROM[c]}: "
            f"the segmentation may be wrong")
    return out
