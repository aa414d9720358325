"""How thick the input's slices are, and whether the served weights were measured to hold up on such slices.

A scan of thick slices reaches a model trained at 1 mm resampled (runners.segmentation.load_on_model_grid), but
resampling cannot bring back what the slice profile averaged away: a 2-4 mm enhancing rim or a thin core seen
through 3 mm slices. `bench/slice_tolerance.py` measures the shipped weights' Dice on held-out phantoms whose slices
were made thicker (the off-grid generator's slice profile, data/phantom/variety.regrid) and records, per model
version, the thickest slice at which every region's Dice stayed within SLICE_DICE_DROP of its 1 mm Dice
(data/slice_tolerance.json, shipped with the package). `assess` compares an input's largest voxel size with it: a
segmentation of a scan with thicker slices than any the weights were measured on is flagged in its bundle.

A scan acquired with thick slices and upsampled to thin voxels before it was uploaded says 1 mm in its header; its
noise says otherwise. Noise that was white on the thick grid is band-limited by the upsampling: its power spectrum
along the slice axis falls off above the thick grid's Nyquist frequency 1/(2t) cycles per voxel. `apparent_factor`
reads that cut-off f_c along each axis (the highest frequencies whose power stays above CUTOFF_LEVEL of the
low-frequency level, counted over the spectrum, of the image high-passed across the axis so that smooth anatomy
drops out) and returns t^ = 1 / (2 f_c) voxels: 1 for white noise, about t for a scan upsampled t times
(measured on held-out phantoms with slices 2-6 mm thick upsampled onto 1 mm: 0.86-1.10 t for nearest neighbour,
1.07-1.35 t for linear interpolation, whose response keeps more above the cut-off, 1.07-1.15 t for cubic splines,
bench/upsampled_slices; it saturates near 7, where the cut-off reaches REFERENCE_BAND). The apparent voxel size
is the header's times t^; `assess` compares the thickest with the reading measured to hold up on upsampled scans
(data/upsampled_tolerance.json, bench/upsampled_slices). It is read on the scan's own grid: the server's own
resampling would correlate the noise too (runners.segmentation.load_on_model_grid).

A scan whose noise was filtered in 3D (a Gaussian, a denoiser) or that has almost no noise reads high along every
axis, not along one: `smoothed` tells that pattern apart (every axis read alike, within ISOTROPIC_RATIO), and
`assess` compares such a scan with the reading measured to hold up on smoothed scans (data/smoothed_tolerance.json,
bench/smoothed_scans) and says so in its flag, instead of calling it upsampled.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy import ndimage as ndi

from .input_noise import MAD_TO_SIGMA, NOISE_DICE_DROP

SLICE_DICE_DROP = NOISE_DICE_DROP  # the Dice a region may lose and still count as holding up
TOLERANCE_FILE = "slice_tolerance.json"
UPSAMPLED_TOLERANCE_FILE = "upsampled_tolerance.json"
SMOOTHED_TOLERANCE_FILE = "smoothed_tolerance.json"
#: the noise spectrum's level, relative to its level at low frequencies, that marks its cut-off (apparent_factor)
CUTOFF_LEVEL = 0.25
#: the frequencies (cycles per voxel) the low-frequency level is read from: above most of the anatomy's power,
#: below the cut-off of a scan upsampled up to 7 times
REFERENCE_BAND = (0.03, 0.07)
#: an axis whose noise is correlated over fewer voxels than this counts as not upsampled
UPSAMPLED_MIN = 1.5
#: a scan whose every axis reads as upsampled, the thickest within this ratio of the thinnest, was smoothed in 3D
#: (a filter, a denoiser) or has almost no noise, whose high frequencies are the anatomy's. Between the recorded
#: readings: Gaussian, non-local means and noise-free phantoms read within 1.26 (bench/smoothed_scans); scans
#: upsampled along one axis whose other axes read as upsampled too read at least 1.52 thicker along it
#: (bench/upsampled_slices, slices thick along x, y or z)
ISOTROPIC_RATIO = 1.4
#: a voxel this much larger than the tolerance still counts as within it (scanners round slice thickness)
SLACK = 0.02


@lru_cache(maxsize=1)
def tolerances() -> dict:
    """{model: {"version", "slice_mm", ...}} of data/slice_tolerance.json ({} when the package has none)."""
    path = resources.files("sparsesight") / "data" / TOLERANCE_FILE
    return json.loads(path.read_text())["models"] if path.is_file() else {}


@lru_cache(maxsize=1)
def upsampled_tolerances() -> dict:
    """{model: {"version", "apparent_mm", ...}} of data/upsampled_tolerance.json ({} when the package has none)."""
    path = resources.files("sparsesight") / "data" / UPSAMPLED_TOLERANCE_FILE
    return json.loads(path.read_text())["models"] if path.is_file() else {}


@lru_cache(maxsize=1)
def smoothed_tolerances() -> dict:
    """{model: {"version", "apparent_mm", ...}} of data/smoothed_tolerance.json ({} when the package has none)."""
    path = resources.files("sparsesight") / "data" / SMOOTHED_TOLERANCE_FILE
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def noise_spectra(image: np.ndarray, axis: int, inside: np.ndarray, step: int = 2) -> tuple[np.ndarray, list]:
    """(frequencies in cycles per voxel, [power spectrum per channel]) along `axis` of each channel of `image`
    (C, X, Y, Z) high-passed across that axis (first differences along both other axes: smooth anatomy drops
    out, noise stays), over the voxels `inside` (the eroded brain), every `step`-th line; values beyond 4 robust
    sigma are clipped (edges of anatomy)."""
    other = [a for a in range(3) if a != axis]
    lines = [slice(None, None, step)] * 3
    lines[axis] = slice(None)
    mask = inside[tuple(lines)]
    out = []
    for c in image:
        c = c.astype(np.float32, copy=False)
        d = c - np.roll(c, 1, other[0])
        d = (d - np.roll(d, 1, other[1]))[tuple(lines)]
        d = np.where(mask, d, 0.0)
        s = np.median(np.abs(d[mask])) / MAD_TO_SIGMA if mask.any() else 0.0
        d = np.clip(d, -4 * s, 4 * s)
        out.append((np.abs(np.fft.rfft(d, axis=axis)) ** 2).sum(axis=tuple(other)))
    return np.fft.rfftfreq(image.shape[axis + 1]), out


def cutoff_factor(f: np.ndarray, power: np.ndarray) -> float:
    """t^ = 1 / (2 f_c) of one noise power spectrum: f_c the share of the band [0, 1/2] whose power is at least
    CUTOFF_LEVEL of the mean over REFERENCE_BAND; nan without power there."""
    ref = power[(f >= REFERENCE_BAND[0]) & (f <= REFERENCE_BAND[1])]
    if not ref.size or not ref.mean() > 0:
        return float("nan")
    f_c = np.count_nonzero((power >= CUTOFF_LEVEL * ref.mean()) & (f > 0)) / (2 * (len(f) - 1))
    return 0.5 / max(f_c, 0.5 / (len(f) - 1))


def apparent_factor(image: np.ndarray, channels: list[int] | None = None) -> list[float | None]:
    """Per voxel axis of `image` (C, X, Y, Z, on its own grid), over how many voxels its noise is correlated
    (t^, module docstring): the median over `channels` (default: all); None along an axis too short (< 16 voxels)
    or where no brain is left after erosion. A PACS study's series that the datastore resampled onto its grid are
    left out by the caller (own_channels): their reading is that resampling's, and their own grids are reported
    from their headers."""
    brain = np.any(image != 0, axis=0)
    inside = ndi.binary_erosion(brain, iterations=3)
    if channels is not None:
        image = image[list(channels)]
    out: list[float | None] = []
    for axis in range(3):
        if image.shape[axis + 1] < 16 or not inside.any():
            out.append(None)
            continue
        f, spectra = noise_spectra(image, axis, inside)
        t = np.array([cutoff_factor(f, p) for p in spectra])
        out.append(round(float(np.median(t[np.isfinite(t)])), 3) if np.isfinite(t).any() else None)
    return out


def assess(voxel: np.ndarray | list, model: str, version: str, table: dict | None = None,
           series: dict | None = None, apparent: list | None = None, upsampled_table: dict | None = None,
           smoothed_table: dict | None = None) -> dict:
    """The manifest's `input_grid`: the input's voxel size (before any resampling to the model's grid), its
    largest (the slice thickness of a 2D acquisition), the thickest slice measured to hold up for this model
    version (None when it was not measured) and `flags` (empty when the input is within it). `series`: {channel:
    voxel size} of series resampled onto the input's grid before it was written (a PACS study): the slice thickness
    is then the thickest of them all, and `series_voxel_mm` lists them. `table`: the tolerances to compare with
    (default: the package's, tolerances()).

    `apparent`: the input's apparent_factor per axis (on its own grid): `apparent_slice_mm` is the thickest voxel
    its noise says (apparent_slice, along `apparent_axis`), and when that axis reads as upsampled (>= UPSAMPLED_MIN)
    beyond the reading measured to hold up on upsampled scans (`upsampled_table`, default upsampled_tolerances():
    `apparent_tolerance_mm`), the label is flagged; a scan that reads alike along every axis (smoothed: filtered
    or denoised in 3D, or almost noise-free) is compared with the reading measured on such scans instead
    (`smoothed_table`, default smoothed_tolerances()) and flagged as smoothed (assess_apparent)."""
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
    if apparent is not None:
        out.update(assess_apparent(v, apparent, model, version, upsampled_table, smoothed_table))
        out["flags"] += out.pop("apparent_flags")
    return out


def upsampled(factor: float | None) -> bool:
    """Whether an axis's apparent_factor reads as upsampled (UPSAMPLED_MIN voxels or more)."""
    return factor is not None and factor >= UPSAMPLED_MIN


def smoothed(factors: list) -> bool:
    """Whether apparent_factor's readings say the scan was smoothed in 3D (or has almost no noise) rather than
    upsampled along one axis: every axis read, each as upsampled, the thickest within ISOTROPIC_RATIO of the
    thinnest."""
    read = [f for f in factors if f is not None]
    return (len(read) == len(factors) == 3 and all(upsampled(f) for f in read)
            and max(read) <= ISOTROPIC_RATIO * min(read))


def apparent_slice(factors: list, voxel: list) -> tuple[float | None, int | None]:
    """(mm, axis) of the thickest apparent voxel (factor times voxel size) over the axes read; (None, None) without
    a reading. Only the thickest is kept: where the noise is weak beside the anatomy (a thick slice averages it
    down) the other axes read above 1 as well, though less (bench/upsampled_slices)."""
    read = [(f * x, a) for a, (f, x) in enumerate(zip(factors, voxel)) if f is not None]
    if not read:
        return None, None
    mm, axis = max(read)
    return round(float(mm), 3), int(axis)


def assess_apparent(voxel: list, apparent: list, model: str, version: str, table: dict | None = None,
                    smoothed_table: dict | None = None) -> dict:
    """assess's figures of the apparent slice thickness (apparent_slice of the `apparent` factors), its pattern
    (`apparent_pattern`: "upsampled" along `apparent_axis`, "smoothed" in 3D (smoothed) or None) and its flag,
    against the reading measured to hold up on scans of that pattern (`apparent_tolerance_mm`; `table`, default
    upsampled_tolerances(), or `smoothed_table`, default smoothed_tolerances())."""
    factors = [None if f is None else round(float(f), 3) for f in apparent]
    mm, axis = apparent_slice(factors, voxel)
    factor = None if axis is None else factors[axis]
    pattern = "smoothed" if smoothed(factors) else "upsampled" if upsampled(factor) else None
    out: dict = {"apparent_factor": factors, "apparent_slice_mm": mm, "apparent_axis": axis,
                 "apparent_pattern": pattern, "apparent_flags": []}
    kind, bench = ("smoothed", "smoothed_scans") if pattern == "smoothed" else ("upsampled", "upsampled_slices")
    tol = ((smoothed_tolerances() if smoothed_table is None else smoothed_table) if pattern == "smoothed" else
           (upsampled_tolerances() if table is None else table)).get(model, {})
    if tol.get("version") != version:
        out["apparent_note"] = (f"the tolerance of {model} {version[:19]} to {kind} scans was not measured "
                                f"(python -m sparsesight.bench.{bench})")
        return out
    out["apparent_tolerance_mm"] = tol["apparent_mm"]
    if pattern is None or mm is None or mm <= tol["apparent_mm"] * (1 + SLACK):
        return out
    if pattern == "upsampled":
        out["apparent_flags"].append(
            f"the noise along voxel axis {axis} is correlated over {factor:.1f} voxels: the scan looks "
            f"upsampled from slices about {mm:.1f} mm thick (its header says {voxel[axis]:g} mm), more than "
            f"{tol['apparent_mm']:.1f} mm, the most at which this model's Dice was measured to hold up on upsampled "
            f"held-out phantoms (bench/upsampled_slices): the tumour core and enhancing rim may be missed")
    else:
        read = [f for f in factors if f is not None]
        out["apparent_flags"].append(
            f"the noise is correlated over {min(read):.1f}-{max(read):.1f} voxels along every axis: the scan looks "
            f"smoothed or denoised in 3D (or has almost no noise), as sharp as voxels of about {mm:.1f} mm (its "
            f"header says {max(voxel):g} mm), more than {tol['apparent_mm']:.1f} mm, the most at which this model's "
            f"Dice was measured to hold up on smoothed held-out phantoms (bench/smoothed_scans): the tumour's "
            f"outline and enhancing rim may be blurred away")
    return out
