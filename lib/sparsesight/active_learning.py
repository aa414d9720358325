"""Active learning: scores that say which unlabelled image to annotate next, from a model's own outputs.

Two scores of an image x (C modalities, normalised as in training), both "higher = annotate first":

- sparse residual (SparseSight's own signal): how poorly the learned dictionaries explain the image,
  normalised per image,

      R(x) = sum_i sum_{v in Omega} (x_i(v) - s_i xhat_i(v))^2 / sum_i sum_{v in Omega} x_i(v)^2 ,
      s_i  = <x_i, xhat_i>_Omega / ||xhat_i||^2_Omega   (least-squares gain per modality i),

  i.e. R = 1 - sum_i <x_i, xhat_i>^2 / ||xhat_i||^2 / ||x||^2 in [0, 1],

  with xhat the model's synthesis of the image -- for ML-CSC xhat^(i) = sum_c Phi_c^(i) gamma_c (seed 000,
  eq. 2/4: "reconstruction", and its residual_energy = sum_i (x^(i) - xhat^(i))^2 per voxel); for SUM the
  linear reconstruction ED_{alpha=0}(x) of seed 003 (eq. 15: "ed_linear") -- and Omega the brain (voxels
  where any modality is non-zero, the voxels the intensity normalisation uses). An image unlike the ones
  the dictionaries were learned on leaves more energy in the residual. The gain s_i makes R blind to the
  overall scale of the synthesis, which a segmentation loss alone leaves undetermined (ML-CSC's components
  are only ever read through the classifier); for a model trained to reconstruct (SUM's eq. 13) s_i ~ 1.
  With s_i = 1 (`fit_gain=False`, or when a model gives only its residual_energy) R is the plain
  ||x - xhat||^2 / ||x||^2.

- epistemic (test-time augmentation, as MONAI Label's epistemic scoring does with dropout samples): with R
  exactly invertible transforms T_r (flips), p_r(v) = T_r^{-1} softmax f(T_r x) (v) and pbar = mean_r p_r,

      predictive entropy    H[pbar](v)  = - sum_k pbar_k log pbar_k
      expected entropy      E_r H[p_r](v)
      mutual information    I(v) = H[pbar](v) - E_r H[p_r](v)          (BALD, Houlsby et al. 2011)
      variance              V(v) = sum_k Var_r p_{r,k}(v)

  and the image score is the brain mean of H[pbar] (MONAI Label's entropy score); the others are kept.

- hybrid: rank fusion of the two (rank_fusion: the mean of each image's fractional rank under each score), so
  an image both poorly explained by the dictionaries and uncertain to the classifier comes first; no scale to tune.

ScoreCache keeps the scores of one model version in a JSON file; a new model version empties it.
Nothing here imports monailabel: the app's scoring methods and strategies call these functions.
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from .errors import InvalidInput

#: the default test-time augmentations: identity and the flip of each spatial axis (their own inverses)
FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,))
#: interpret() outputs that hold a synthesis of the input, in order of preference
RECONSTRUCTION_KEYS = ("ed_linear", "reconstruction_alpha0", "reconstruction")


# ------------------------------------------------------------------------------------------- the maths
def brain_mask(image: np.ndarray) -> np.ndarray:
    """Omega: voxels (X, Y, Z) where any modality of the raw (C, X, Y, Z) image is non-zero."""
    image = np.asarray(image)
    if image.ndim != 4:
        raise InvalidInput(f"expected a (C, X, Y, Z) image; got shape {image.shape}")
    return (image != 0).any(0)


def _as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def gains(x, xhat, mask=None) -> np.ndarray:
    """s_i = <x_i, xhat_i> / ||xhat_i||^2 over Omega for each channel i (0 where xhat_i = 0): least squares."""
    x, xhat = _as_numpy(x).astype(np.float64), _as_numpy(xhat).astype(np.float64)
    m = np.ones(x.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    num, den = (x[:, m] * xhat[:, m]).sum(1), (xhat[:, m] ** 2).sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def relative_residual(x, xhat, mask=None, fit_gain: bool = True) -> float:
    """R = sum_i sum_Omega (x_i - s_i xhat_i)^2 / sum_i sum_Omega x_i^2 for x, xhat (C, X, Y, Z) and Omega the
    mask (X, Y, Z); s_i the least-squares gains (`gains`), or 1 with fit_gain=False."""
    x, xhat = _as_numpy(x).astype(np.float64), _as_numpy(xhat).astype(np.float64)
    if x.shape != xhat.shape:
        raise InvalidInput(f"reconstruction shape {xhat.shape} differs from the image's {x.shape}")
    s = gains(x, xhat, mask) if fit_gain else np.ones(x.shape[0])
    return relative_residual_from_energy(((x - s.reshape(-1, *[1] * (x.ndim - 1)) * xhat) ** 2).sum(0), x, mask)


def relative_residual_from_energy(residual_energy, x, mask=None) -> float:
    """R from the per-voxel residual energy e(v) = ||x(v) - xhat(v)||^2 (X, Y, Z) and x (C, X, Y, Z)."""
    e, x = _as_numpy(residual_energy).astype(np.float64), _as_numpy(x).astype(np.float64)
    if e.shape != x.shape[1:]:
        raise InvalidInput(f"residual energy shape {e.shape} differs from the image's spatial shape {x.shape[1:]}")
    m = np.ones(e.shape, bool) if mask is None else np.asarray(mask, bool)
    denominator = float((x[:, m] ** 2).sum())
    if denominator <= 0:
        raise InvalidInput("the image is zero inside the brain mask: nothing to reconstruct")
    return float(e[m].sum() / denominator)


def entropy(p: np.ndarray, axis: int = 0) -> np.ndarray:
    """H[p] = -sum_k p_k log p_k over `axis` (natural log; 0 log 0 = 0)."""
    p = np.asarray(p, np.float64)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis)


def predictive_entropy(p: np.ndarray) -> np.ndarray:
    """H[pbar] for samples p (R, K, ...) of class probabilities: entropy of their mean."""
    return entropy(np.asarray(p, np.float64).mean(0), axis=0)


def expected_entropy(p: np.ndarray) -> np.ndarray:
    """E_r H[p_r] for p (R, K, ...)."""
    return entropy(p, axis=1).mean(0)


def mutual_information(p: np.ndarray) -> np.ndarray:
    """BALD I = H[pbar] - E_r H[p_r] >= 0 for p (R, K, ...): the part of the uncertainty the samples disagree on."""
    return np.maximum(predictive_entropy(p) - expected_entropy(p), 0.0)


def variance(p: np.ndarray) -> np.ndarray:
    """V = sum_k Var_r p_{r,k} for p (R, K, ...) (population variance over the samples)."""
    return np.asarray(p, np.float64).var(0).sum(0)


def rank(scores: Mapping[str, float]) -> list[str]:
    """Image ids by decreasing score (ties by id, so the order is reproducible); NaN scores last."""
    return sorted(scores, key=lambda k: (not np.isfinite(scores[k]), -scores[k] if np.isfinite(scores[k]) else 0, k))


def rank_fusion(*scores: Mapping[str, float]) -> dict[str, float]:
    """Scale-free combination of several scores of the same images ("higher = annotate first"): each image's
    mean over the scores of its fractional rank q = (number of images scored lower) / (n - 1) in [0, 1] (ties
    share their mean rank; a single image gets 1). Only images every score has (finite) are kept, so a score
    missing for an image never counts as lowest."""
    common = set.intersection(*(set(k for k, v in s.items() if v is not None and np.isfinite(v)) for s in scores))
    ids = sorted(common)
    if not ids:
        return {}
    if len(ids) == 1:
        return {ids[0]: 1.0}
    q = np.mean([(rankdata([s[i] for i in ids]) - 1) / (len(ids) - 1) for s in scores], axis=0)
    return {i: float(v) for i, v in zip(ids, q)}


def area_under_curve(n_labels: Sequence[float], dice: Sequence[float]) -> float:
    """Normalised area under the Dice-vs-labels curve: trapezoid integral / (n_max - n_min), in [0, 1].

    It is the mean Dice over the labelling budget; one point gives that point's Dice."""
    n, d = np.asarray(n_labels, np.float64), np.asarray(dice, np.float64)
    if n.shape != d.shape or n.ndim != 1 or n.size == 0:
        raise InvalidInput("need equally long, non-empty sequences of label counts and Dice values")
    if np.any(np.diff(n) <= 0):
        raise InvalidInput("label counts must increase")
    if n.size == 1:
        return float(d[0])
    return float(((d[1:] + d[:-1]) / 2 * np.diff(n)).sum() / (n[-1] - n[0]))


# ------------------------------------------------------------------------------------------- from a model
def _interpret(model, x: torch.Tensor) -> dict:
    """model.interpret(x), without ML-CSC's per-channel logit contributions (not needed, K_L volumes per class)."""
    params = inspect.signature(model.interpret).parameters
    kwargs = {"contributions": False} if "contributions" in params else {}
    with torch.no_grad():
        return model.interpret(x, **kwargs)


def residual_from_outputs(outputs: Mapping[str, torch.Tensor], x: torch.Tensor, mask=None) -> float:
    """R(x) from a model's interpret() outputs for one image x (1, C, X, Y, Z).

    Uses, in this order: "ed_linear" (SUM's ED_{alpha=0}(x)), "reconstruction_alpha0", "reconstruction"
    (ML-CSC's sum_c Phi_c gamma_c) (B, C, X, Y, Z) with fitted gains; else "residual_energy" (B, X, Y, Z)
    with gain 1. Raises InvalidInput when the model reconstructs nothing."""
    for key in RECONSTRUCTION_KEYS:
        if key in outputs:
            return relative_residual(x[0], outputs[key][0], mask)
    if "residual_energy" in outputs:
        return relative_residual_from_energy(outputs["residual_energy"][0], x[0], mask)
    raise InvalidInput("the model's interpret() gives no reconstruction or residual: it cannot be scored by "
                       "its sparse residual (outputs: " + ", ".join(sorted(outputs)) + ")")


def has_reconstruction(model) -> bool:
    """True for models whose interpret() is expected to give a synthesis of the image (ML-CSC, SUM)."""
    return callable(getattr(model, "interpret", None))


def sparse_residual_score(model, image: np.ndarray, device="cpu") -> dict:
    """{"score": R(x), "brain_voxels"} of a raw (C, X, Y, Z) image, normalised as in training."""
    from .runners.segmentation import normalise

    if not has_reconstruction(model):
        raise InvalidInput(f"{type(model).__name__} has no interpret(): no reconstruction to score")
    mask = brain_mask(image)
    x = normalise(image).to(device)
    model = model.to(device).eval()
    outputs = _interpret(model, x)
    return {"score": residual_from_outputs({k: v.cpu() for k, v in outputs.items() if isinstance(v, torch.Tensor)},
                                           x.cpu(), mask),
            "brain_voxels": int(mask.sum())}


def tta_probabilities(model, image: np.ndarray, device="cpu", flips: Iterable[tuple[int, ...]] = FLIPS) -> np.ndarray:
    """p (R, K, X, Y, Z): softmax of the model on each flipped image, flipped back (p_r = T_r^{-1} f(T_r x)).

    One whole-volume pass per sample (as the result bundle does), not the sliding window: R passes per image."""
    from .runners.segmentation import normalise

    x = normalise(image).to(device)
    model = model.to(device).eval()
    out = []
    with torch.no_grad():
        for axes in flips:
            sp = tuple(a + 2 for a in axes)  # spatial axes of the (1, C, X, Y, Z) tensor
            xr = torch.flip(x, sp) if sp else x
            p = torch.softmax(model(xr), 1)
            out.append((torch.flip(p, sp) if sp else p)[0].cpu().numpy())
    return np.stack(out)


def epistemic_score(model, image: np.ndarray, device="cpu", flips: Iterable[tuple[int, ...]] = FLIPS) -> dict:
    """Brain means of H[pbar] ("score"), mutual information and variance over the TTA samples."""
    flips = list(flips)
    if len(flips) < 2:
        raise InvalidInput("test-time augmentation needs at least 2 transforms to measure disagreement")
    mask = brain_mask(image)
    p = tta_probabilities(model, image, device, flips)
    return {"score": float(predictive_entropy(p)[mask].mean()),
            "mutual_information": float(mutual_information(p)[mask].mean()),
            "variance": float(variance(p)[mask].mean()),
            "samples": len(flips)}


# ------------------------------------------------------------------------------------------- the cache
def file_fingerprint(path) -> list:
    """[size, mtime_ns] of a file: a replaced image gets a new fingerprint (and its score is recomputed)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


class ScoreCache:
    """Scores of one model version for one scoring method, in a JSON file that survives restarts.

    {"method", "model", "version", "updated", "scores": {image id: {"score", "fingerprint", ...}}}.
    Reading with another version gives nothing (the scores are invalid once the model changed); writing
    with another version starts the file afresh. Writes merge with the file as it is on disk and replace it
    atomically, so the training process and the server can both write it.
    """

    def __init__(self, path, method: str, model: str):
        self.path, self.method, self.model = Path(path), method, model

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("method") == self.method else {}

    def version(self) -> str | None:
        """The model version the stored scores belong to."""
        return self._read().get("version")

    def scores(self, version: str | None, fingerprints: Mapping[str, list] | None = None) -> dict[str, dict]:
        """{image id: entry} valid for `version` (and, when given, for the images' current fingerprints)."""
        data = self._read()
        if version is None or data.get("version") != version:
            return {}
        out = {}
        for image_id, entry in data.get("scores", {}).items():
            if fingerprints is not None:
                if image_id not in fingerprints or entry.get("fingerprint") != list(fingerprints[image_id]):
                    continue
            out[image_id] = entry
        return out

    def put(self, version: str, entries: Mapping[str, dict]) -> None:
        """Store {image id: entry} for `version`; entries of other versions are dropped."""
        data = self._read()
        if data.get("version") != version:
            data = {"method": self.method, "model": self.model, "version": version, "scores": {}}
        data["scores"].update({k: dict(v) for k, v in entries.items()})
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
