"""The four series of a BraTS-style study as the models' 4-channel input.

A series mapping names, per channel (FLAIR, T1, T1ce, T2), the SeriesDescriptions that stand for it
(case-insensitive, whole description). Each channel needs exactly one MR image series; the channels are
stacked when they share a grid and resampled (trilinear) onto the reference channel's grid when they share a
frame of reference but not a grid. Anything else is an InvalidInput naming the series and the problem.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ... import MODALITIES
from ...errors import InvalidInput
from .geometry import same_grid

#: default SeriesDescriptions per channel (what `mr.py` writes, and common scanner / BraTS names)
DEFAULT_MAPPING: dict[str, tuple[str, ...]] = {
    "FLAIR": ("FLAIR", "T2-FLAIR", "T2_FLAIR", "T2 FLAIR", "AX FLAIR"),
    "T1": ("T1", "T1w", "T1-pre", "T1 pre", "AX T1"),
    "T1ce": ("T1ce", "T1c", "T1Gd", "T1-Gd", "T1 post", "T1-post", "AX T1 POST"),
    "T2": ("T2", "T2w", "AX T2"),
}
#: the channel whose grid the others are resampled onto
REFERENCE = "FLAIR"
IMAGE_MODALITIES = ("MR",)


def parse_mapping(value) -> dict[str, tuple[str, ...]]:
    """A series mapping from a dict or its JSON text, e.g. '{"T1ce": ["T1 post", "T1Gd"]}'.

    Channels not named keep their default descriptions; an unknown channel or a description claimed by two
    channels is refused."""
    if value in (None, ""):
        return dict(DEFAULT_MAPPING)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise InvalidInput(f"series mapping is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidInput('series mapping must be a JSON object {"FLAIR": ["..."], "T1": [...], ...}')
    unknown = [k for k in value if k not in MODALITIES]
    if unknown:
        raise InvalidInput(f"series mapping: unknown channel(s) {unknown}; channels are {list(MODALITIES)}")
    mapping = dict(DEFAULT_MAPPING)
    for channel, names in value.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise InvalidInput(f"series mapping: {channel} needs a non-empty list of SeriesDescriptions")
        mapping[channel] = tuple(n.strip() for n in names)
    seen: dict[str, str] = {}
    for channel, names in mapping.items():
        for n in names:
            other = seen.setdefault(n.lower(), channel)
            if other != channel:
                raise InvalidInput(f"series mapping: description {n!r} is claimed by both {other} and {channel}")
    return mapping


@dataclass(frozen=True)
class SeriesInfo:
    """What a QIDO-RS series search says about one series."""

    uid: str
    description: str
    modality: str
    n_instances: int | None = None


def channel_of(description: str, mapping) -> str | None:
    d = (description or "").strip().lower()
    for channel, names in mapping.items():
        if d in (n.lower() for n in names):
            return channel
    return None


def assign_series(study_uid: str, series: list[SeriesInfo], mapping) -> dict[str, SeriesInfo]:
    """{channel: series} of a study; InvalidInput naming each missing, ambiguous or non-MR channel."""
    found: dict[str, list[SeriesInfo]] = {c: [] for c in mapping}
    wrong_kind: dict[str, list[SeriesInfo]] = {c: [] for c in mapping}
    for s in series:
        channel = channel_of(s.description, mapping)
        if channel is None:
            continue
        (found if s.modality in IMAGE_MODALITIES else wrong_kind)[channel].append(s)
    problems = []
    for channel in mapping:
        hits = found[channel]
        if len(hits) > 1:
            problems.append(f"{channel} matches {len(hits)} series ("
                            + ", ".join(f"{s.description!r} {s.uid}" for s in hits) + "): keep one or refine the mapping")
        elif not hits:
            bad = wrong_kind[channel]
            if bad:
                problems.append(f"{channel}: series {bad[0].description!r} is modality {bad[0].modality}, not an MR "
                                f"image series")
            else:
                problems.append(f"{channel} is missing (no series described as one of {list(mapping[channel])})")
    if problems:
        have = ", ".join(f"{s.description!r} ({s.modality})" for s in series) or "none"
        raise InvalidInput(f"study {study_uid} cannot be used as a 4-channel input: " + "; ".join(problems)
                           + f". Series in the study: {have}. The mapping is set with --conf pacs_series_mapping.")
    return {c: found[c][0] for c in mapping}


def resample_onto(volume, affine, shape, ref_affine) -> np.ndarray:
    """``volume`` (RAS ``affine``) trilinearly resampled onto the grid (``shape``, ``ref_affine``); 0 outside."""
    from scipy.ndimage import affine_transform

    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(ref_affine, dtype=np.float64)
    return affine_transform(np.asarray(volume, dtype=np.float32), m[:3, :3], offset=m[:3, 3],
                            output_shape=tuple(shape), order=1, mode="constant", cval=0.0).astype(np.float32)


def assemble(study_uid: str, volumes: dict[str, tuple[np.ndarray, np.ndarray]], frames: dict[str, str],
             resample: bool = True, reference: str = REFERENCE) -> tuple[np.ndarray, np.ndarray, dict]:
    """(channel-last 4D image in MODALITIES order, RAS affine, series_grids) from {channel: (volume, affine)}.

    ``frames``: {channel: FrameOfReferenceUID}. Series on other grids are resampled onto ``reference``'s grid
    when ``resample`` and they share its frame of reference; otherwise InvalidInput naming them. ``series_grids``:
    {channel: series_grid(...)} of the resampled series (what the image alone no longer says: their own grid and
    the noise on it, for the input checks, runners.segmentation.load_on_model_grid)."""
    ref_vol, ref_aff = volumes[reference]
    channels, grids = [], {}
    for channel in MODALITIES:
        vol, aff = volumes[channel]
        if not same_grid(vol.shape, aff, ref_vol.shape, ref_aff):
            grid = f"{vol.shape} spacing {np.round(np.linalg.norm(aff[:3, :3], axis=0), 3).tolist()}"
            ref_grid = f"{ref_vol.shape} spacing {np.round(np.linalg.norm(ref_aff[:3, :3], axis=0), 3).tolist()}"
            if frames.get(channel) != frames.get(reference):
                raise InvalidInput(
                    f"study {study_uid}: {channel} ({grid}) is on another grid than {reference} ({ref_grid}) and in "
                    f"another frame of reference, so it cannot be resampled without registration; register the "
                    f"series first")
            if not resample:
                raise InvalidInput(
                    f"study {study_uid}: {channel} ({grid}) is on another grid than {reference} ({ref_grid}); "
                    f"resampling is off (--conf pacs_resample false)")
            grids[channel] = series_grid(vol, aff)
            vol = resample_onto(vol, aff, ref_vol.shape, ref_aff)
        channels.append(np.asarray(vol, dtype=np.float32))
    return np.stack(channels, axis=-1), ref_aff, grids


def series_grid(volume: np.ndarray, affine: np.ndarray) -> dict:
    """A series' own grid (shape, RAS affine, voxel size) and the noise sigma^ estimated on it, where its noise is
    still white (input_noise.sigma_hat; `sigma_z` over its brain's standard deviation): what a scan resampled
    onto another series' grid needs to report its noise and slice thickness (JSON-ready)."""
    from ... import input_noise

    x = np.asarray(volume, dtype=np.float32)[None]
    sigma = input_noise.sigma_hat(x)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma_z = sigma / input_noise.brain_std(x)[0]
    a = np.asarray(affine, dtype=float)
    return {"shape": [int(n) for n in volume.shape], "affine": [[float(v) for v in row] for row in a],
            "voxel_mm": [round(float(v), 3) for v in np.linalg.norm(a[:3, :3], axis=0)],
            "sigma": float(sigma) if np.isfinite(sigma) else None, "sigma_z": input_noise.figure(sigma_z)}
