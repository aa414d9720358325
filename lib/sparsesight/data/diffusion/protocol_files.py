"""The protocol as data: what a scanner or converter writes, read into a Protocol with its units checked.

Gradient tables (one of):
- FSL `<stem>.bval` (one row of b-values) and `<stem>.bvec` (3 rows, or M rows of 3), read by DIPY
  (`dipy.io.read_bvals_bvecs`);
- an MRtrix b-table `<stem>.b` (the `-grad` format: one row `gx gy gz b` per volume, `#` comments), also the
  Camino-style four-column scheme;
- lists in a request (`bvals` + `bvecs`, or `grad` rows of `gx gy gz b`).

Pulse timing, REQUIRED (FSL and MRtrix files do not hold it; nothing defaults to the HCP protocol's):
- a JSON sidecar `<stem>.json` (BIDS-style, times in seconds as BIDS requires) with
  `DiffusionGradientSeparation` (Δ, the time between the onsets of the two gradient pulses) and
  `DiffusionGradientDuration` (δ, the duration of one pulse). Each is one number for every shell, a list with
  one number per entry of `DiffusionShells` (the shells' b-values, in the b-table's unit), or an object
  `{"<b>": value}` by shell. `EchoTime` (s) is read when present and must exceed Δ.
- request options `big_delta` / `small_delta` in the same three forms (with `shells` for a list).

Units are detected from the numbers and refused when ambiguous (`b_unit` / `timing_unit` name them):
- b: the largest b-value 100-60,000 -> s/mm²; 1e8-6e10 -> s/m²; 0.05-60 -> ms/µm² (= 1000 s/mm²);
- timing: every value <= 0.2 -> s; every value 1-300 -> ms; anything else (e.g. 0.5) -> refused.
Then Protocol refuses a gradient stronger than MAX_GRADIENT and says the G the numbers imply.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ...errors import InvalidInput
from .protocol import B0_THRESHOLD, Protocol, check_gradients

logger = logging.getLogger(__name__)

B_UNITS = {"s/mm2": 1.0, "s/m2": 1e-6, "ms/um2": 1e3}  # factor to s/mm²
TIME_UNITS = {"s": 1.0, "ms": 1e-3}
SEPARATION_KEY = "DiffusionGradientSeparation"  # Δ, s
DURATION_KEY = "DiffusionGradientDuration"  # δ, s
SHELLS_KEY = "DiffusionShells"  # the shells the per-shell lists refer to (b-table unit)
_B_RANGES = (("s/mm2", 100.0, 60000.0), ("s/m2", 1e8, 6e10), ("ms/um2", 0.05, 60.0))


def detect_b_unit(bvals, unit: str | None = None) -> tuple[np.ndarray, str]:
    """b-values in s/mm² and the unit they were read in (given, or detected from the largest b)."""
    b = np.asarray(bvals, dtype=np.float64).reshape(-1)
    if unit is not None:
        key = str(unit).replace("²", "2").replace("µ", "u").replace(" ", "").lower()
        if key not in B_UNITS:
            raise InvalidInput(f"b_unit {unit!r} is not one of {', '.join(B_UNITS)}")
        return b * B_UNITS[key], key
    top = float(np.nanmax(b)) if b.size else 0.0
    for key, lo, hi in _B_RANGES:
        if lo <= top <= hi:
            return b * B_UNITS[key], key
    raise InvalidInput(f"cannot tell the unit of the b-values (largest {top:g}): s/mm² gives 100-60000, s/m² "
                       f"1e8-6e10, ms/µm² 0.05-60; convert them to s/mm² or name the unit with 'b_unit'")


def detect_time_unit(values, what: str, unit: str | None = None) -> tuple[np.ndarray, str]:
    """Timings in s and the unit they were read in (given, or detected: all <= 0.2 -> s, all 1-300 -> ms)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all() or (v <= 0).any():
        raise InvalidInput(f"{what} must be positive numbers; got {v.tolist()}")
    if unit is not None:
        if unit not in TIME_UNITS:
            raise InvalidInput(f"timing_unit {unit!r} is not one of {', '.join(TIME_UNITS)}")
        return v * TIME_UNITS[unit], unit
    if (v <= 0.2).all():
        return v, "s"
    if ((v >= 1.0) & (v <= 300.0)).all():
        return v * 1e-3, "ms"
    raise InvalidInput(f"cannot tell the unit of {what} {v.tolist()}: seconds are <= 0.2 (e.g. 0.0218), "
                       f"milliseconds 1-300 (e.g. 21.8); convert them or name the unit with 'timing_unit'")


def per_volume_timing(bvals: np.ndarray, value, what: str, shells=None, unit: str | None = None,
                      b_factor: float = 1.0) -> tuple[np.ndarray, str]:
    """One timing per volume (s) from one number, a list per shell (with `shells`) or a {b: value} object.
    b=0 volumes not listed take the lowest listed shell's (their gradient is zero: the timing does not matter)."""
    if isinstance(value, dict):
        try:
            shells = [float(k) for k in value]
        except (TypeError, ValueError):
            raise InvalidInput(f"{what}: an object's keys are the shells' b-values; got {list(value)}") from None
        value = list(value.values())
    if isinstance(value, (list, tuple, np.ndarray)) and np.size(value) != 1:
        if shells is None:
            raise InvalidInput(f"{what} lists {np.size(value)} values: give '{SHELLS_KEY}' (or 'shells') with the "
                               f"b-value of each, or one number for every shell")
        sb = np.asarray(shells, dtype=np.float64).reshape(-1) * b_factor
        if len(sb) != np.size(value):
            raise InvalidInput(f"{what} has {np.size(value)} values for {len(sb)} shells")
        t, used = detect_time_unit(value, what, unit)
        out = np.full(len(bvals), np.nan)
        for i, b in enumerate(bvals):
            d = np.abs(sb - b)
            j = int(d.argmin())
            if d[j] <= max(100.0, 0.05 * b):
                out[i] = t[j]
        dw_missing = np.isnan(out) & (bvals > B0_THRESHOLD)
        if dw_missing.any():
            raise InvalidInput(f"{what} is not given for the shell b = {bvals[dw_missing][0]:g} s/mm² (shells "
                               f"listed: {sb.tolist()}): Δ and δ are required for every diffusion-weighted shell")
        out[np.isnan(out)] = t[int(np.argmin(sb))] if len(sb) else np.nan
        return out, used
    t, used = detect_time_unit(value, what, unit)
    return np.full(len(bvals), float(t[0])), used


def read_fsl(bval_path, bvec_path) -> tuple[np.ndarray, np.ndarray]:
    """(bvals, bvecs (M, 3)) of FSL files, read by DIPY; count mismatch and unreadable files -> InvalidInput."""
    from dipy.io import read_bvals_bvecs

    try:
        bvals, bvecs = read_bvals_bvecs(str(bval_path), str(bvec_path))
    except (OSError, ValueError, IndexError) as e:
        raise InvalidInput(f"cannot read bval/bvec ({Path(bval_path).name}, {Path(bvec_path).name}): {e}") from None
    return np.asarray(bvals, dtype=np.float64), np.asarray(bvecs, dtype=np.float64)


def read_mrtrix(path) -> tuple[np.ndarray, np.ndarray]:
    """(bvals, bvecs) of an MRtrix b-table (`-grad`: rows gx gy gz b, `#` comments) or a 4-column scheme."""
    rows = []
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read the b-table {Path(path).name}: {e}") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.upper().startswith("VERSION"):  # Camino scheme header
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 4:
            raise InvalidInput(f"b-table {Path(path).name} line {n}: expected 4 numbers 'gx gy gz b', got {line!r}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise InvalidInput(f"b-table {Path(path).name} line {n}: not numbers: {line!r}") from None
    if not rows:
        raise InvalidInput(f"b-table {Path(path).name} holds no rows")
    a = np.asarray(rows)
    return a[:, 3], a[:, :3]


def read_sidecar(path) -> dict:
    """The timing fields of a JSON sidecar: {"big_delta", "small_delta", "shells", "echo_time"} (raw values,
    missing ones absent)."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"cannot read the JSON sidecar {Path(path).name}: {e}") from None
    if not isinstance(meta, dict):
        raise InvalidInput(f"the JSON sidecar {Path(path).name} must hold an object")
    out = {}
    for key, name in ((SEPARATION_KEY, "big_delta"), (DURATION_KEY, "small_delta"), (SHELLS_KEY, "shells"),
                      ("EchoTime", "echo_time")):
        if meta.get(key) is not None:
            out[name] = meta[key]
    return out


def build_protocol(bvals, bvecs, big_delta, small_delta, shells=None, b_unit: str | None = None,
                   timing_unit: str | None = None, echo_time=None, name: str = "custom",
                   source: str = "request", n_volumes: int | None = None) -> Protocol:
    """A Protocol from raw numbers with every check: b unit, count mismatch, directions, Δ/δ required per shell
    with their unit, Δ < TE, and (in Protocol) the implied gradient strength."""
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=np.float64)
    if bvecs.ndim == 2 and bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T
    if not (np.isfinite(bvals).all() and np.isfinite(bvecs).all()):
        raise InvalidInput("bval/bvec hold NaN or Inf values")
    b, bu = detect_b_unit(bvals, b_unit)
    check_gradients(b, bvecs, n_volumes)
    missing = [f"{key} ({sym}, option '{opt}')" for key, sym, opt, v in
               ((SEPARATION_KEY, "Δ", "big_delta", big_delta), (DURATION_KEY, "δ", "small_delta", small_delta))
               if v is None]
    if missing:
        raise InvalidInput(f"the pulse timing is missing: {' and '.join(missing)}. Give it in the image's JSON "
                           f"sidecar (seconds) or as request options; there is no default (the HCP timing on "
                           f"another scanner moves the radius by micrometres)")
    bd, tu1 = per_volume_timing(b, big_delta, "Δ (DiffusionGradientSeparation)", shells, timing_unit,
                                B_UNITS[bu])
    sd, tu2 = per_volume_timing(b, small_delta, "δ (DiffusionGradientDuration)", shells, timing_unit,
                                B_UNITS[bu])
    if echo_time is not None:
        te, _ = detect_time_unit(echo_time, "EchoTime", timing_unit)
        if float(bd.max()) >= float(te[0]):
            raise InvalidInput(f"Δ = {1e3 * bd.max():g} ms is not shorter than the echo time {1e3 * te[0]:g} ms: "
                               f"the timing fields cannot both be right")
    p = Protocol(b, bvecs, bd, sd, name)
    p.source = {"from": source, "b_unit": bu, "timing_unit": tu1 if tu1 == tu2 else f"{tu1}/{tu2}"}
    if bu != "s/mm2" or tu1 != "s" or tu2 != "s":
        logger.info(f"protocol {name}: b read in {bu}, timing in {tu1}/{tu2} (converted to s/mm² and s)")
    return p


def stem(path) -> Path:
    p = Path(path)
    for suf in (".nii.gz", ".nii"):
        if p.name.endswith(suf):
            return p.with_name(p.name[: -len(suf)])
    return p.with_suffix("")


def protocol_files(image_path) -> dict:
    """The protocol sidecars next to an image that exist: bval, bvec, grad (`<stem>.b`), json."""
    s = stem(image_path)
    found = {}
    for key, suffix in (("bval", ".bval"), ("bvec", ".bvec"), ("grad", ".b"), ("json", ".json")):
        path = Path(f"{s}{suffix}")
        if path.is_file():
            found[key] = path
    return found


def read_protocol(image_path=None, bvals=None, bvecs=None, grad=None, big_delta=None, small_delta=None,
                  shells=None, b_unit=None, timing_unit=None, n_volumes: int | None = None) -> Protocol:
    """The protocol of a DWI: the gradient table from options (`bvals`+`bvecs`, or `grad` rows gx gy gz b), else
    from the sidecars (`<stem>.bval`/`.bvec`, else `<stem>.b`); timing from options, else from `<stem>.json`."""
    if (bvals is None) != (bvecs is None):
        raise InvalidInput("give both 'bvals' and 'bvecs' (or neither, to use the image's sidecars)")
    side = protocol_files(image_path) if image_path is not None else {}
    name = stem(image_path).name if image_path is not None else "request"
    if bvals is not None:
        source = "request"
    elif grad is not None:
        g = np.asarray(grad, dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != 4:
            raise InvalidInput(f"'grad' is a list of rows gx gy gz b; got shape {g.shape}")
        bvals, bvecs, source = g[:, 3], g[:, :3], "request grad"
    elif "bval" in side and "bvec" in side:
        bvals, bvecs = read_fsl(side["bval"], side["bvec"])
        source = f"{side['bval'].name}, {side['bvec'].name}"
    elif "grad" in side:
        bvals, bvecs = read_mrtrix(side["grad"])
        source = side["grad"].name
    else:
        s = name
        raise InvalidInput(f"no gradient table: give 'bvals' and 'bvecs' (or 'grad') as options, or store the FSL "
                           f"files {s}.bval and {s}.bvec (or the MRtrix b-table {s}.b) next to the image")
    echo = None
    if big_delta is None and small_delta is None and "json" in side:
        meta = read_sidecar(side["json"])
        big_delta, small_delta = meta.get("big_delta"), meta.get("small_delta")
        shells = meta.get("shells", shells)
        echo = meta.get("echo_time")
        source += f"; timing {side['json'].name}"
    return build_protocol(bvals, bvecs, big_delta, small_delta, shells, b_unit, timing_unit, echo, name, source,
                          n_volumes)


def write_sidecar(protocol: Protocol, path, echo_time: float | None = None) -> Path:
    """The JSON sidecar of a protocol (times in s; per-shell lists when the shells' timing differ)."""
    rows = protocol.shell_table()
    meta: dict = {}
    if protocol.uniform_timing:
        meta[SEPARATION_KEY] = float(protocol.big_delta)
        meta[DURATION_KEY] = float(protocol.small_delta)
    else:
        meta[SHELLS_KEY] = [r["b"] for r in rows]
        meta[SEPARATION_KEY] = [r["big_delta_ms"] * 1e-3 for r in rows]
        meta[DURATION_KEY] = [r["small_delta_ms"] * 1e-3 for r in rows]
    if echo_time is not None:
        meta["EchoTime"] = float(echo_time)
    path = Path(path)
    path.write_text(json.dumps(meta, indent=1))
    return path


def write_protocol(protocol: Protocol, stem_path) -> dict:
    """The protocol as the sidecars a DWI carries: `<stem>.bval`, `<stem>.bvec` (FSL) and `<stem>.json` (timing
    in s). Returns {"bval", "bvec", "json"} paths."""
    from .protocol import write_bvals_bvecs

    bval, bvec = write_bvals_bvecs(protocol, stem_path)
    return {"bval": bval, "bvec": bvec, "json": write_sidecar(protocol, Path(f"{stem_path}.json"))}


#: the keys of a DWI upload's protocol object (PUT /datastore/image params {"dwi": {...}})
UPLOAD_KEYS = ("bvals", "bvecs", "grad", "big_delta", "small_delta", "shells", "b_unit", "timing_unit", "echo_time")


def check_dwi_upload(path, dwi: dict, max_voxels: int | None = None, max_bytes: int | None = None):
    """A 4D DWI upload and its protocol, checked before anything is stored: the NIfTI bounds (io.check_nifti:
    voxels and inflated bytes from the header, before reading), 4D with real values, one protocol entry per
    volume, the timing present and plausible. Returns (spatial shape, Protocol, NaN/Inf voxel count).
    NaN/Inf voxels are accepted (the runner leaves them out of the mask and counts them in the bundle)."""
    from ..io import _read, check_nifti

    if not isinstance(dwi, dict):
        raise InvalidInput("'dwi' must be an object with the protocol: bvals, bvecs (or grad), big_delta, "
                           "small_delta (Δ, δ: s or ms; per shell with shells)")
    unknown = sorted(set(dwi) - set(UPLOAD_KEYS))
    if unknown:
        raise InvalidInput(f"unknown keys {unknown} in 'dwi'; known: {list(UPLOAD_KEYS)}")
    if max_voxels is not None or max_bytes is not None:
        check_nifti(path, max_voxels, max_bytes, "image")
    data, _ = _read(path, "image")
    if data.ndim != 4 or data.shape[3] < 2:
        raise InvalidInput(f"a DWI must be a 4D image (X, Y, Z, volumes); got shape {tuple(data.shape)}")
    if np.iscomplexobj(data):
        raise InvalidInput("the DWI has complex values; upload the magnitude image")
    if dwi.get("bvals") is None and dwi.get("grad") is None:
        raise InvalidInput("a DWI upload needs its gradient table in 'dwi': bvals and bvecs (FSL), or grad (rows "
                           "gx gy gz b)")
    grad = dwi.get("grad")
    if grad is not None:
        g = np.asarray(grad, dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != 4:
            raise InvalidInput(f"'grad' is a list of rows gx gy gz b; got shape {g.shape}")
        bvals, bvecs = g[:, 3], g[:, :3]
    else:
        if dwi.get("bvecs") is None:
            raise InvalidInput("give both 'bvals' and 'bvecs' in 'dwi'")
        try:
            bvals, bvecs = np.asarray(dwi["bvals"], np.float64), np.asarray(dwi["bvecs"], np.float64)
        except (TypeError, ValueError):
            raise InvalidInput("'bvals' and 'bvecs' must be lists of numbers") from None
    protocol = build_protocol(bvals, bvecs, dwi.get("big_delta"), dwi.get("small_delta"), dwi.get("shells"),
                              dwi.get("b_unit"), dwi.get("timing_unit"), dwi.get("echo_time"), "upload", "upload",
                              n_volumes=data.shape[3])
    nonfinite = int((~np.isfinite(np.asarray(data))).any(-1).sum())
    return tuple(int(s) for s in data.shape[:3]), protocol, nonfinite
