"""Microstructure maps of a DWI volume: the runner of the `microstructure` infer task (predict_file, run_bundle)
and the per-volume helpers (loading with the gradient table, mask, CSD peaks, protocol checks).

Inputs: a 4D NIfTI (X, Y, Z, volumes) with its gradient table as options (`bvals` list, `bvecs` 3 x M or M x 3
list) or as FSL sidecars next to the image (`<stem>.bval`, `<stem>.bvec`, `<stem>` = file name without
.nii/.nii.gz); an optional mask (`<stem>_mask.nii.gz` next to it, or the datastore label of tag "mask"; the
`mask` option false uses every voxel with signal, and without a mask the b=0 signal is thresholded).
Orientations: DIPY's constrained spherical deconvolution peaks (Tournier et al. 2007, as the paper), two per
voxel; a voxel with one peak gets the same orientation twice. `orientations="msmt"` uses DIPY's multi-shell
multi-tissue CSD (Jeurissen et al. 2014; needs cvxpy) on a multi-shell protocol instead, falling back to the
single-shell CSD (and saying why in the bundle) when the protocol has one shell or the tissue responses cannot
be estimated from the data.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import BundleWriter
from ..data import diffusion as dif
from ..data.io import _read
from ..errors import InvalidInput
from ..explain import microstructure_plots
from ..models import microstructure as ms
from ..preview import png_bytes, pyplot

logger = logging.getLogger(__name__)

#: infer options and their defaults (the app shows them in /info)
OPTIONS = {"method": "hybrid", "bvals": None, "bvecs": None, "grad": None, "mask": True, "big_delta": None,
           "small_delta": None, "shells": None, "b_unit": None, "timing_unit": None, "orientations": "csd"}
PROTOCOL_OPTIONS = ("grad", "shells", "b_unit", "timing_unit")
#: the keys a train request's `train_config` may hold
TRAIN_CONFIG_KEYS = ("n_train", "snr", "lr", "batch_size", "seed", "grid", "mlp_hidden", "split_hidden",
                     "joint_hidden", "threads", "big_delta", "small_delta", "shells", "b_unit", "timing_unit",
                     "extra_axonal")
#: every output the bundle can hold; "tsne" (t-SNE of the hybrid's activations, slow) only when asked for
BUNDLE_OUTPUTS = ("maps", "precision", "free_water", "peaks", "sparsity", "residual", "nnls_maps", "weights",
                  "weights_plot", "preview", "tsne")
DEFAULT_OUTPUTS = tuple(o for o in BUNDLE_OUTPUTS if o != "tsne")
SHELL_TOL = 100.0  # s/mm²
#: how the fibre orientations are found: single-shell CSD, or multi-shell multi-tissue CSD (falls back to "csd")
ORIENTATIONS = ("csd", "msmt")
#: where fit_maps estimates the voxel chunks: in this process (or `workers` spawned ones), or through Dask
ENGINES = ("local", "dask")
DASK_SCHEDULERS = ("threads", "processes", "synchronous", "distributed")


#: the extra-axonal law a train request gets unless its train_config names one: the Monte-Carlo-calibrated law,
#: closer to the walkers than the paper's analytic tortuosity law (README "Microstructure against Monte Carlo")
DEFAULT_EXTRA_AXONAL = "mc"


def default_train_config() -> dict:
    """How many voxels to simulate for training, at which SNRs, on which fingerprint grid (paper: 34 x 23), with
    which extra-axonal law."""
    return {"n_train": 20000, "snr": [25, 50, 100], "grid": "paper", "extra_axonal": DEFAULT_EXTRA_AXONAL}


# ------------------------------------------------------------------------------------------------ inputs
def stem(path) -> Path:
    return dif.protocol_files.stem(path)


def sidecars(image_path) -> dict:
    """The sidecars of an image, those that exist: the protocol's (`<stem>.bval`, `.bvec`, `.b`, `.json`) next to
    it; the mask as `<stem>_mask.nii.gz` next to it or as the datastore label of tag "mask"
    (`labels/mask/<stem>.nii.gz`, saved with PUT /datastore/label?tag=mask)."""
    s = stem(image_path)
    found = dif.protocol_files.protocol_files(image_path)
    for path in (Path(f"{s}_mask.nii.gz"), s.parent / "labels" / "mask" / f"{s.name}.nii.gz"):
        if "mask" not in found and path.is_file():
            found["mask"] = path
    return found


def _floats(value, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"'{what}' must be a list of numbers") from None
    return arr


def gradient_table(image_path, bvals=None, bvecs=None, big_delta=None, small_delta=None, grad=None, shells=None,
                   b_unit=None, timing_unit=None, n_volumes: int | None = None) -> dif.Protocol:
    """The protocol of a DWI (data/diffusion/protocol_files.read_protocol): gradient table from the options
    (`bvals`+`bvecs` or `grad`) else the sidecars; Δ (`big_delta`) and δ (`small_delta`) from the options (a
    number, per-shell list with `shells`, or {b: value}; s or ms, detected) else the `<stem>.json` sidecar.
    Missing timing is refused, never defaulted."""
    if bvals is not None:
        bvals, bvecs = _floats(bvals, "bvals"), (None if bvecs is None else _floats(bvecs, "bvecs"))
    if grad is not None:
        grad = _floats(grad, "grad")
    return dif.read_protocol(image_path, bvals, bvecs, grad, big_delta, small_delta, shells, b_unit, timing_unit,
                             n_volumes)


def load_dwi(image_path, bvals=None, bvecs=None, mask=None, big_delta=None, small_delta=None, **protocol_options):
    """(data (X, Y, Z, M) in its stored type, affine, Protocol, mask (X, Y, Z) bool, notes) with every check of
    the inputs.

    Voxels with a NaN/Inf value in any volume are left out of the mask (their maps are 0) and counted in
    notes["nonfinite_voxels"]; a DWI where every voxel has one is refused."""
    data, affine = _read(image_path, "image")
    if data.ndim != 4:
        raise InvalidInput(f"a DWI must be a 4D image (X, Y, Z, volumes); got shape {tuple(data.shape)}")
    protocol = gradient_table(image_path, bvals, bvecs, big_delta, small_delta, n_volumes=data.shape[3],
                              **protocol_options)
    dif.check_gradients(protocol.bvals, protocol.bvecs, n_volumes=data.shape[3])
    if np.iscomplexobj(data):
        raise InvalidInput("the DWI has complex values; give the magnitude image")
    # the voxels stay in their stored type (int16 from most scanners: no float copy of the whole volume); the
    # maps read them a chunk at a time. Integers are finite; floats are checked a slice at a time.
    if data.dtype.kind in "iub":
        finite = np.ones(data.shape[:3], bool)
    else:
        finite = np.stack([np.isfinite(data[:, :, z]).all(-1) for z in range(data.shape[2])], 2)
    notes = {"nonfinite_voxels": int((~finite).sum()), "finite": finite}
    if not finite.any():
        raise InvalidInput("every voxel of the DWI has a NaN/Inf value; replace them first")
    if notes["nonfinite_voxels"]:
        data = np.where(finite[..., None], data, 0).astype(np.float32)
        logger.info(f"microstructure: {notes['nonfinite_voxels']} voxels with NaN/Inf values left out of the mask")
    s0 = data[..., protocol.b0_mask].mean(-1)
    if isinstance(mask, (str, Path)):
        mask = np.asarray(_read(mask, "mask")[0])
    if isinstance(mask, np.ndarray) and mask.ndim > 0:
        if mask.shape[:3] != data.shape[:3]:
            raise InvalidInput(f"mask shape {tuple(mask.shape)} differs from the DWI's {tuple(data.shape[:3])}")
        m = mask.reshape(data.shape[:3]) > 0
    elif mask is None and "mask" in sidecars(image_path):
        m = np.asarray(_read(sidecars(image_path)["mask"], "mask")[0]).reshape(-1)
        if m.size != int(np.prod(data.shape[:3])):
            raise InvalidInput("the mask sidecar's shape differs from the DWI's")
        m = m.reshape(data.shape[:3]) > 0
    else:  # no mask: voxels with a b=0 signal above a fifth of its robust maximum
        m = s0 > 0.2 * np.percentile(s0[s0 > 0], 99) if (s0 > 0).any() else np.zeros(s0.shape, bool)
    m &= (s0 > 0) & finite
    if not m.any():
        raise InvalidInput("the mask selects no voxel with a positive b=0 signal")
    return data, affine, protocol, m, notes


def _timing_difference(protocol: dif.Protocol, trained: dif.Protocol) -> str | None:
    """A sentence when a shell's Δ or δ differs by more than 0.5 ms from the trained protocol's same shell."""
    mine = {r["b"]: r for r in protocol.shell_table(SHELL_TOL)}
    for r in trained.shell_table(SHELL_TOL):
        o = mine.get(r["b"])
        if o is None or r["b"] <= dif.B0_THRESHOLD:
            continue
        for key, sym in (("big_delta_ms", "Δ"), ("small_delta_ms", "δ")):
            if abs(o[key] - r[key]) > 0.5:
                return (f"shell b = {r['b']:g} has {sym} = {o[key]:g} ms, the model was trained at {r[key]:g} ms "
                        f"(protocol {trained.hash})")
    return None


def check_protocol(model: ms.Microstructure, protocol: dif.Protocol, method: str) -> None:
    """Refuse a protocol the method cannot use. Fingerprinting builds its dictionary for any protocol. The MLP
    needs the trained protocol itself (same protocol hash: b, directions, Δ, δ of every volume, in order); the
    hybrid its shells and their timing (its networks read NNLS weights, which do not depend on the directions,
    the paper's Section 5, but do on b and the timing)."""
    trained = model.protocol
    if method == "fingerprinting" or protocol.hash == trained.hash:
        return
    retrain = ("train it for this protocol (POST /train/microstructure with this image and its timing) or use "
               "method=fingerprinting")
    shells, tshells = protocol.shells(SHELL_TOL), trained.shells(SHELL_TOL)
    timing = _timing_difference(protocol, trained)
    if method == "hybrid":
        if len(shells) != len(tshells) or not np.allclose(shells, tshells):
            raise InvalidInput(
                f"protocol too different from the trained one: shells {shells.tolist()} s/mm², the hybrid was "
                f"trained on {tshells.tolist()}; {retrain}")
        if timing:
            raise InvalidInput(f"protocol too different from the trained one: {timing}; {retrain}")
        return
    if protocol.m != trained.m:
        raise InvalidInput(f"protocol too different from the trained one: {protocol.m} volumes, the MLP was trained "
                           f"on {trained.m}; {retrain}")
    db = np.abs(protocol.bvals - trained.bvals)
    if (db > np.maximum(SHELL_TOL, 0.05 * trained.bvals)).any():
        raise InvalidInput(f"protocol too different from the trained one: b-values differ by up to {db.max():.0f} "
                           f"s/mm² (volume {int(db.argmax())}); the MLP reads the volumes in the trained order")
    dw = protocol.bvals > dif.B0_THRESHOLD
    cos = np.abs((protocol.bvecs[dw] * trained.bvecs[dw]).sum(1))
    if (cos < np.cos(np.deg2rad(10))).any():
        raise InvalidInput("protocol too different from the trained one: gradient directions differ by more than "
                           f"10 degrees; {retrain}")
    if timing:
        raise InvalidInput(f"protocol too different from the trained one: {timing}; {retrain}")


# ------------------------------------------------------------------------------------------------ orientations
def _distinct_directions(v: np.ndarray) -> int:
    """Distinct gradient directions (±g the same; to 0.001), repeats of a direction counted once."""
    lead = np.take_along_axis(v, np.argmax(np.abs(v) > 1e-6, axis=1)[:, None], 1)
    return len(np.unique(np.round(v * np.sign(lead), 3), axis=0))


def _two_peaks(model, d: np.ndarray, sphere, mask: np.ndarray, npeaks: int, on_slice=None, volumes=None):
    """(u (X, Y, Z, 2, 3), number of peaks) from DIPY's peaks_from_model, fitted one axial slice at a time
    (`on_slice(done, total)` after each: progress, and a cancel between slices); a voxel with one peak gets it
    twice, a masked voxel without any the x axis. Each voxel's fit is independent: the slices change no number.
    `volumes`: the indices of the volumes the model reads, taken a slice at a time (no copy of the volume)."""
    from dipy.direction import peaks_from_model

    u = np.zeros(d.shape[:3] + (npeaks, 3))
    for z in range(d.shape[2]):
        if mask[:, :, z].any():
            slab = d[:, :, z:z + 1] if volumes is None else d[:, :, z:z + 1][..., volumes]
            with warnings.catch_warnings():  # DIPY's CSD uses its legacy SH basis internally (a pending deprecation)
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                pk = peaks_from_model(model, slab, sphere, relative_peak_threshold=0.3,
                                      min_separation_angle=25, mask=mask[:, :, z:z + 1], npeaks=npeaks,
                                      return_sh=False, legacy=False)
            u[:, :, z:z + 1] = pk.peak_dirs
        if on_slice is not None:
            on_slice(z + 1, d.shape[2])
    u = u[..., :2, :]
    n = (np.linalg.norm(u, axis=-1) > 0.5).sum(-1)
    one = n <= 1
    u[..., 1, :] = np.where(one[..., None], u[..., 0, :], u[..., 1, :])
    u[mask & (n == 0)] = np.array([1.0, 0.0, 0.0])
    return u, n.astype(np.uint8)


#: MSMT-CSD: shells up to this b (s/mm²) -- the per-shell DTI fits of the response estimation fail beyond it
MSMT_MAX_B = 6000.0
#: DIPY's tutorial thresholds for the tissue response masks (mask_for_response_msmt)
MSMT_THRESHOLDS = {"wm_fa_thr": 0.7, "gm_fa_thr": 0.3, "csf_fa_thr": 0.15, "gm_md_thr": 0.001, "csf_md_thr": 0.0032}
MSMT_MIN_VOXELS = 5  # voxels each tissue's response is averaged over, at least
MSMT_DTI_MAX_B = 1200.0  # s/mm²: the shells the tissue masks' DTI fit reads (at least the lowest one)
MSMT_ROI_RADIUS = 20  # voxels: the response masks come from a box around the volume's centre (DIPY's default 10)


class _NoMsmt(Exception):
    """Why MSMT-CSD cannot be used on these data (the caller falls back to single-shell CSD)."""


def msmt_peaks(data: np.ndarray, protocol: dif.Protocol, mask: np.ndarray, npeaks: int = 2,
               info: dict | None = None, on_slice=None):
    """Two fibre orientations per voxel from DIPY's multi-shell multi-tissue CSD (Jeurissen et al. 2014) on the
    shells up to b = MSMT_MAX_B, with the white-matter, grey-matter and CSF responses estimated from the data
    (mask_for_response_msmt in a box of up to MSMT_ROI_RADIUS voxels around the centre, voxels with signal, DIPY's
    tutorial thresholds; response_from_mask_msmt). `on_slice(done, total)`: see _two_peaks.
    Raises _NoMsmt with the reason when cvxpy is missing, fewer than two diffusion-weighted shells remain, or a
    tissue has fewer than MSMT_MIN_VOXELS voxels for its response."""
    try:
        import cvxpy  # noqa: F401 - DIPY's MSMT fit solves a quadratic programme per voxel with it
    except ImportError:
        raise _NoMsmt("cvxpy is not installed (pip install cvxpy, see requirements.lock)") from None
    from dipy.core.gradients import gradient_table, unique_bvals_tolerance
    from dipy.data import default_sphere
    from dipy.reconst.mcsd import (
        MultiShellDeconvModel,
        mask_for_response_msmt,
        multi_shell_fiber_response,
        response_from_mask_msmt,
    )

    shells = protocol.shells(SHELL_TOL)
    dw = [float(b) for b in shells if dif.B0_THRESHOLD < b <= MSMT_MAX_B + SHELL_TOL]
    if len(dw) < 2:
        raise _NoMsmt(f"{len(dw)} diffusion-weighted shell(s) up to b = {MSMT_MAX_B:g} s/mm² "
                      f"({[float(b) for b in shells if b > dif.B0_THRESHOLD]}); MSMT-CSD needs at least two")
    # each volume on its shell's nominal b (measured b-values scatter by a few s/mm²; DIPY groups by b)
    nominal = np.array([shells[np.argmin(np.abs(shells - b))] for b in protocol.bvals])
    nominal[protocol.b0_mask] = 0.0
    sel = protocol.b0_mask | (nominal <= MSMT_MAX_B + SHELL_TOL)
    gtab = gradient_table(nominal[sel], bvecs=protocol.bvecs[sel])
    d = data[..., sel]
    s0 = data[..., protocol.b0_mask].mean(-1)
    brain = s0 > 0.1 * np.percentile(s0[s0 > 0], 99) if (s0 > 0).any() else np.zeros(s0.shape, bool)
    # the tissue masks come from a DTI fit (FA, MD thresholds), which holds up to b ~ 1200 s/mm² (DIPY warns
    # beyond): on b = 0 and the lowest shell only; the responses then use every shell
    low = protocol.b0_mask[sel] | (nominal[sel] <= max(MSMT_DTI_MAX_B, min(dw) + SHELL_TOL))
    with warnings.catch_warnings():  # DIPY warns about empty masks: counted below instead
        warnings.simplefilter("ignore")
        masks = mask_for_response_msmt(gradient_table(nominal[sel][low], bvecs=protocol.bvecs[sel][low]), d[..., low],
                                       roi_radii=tuple(min(MSMT_ROI_RADIUS, n // 2 + 1) for n in d.shape[:3]),
                                       **MSMT_THRESHOLDS)
    masks = [np.asarray(m, bool) & brain for m in masks]
    counts = {t: int(m.sum()) for t, m in zip(("wm", "gm", "csf"), masks)}
    few = [t for t, c in counts.items() if c < MSMT_MIN_VOXELS]
    if few:
        raise _NoMsmt(f"too few voxels to estimate the {'/'.join(few)} response(s) from the data ({counts}; "
                      f"thresholds {MSMT_THRESHOLDS})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm, gm, csf = response_from_mask_msmt(gtab, d, *[m.astype(np.int64) for m in masks])
    if not all(np.isfinite(r).all() for r in (wm, gm, csf)):
        raise _NoMsmt("the estimated tissue responses are not finite")
    n_dir = _distinct_directions(protocol.bvecs[sel & ~protocol.b0_mask])
    order = max(2, min(8, int((np.sqrt(8 * n_dir + 1) - 3) / 2) // 2 * 2))
    # peaks on DIPY's default sphere subdivided once (1,445 directions, ~4° apart instead of ~8°): on simulated
    # 75-90° crossings the median peak error drops from 7.2/5.5° to 5.0/5.0° (the fit, not the sphere, costs)
    sphere = default_sphere.subdivide(n=1)
    response = multi_shell_fiber_response(sh_order_max=order, bvals=unique_bvals_tolerance(gtab.bvals), wm_rf=wm,
                                          gm_rf=gm, csf_rf=csf)
    try:
        import cvxpy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = MultiShellDeconvModel(gtab, response, sh_order_max=order)
            peaks = _two_peaks(model, d, sphere, mask, npeaks, on_slice)
    except cvxpy.error.SolverError as e:
        raise _NoMsmt(f"the MSMT-CSD solver failed ({e})") from None
    if info is not None:
        info.update({"method": "MSMT-CSD (DIPY, multi-shell multi-tissue: white matter, grey matter, CSF)",
                     "shells_b": dw, "directions": n_dir, "sh_order": order,
                     "sphere_directions": int(len(sphere.vertices)),
                     "response": "estimated from the data (mask_for_response_msmt, response_from_mask_msmt)",
                     "response_voxels": counts, "response_thresholds": dict(MSMT_THRESHOLDS),
                     "response_wm_evals_mm2_per_s": [[float(x) for x in row[:3]] for row in wm],
                     "response_gm_md_mm2_per_s": [float(row[0]) for row in gm],
                     "response_csf_md_mm2_per_s": [float(row[0]) for row in csf]})
    return peaks


def csd_peaks(data: np.ndarray, protocol: dif.Protocol, mask: np.ndarray, npeaks: int = 2, info: dict | None = None,
              method: str = "csd", on_slice=None):
    """Two fibre orientations per voxel, peaks sorted by amplitude. `method` "csd": DIPY's CSD (Tournier et al.
    2007) on one shell, the one with the most directions among b 1000-6000 s/mm² (ties: nearest b = 3000);
    "msmt": multi-shell multi-tissue CSD (msmt_peaks), falling back to "csd" when it cannot be used (one shell,
    no cvxpy, a tissue response not estimable: logged, and the reason in `info["msmt_fallback"]`). Returns
    (u (X, Y, Z, 2, 3), number of peaks (X, Y, Z)); `info` (when given) receives how: the shell(s), directions,
    the SH order, the response(s) and whether they were estimated from the data or fell back to the model's
    single-fibre response. `on_slice(done, total)` is called after each axial slice's peaks (progress; an exception
    it raises stops the fit)."""
    if method not in ORIENTATIONS:
        raise InvalidInput(f"'orientations' must be one of {', '.join(ORIENTATIONS)}; got {method!r}")
    fallback_reason = None
    if method == "msmt":
        try:
            return msmt_peaks(data, protocol, mask, npeaks, info, on_slice)
        except _NoMsmt as e:
            fallback_reason = str(e)
            logger.info(f"microstructure: MSMT-CSD not used ({e}); single-shell CSD instead")
    if info is not None and fallback_reason:
        info["msmt_fallback"] = f"single-shell CSD instead of MSMT-CSD: {fallback_reason}"
    from dipy.data import default_sphere
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel

    shells = protocol.shells(SHELL_TOL)
    dw = shells[shells > dif.B0_THRESHOLD]
    # the shell with the most directions (angular resolution) among b 1000-6000 s/mm² (contrast without losing
    # the signal to noise); ties go to the one nearest b = 3000
    count = {float(x): _distinct_directions(protocol.bvecs[np.abs(protocol.bvals - x) < SHELL_TOL]) for x in dw}
    pool = [x for x in count if 1000 - SHELL_TOL <= x <= 6000] or list(count)
    b = max(pool, key=lambda x: (count[x], -abs(x - 3000.0)))
    volumes = np.nonzero(protocol.b0_mask | (np.abs(protocol.bvals - b) < SHELL_TOL))[0]
    sub = protocol.subset(volumes)
    gtab = sub.gtab()
    n_dir = int((~sub.b0_mask).sum())
    order = max(2, min(8, int((np.sqrt(8 * n_dir + 1) - 3) / 2) // 2 * 2))  # (L+1)(L+2)/2 <= directions
    response = None
    try:
        response = _ssst_response(gtab, data, mask, volumes, fa_thr=0.5)
        if response is not None and (not np.isfinite(response[0]).all() or response[1] <= 0):
            response = None
    except (ValueError, IndexError, ZeroDivisionError, np.linalg.LinAlgError):
        response = None
    fallback = response is None
    if fallback:  # a single fibre of the model: D = 2e-9 along, a tortuous 0.35e-9 across
        response = (np.array([2.0e-3, 0.35e-3, 0.35e-3]), float(np.median(data[mask][:, protocol.b0_mask])))
        logger.info("microstructure: CSD response not estimable from the data (no voxel with FA > 0.5 in the "
                    "central region); using the model's single-fibre response")
    if info is not None:
        info.update({"method": "CSD (DIPY, single shell: most directions among b 1000-6000, ties nearest 3000)",
                     "shell_b": float(b), "directions": n_dir,
                     "sh_order": order, "response_evals_mm2_per_s": [float(x) for x in response[0]],
                     "response": "default single-fibre response (not estimable from the data)" if fallback
                     else "estimated from the data (as auto_response_ssst, FA > 0.5)"})
    with warnings.catch_warnings():  # DIPY's CSD uses its legacy SH basis internally (a pending deprecation)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        csd = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=order)
    return _two_peaks(csd, data, default_sphere, mask, npeaks, on_slice, volumes)


def _ssst_response(gtab, data: np.ndarray, mask: np.ndarray, volumes: np.ndarray, fa_thr: float = 0.5,
                   chunk: int = 16384) -> tuple | None:
    """DIPY's auto_response_ssst on the masked voxels of a box around the volume's centre (half its smallest side
    as radius, DIPY's box rule), `volumes` only, a chunk of voxels at a time: (the mean of the two largest tensor
    eigenvalues as a prolate tensor, the mean S0) over the voxels with FA > fa_thr; None when there is none. The
    numbers DIPY gives on the whole volume times the mask, without its float copy of the whole volume."""
    from dipy.reconst.dti import TensorModel, fractional_anisotropy

    shape = np.array(mask.shape)
    radius, c = max(2, int(shape.min()) // 2), shape // 2
    r = [radius if c[i] - radius >= 0 and c[i] + radius < shape[i] else min(c[i], shape[i] - c[i]) for i in range(3)]
    box = np.zeros_like(mask)
    box[tuple(slice(c[i] - r[i], c[i] + r[i] + 1) for i in range(3))] = True
    idx = np.nonzero(mask & box)
    tensor = TensorModel(gtab)
    lambdas, s0s = [], []
    for s in range(0, len(idx[0]), chunk):
        vox = data[tuple(i[s:s + chunk] for i in idx)][:, volumes]
        evals = tensor.fit(vox).evals
        keep = np.nan_to_num(fractional_anisotropy(evals)) > fa_thr
        lambdas.append(evals[keep, :2])
        s0s.append(vox[keep][:, gtab.b0s_mask])
    if not sum(len(x) for x in lambdas):
        return None
    l01 = np.concatenate(lambdas).mean(0)
    return np.array([l01[0], l01[1], l01[1]]), np.mean(np.concatenate(s0s))


# ------------------------------------------------------------------------------------------------ maps
VOXEL_CHUNK = 16384  # voxels normalised (float64) and estimated at a time: memory bounded whatever the volume


def _estimate_chunk(model, raw, u, method, protocol, device, keep_weights, acts=None, progress=None,
                    precision: bool = False) -> dict:
    """One chunk of voxels: normalised by S0 in float64, estimated, the NNLS weights reduced to the nnls maps
    (and dropped unless `keep_weights`); with `precision`, what the maps' precision needs (_precision_chunk)."""
    y = dif.normalise_s0(raw.astype(np.float64), protocol)
    e = ms.estimate(model, y, u, method, protocol=protocol, device=device, activations=acts, progress=progress)
    if "w" in e:
        wp = ms.weighted_atom_parameters(model, e["w"])
        e["nnls_r"], e["nnls_f"] = wp["r"], wp["f"]
        if not keep_weights:
            del e["w"]
    if precision:
        e.update(_precision_chunk(raw, y, u, e, protocol, model.extra_law))
    return e


def _precision_chunk(raw, y, u, e: dict, protocol: dif.Protocol, law: dif.ExtraAxonalLaw = dif.TORTUOSITY) -> dict:
    """Per voxel of a chunk: S0 and the sample variance of the b = 0 volumes (image units), the fit's residual sum
    of squares and degrees of freedom (when the method has a residual), and the Cramér–Rao standard deviations of
    ν, r, f at the estimate and its orientations, at SNR 1 (fit_maps divides them by each voxel's SNR), under the
    model's extra-axonal `law`."""
    b0 = raw[:, protocol.b0_mask].astype(np.float64)
    s0 = b0.mean(1)
    out = {"s0": s0}
    if b0.shape[1] >= 2:
        out["b0_var"] = b0.var(1, ddof=1)
    if "residual" in e:  # relative RMS ||y - D w|| / ||y|| of the S0-normalised signal, back to image units
        out["rss"] = (e["residual"] * np.linalg.norm(y, axis=1) * s0) ** 2
        out["dof"] = protocol.m - e["sparsity"]
    sd = dif.cramer_rao(protocol, u, e["nu"], e["r"], e["f"], 1.0, law=law)
    # a voxel with one peak has it twice: its two populations share an orientation, so their split is not bounded,
    # but their sum is, and its free water is that of one population with the sum's share and the ν-weighted r, f
    one = np.abs((u[:, 0] * u[:, 1]).sum(-1)) > 1 - 1e-9
    if one.any():
        tot = e["nu"][one].sum(1, keepdims=True)
        w = e["nu"][one] / np.maximum(tot, 1e-12)
        sd["nu_fw"][one] = dif.cramer_rao(protocol, u[one, :1], tot, (w * e["r"][one]).sum(1, keepdims=True),
                                          (w * e["f"][one]).sum(1, keepdims=True), 1.0, law=law)["nu_fw"]
    out.update({f"crlb_{p}": sd[p] for p in (*ms.PARAMS, "nu_fw")})
    return out


_WORKER: dict = {}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core


def _init_worker(model, protocol, method, device, keep_weights, precision=False) -> None:
    _one_thread()
    _WORKER.update(model=model, protocol=protocol, method=method, device=device, keep_weights=keep_weights,
                   precision=precision)


def _chunk_in_worker(raw, u) -> dict:
    w = _WORKER
    return _estimate_chunk(w["model"], raw, u, w["method"], w["protocol"], w["device"], w["keep_weights"],
                           precision=w["precision"])


def _dask_chunks(model, data, peaks, idx, starts, chunk, method, protocol, device, keep_weights, workers,
                 scheduler, keep, on_chunk, log, t0, precision: bool = False) -> None:
    """fit_maps' chunks as Dask tasks, in waves of 2 x workers, results kept in chunk order."""
    import uuid

    import dask

    # the model and the protocol enter each wave's graph once, under a fixed key (no hashing of the weights)
    tag = uuid.uuid4().hex[:8]
    shared = dask.delayed(model, name=f"microstructure-model-{tag}"), dask.delayed(protocol, name=f"protocol-{tag}")
    kw: dict = {} if scheduler == "distributed" else {"scheduler": scheduler}
    if scheduler in ("threads", "processes") and workers > 1:
        kw["num_workers"] = workers
    wave = 2 * max(1, workers)
    done = 0
    pool = None
    if scheduler == "processes":  # one pool of spawned processes for every wave (Dask would start one per call)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_one_thread)
        kw["pool"] = pool
    try:
        for w0 in range(0, len(starts), wave):
            tasks = []
            for s in starts[w0:w0 + wave]:
                sel = tuple(i[s:s + chunk] for i in idx)
                tasks.append(dask.delayed(_estimate_chunk, pure=False)(shared[0], data[sel], peaks[sel], method,
                                                                     shared[1], device, keep_weights,
                                                                     precision=precision))
            for e in dask.compute(*tasks, **kw):
                keep(e)
                done += 1
            log(f"microstructure: {method} {done}/{len(starts)} chunks with dask ({scheduler}) "
                f"({time.time() - t0:.1f} s)")
            if on_chunk is not None:
                on_chunk(done, len(starts))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def fit_maps(model: ms.Microstructure, data: np.ndarray, protocol: dif.Protocol, mask: np.ndarray,
             method: str = "hybrid", orientations: np.ndarray | None = None, device="cpu",
             interpret: bool = False, log=logger.info, keep_weights: bool = True,
             chunk: int = VOXEL_CHUNK, workers: int = 1, orientation_method: str = "csd", engine: str = "local",
             dask_scheduler: str = "threads", on_chunk: Callable[[int, int], None] | None = None,
             on_slice: Callable[[int, int], None] | None = None, precision: bool = False) -> dict:
    """Parameter maps of the masked voxels: {"nu", "r", "f" (X, Y, Z, 2), "nu_fw", "sparsity", "residual",
    "peaks" (X, Y, Z, 2, 3), "n_peaks", "fraction_sum" (ν_1 + ν_2 + ν_fw <= 1), "radius" (the protocol's radius
    sensitivity; r is 0 where it is not resolvable), "orientations" (how the peaks were found)} (+ "w" when
    `keep_weights`, "voxels", "activations" for the hybrid with interpret).

    Voxels go through in chunks of `chunk`: only a chunk's signals are held in float64 (the DWI itself stays in
    its stored type), and without `keep_weights` the NNLS weights of a chunk are reduced to the nnls maps and
    dropped. `workers` > 1 estimates the chunks in that many processes (one thread each; not with `interpret`).

    `engine="dask"` maps the same `_estimate_chunk` over the same chunks as Dask tasks (not with `interpret`):
    `dask_scheduler` "threads" / "processes" (`workers` of them; 1: as many as cores) / "synchronous" are Dask's
    single-machine schedulers; "distributed" hands the tasks to the `distributed.Client` the caller has connected
    (a cluster: `Client("tcp://scheduler:8786")` before the call). Chunks go out in waves of 2 x workers so the
    signals in flight stay bounded; each chunk is independent given the model, the protocol and its signals and
    orientations, so the numbers equal the in-process ones.

    `orientation_method`: "csd" or "msmt" (csd_peaks). `on_chunk(done, total)` is called with the chunks estimated
    so far, first (0, total) once the orientations are found; an exception it raises (a cancelled job) stops the
    fit between chunks. `on_slice(done, total)` likewise for the axial slices of the orientation fit (csd_peaks).

    `precision`: also "precision" (maps_precision): the image's noise and each map's Cramér–Rao standard
    deviation per voxel at the estimate (not for the MLP, which has no orientations)."""
    if method not in ms.METHODS:
        raise InvalidInput(f"unknown method {method!r}; choose one of {', '.join(ms.METHODS)}")
    if engine not in ENGINES:
        raise InvalidInput(f"'engine' must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "dask" and dask_scheduler not in DASK_SCHEDULERS:
        raise InvalidInput(f"'dask_scheduler' must be one of {', '.join(DASK_SCHEDULERS)}; got {dask_scheduler!r}")
    check_protocol(model, protocol, method)
    shape = data.shape[:3]
    idx = np.nonzero(mask)
    n_vox = len(idx[0])
    t0 = time.time()
    orient: dict = {"method": "given"}
    if orientations is None and method == "mlp":  # the MLP reads the signal alone: no CSD to pay for
        orient = {"method": "none (the MLP does not use orientations)"}
        peaks, n_peaks = np.zeros(shape + (2, 3)), np.zeros(shape, np.uint8)
    elif orientations is None:
        peaks, n_peaks = csd_peaks(data, protocol, mask, info=orient, method=orientation_method, on_slice=on_slice)
        log(f"microstructure: {orient['method'].split(' (')[0]} peaks of {n_vox} voxels in {time.time() - t0:.1f} s")
    else:
        peaks = np.asarray(orientations, dtype=np.float64).reshape(shape + (2, 3))
        n_peaks = np.full(shape, 2, np.uint8)
    step = max(1, n_vox // 10)
    last = [0]
    offset = [0]

    def progress(done, total):
        done += offset[0]
        if done - last[0] >= step or done == n_vox:
            last[0] = done
            log(f"microstructure: {method} {done}/{n_vox} voxels ({time.time() - t0:.1f} s)")

    want_acts = interpret and method != "fingerprinting"
    precision = precision and not orient["method"].startswith("none")
    parts: dict = {}
    act_parts: dict = {}
    seconds = 0.0

    def keep(e: dict, acts: dict | None) -> None:
        nonlocal seconds
        seconds += e["seconds"]
        for k, v in e.items():
            if isinstance(v, np.ndarray):
                parts.setdefault(k, []).append(v)
        for k, v in (acts or {}).items():
            act_parts.setdefault(k, []).append(v)

    starts = range(0, n_vox, chunk)
    if on_chunk is not None:
        on_chunk(0, len(starts))
    if engine == "dask":
        if want_acts:
            raise InvalidInput("the t-SNE interpretation (activations) needs engine 'local'")
        _dask_chunks(model, data, peaks, idx, starts, chunk, method, protocol, device, keep_weights, workers,
                     dask_scheduler, lambda e: keep(e, None), on_chunk, log, t0, precision)
    elif workers > 1 and not want_acts and len(starts) > 1:
        # chunks in worker processes (spawned: no forked OpenMP state), at most 2 per worker in flight so that the
        # voxels held in transit stay bounded; results come back in order
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(model, protocol, method, device, keep_weights, precision)) as ex:
            pending: list = []
            done = 0
            for s in starts:
                sel = tuple(i[s:s + chunk] for i in idx)
                pending.append(ex.submit(_chunk_in_worker, data[sel], peaks[sel]))
                while len(pending) >= 2 * workers or (s == starts[-1] and pending):
                    e = pending.pop(0).result()
                    keep(e, None)
                    done += len(e["nu"])
                    log(f"microstructure: {method} {done}/{n_vox} voxels in {workers} processes "
                        f"({time.time() - t0:.1f} s)")
                    if on_chunk is not None:
                        on_chunk(len(parts["nu"]), len(starts))
    else:
        for n, s in enumerate(starts):
            sel = tuple(i[s:s + chunk] for i in idx)
            acts: dict | None = {} if want_acts else None
            offset[0] = s
            keep(_estimate_chunk(model, data[sel], peaks[sel], method, protocol, device, keep_weights, acts,
                                 progress, precision), acts)
            if on_chunk is not None:
                on_chunk(n + 1, len(starts))
    est = {k: np.concatenate(v) for k, v in parts.items()}
    est["seconds"] = seconds
    if act_parts:
        import torch

        acts = {k: torch.cat(v) for k, v in act_parts.items()}
    else:
        acts = None
    if not orient["method"].startswith("none"):
        orient["voxels_one_peak"] = int((n_peaks[idx] <= 1).sum())
    out = {"peaks": peaks.astype(np.float32), "n_peaks": n_peaks, "seconds": est["seconds"], "voxels": idx,
           "method": method, "orientations": orient}
    for p in ms.PARAMS:
        vol = np.zeros(shape + (ms.K,), np.float32)
        vol[idx] = est[p]
        out[p] = vol
    for p in ("nu_fw", "residual", "sparsity"):
        if p in est:
            vol = np.zeros(shape, np.float32)
            vol[idx] = est[p]
            out[p] = vol
    if "w" in est:
        out["w"] = est["w"]
    if "nnls_r" in est:
        for p in ("r", "f"):
            vol = np.zeros(shape + (ms.K,), np.float32)
            vol[idx] = est[f"nnls_{p}"]
            out[f"nnls_{p}"] = vol
    if "j" in est:
        out["j"], out["w_pair"] = est["j"], est["w_pair"]
    fsum = np.zeros(shape, np.float32)
    fsum[idx] = est["nu"].sum(1) + est.get("nu_fw", 0.0)
    out["fraction_sum"] = fsum
    out["radius"] = dif.radius_sensitivity(protocol)
    if not out["radius"]["resolvable"]:  # say so instead of a radius the data cannot carry
        log(f"microstructure: {out['radius']['reason']}; radius maps are 0")
        out["r"][:] = 0
        out.pop("nnls_r", None)
    if precision:
        out["precision"] = maps_precision(model, protocol, est, idx, shape, out["radius"]["resolvable"])
    if acts:
        out["activations"] = {k: v.cpu().numpy() for k, v in acts.items()}
    log(f"microstructure: {method} on {n_vox} voxels in {est['seconds']:.2f} s "
        f"({1e3 * est['seconds'] / max(n_vox, 1):.3f} ms/voxel)")
    return out


#: r_k and f_k are judged where population k holds at least this volume fraction
PRESENT_NU = 0.1


def maps_precision(model: ms.Microstructure, protocol: dif.Protocol, est: dict, idx, shape,
                   radius_resolvable: bool) -> dict:
    """The precision of the maps from fit_maps' per-voxel estimates with _precision_chunk's figures: the image's
    noise (diffusion.noise: σ from the b = 0 repeats, else the fit residual), "snr" (X, Y, Z) = S0 / σ, and "nu",
    "r" (only where radius is resolvable), "f" (X, Y, Z, K) and "nu_fw" (X, Y, Z): each voxel's Cramér–Rao standard
    deviation at its SNR, capped at the parameter's whole range (at the cap the signal does not bound it).
    "maps" {map name ("nu/1", ..., "nu/free_water"): its (X, Y, Z) volume, a view of those} and "quality" {map
    name: precision_quality}: ν_k and the free water over every voxel, r_k and f_k over the voxels where
    population k holds ν_k >= PRESENT_NU (elsewhere they describe nothing)."""
    from ..data.diffusion import noise, sensitivity

    n_b0 = int(protocol.b0_mask.sum())
    nz = noise.image_noise(est["s0"], n_b0, est.get("b0_var"), est.get("rss"), est.get("dof"))
    snr = nz["snr"]
    cap = {"nu": 1.0, "f": 1.0, "r": float(np.max(model.grid.radii_um))}
    out: dict = {k: nz[k] for k in ("sigma", "source", "b0_volumes", "snr_median")}
    vol = np.zeros(shape, np.float32)
    vol[idx] = np.nan_to_num(snr, nan=0.0, posinf=0.0)
    out["snr"] = vol
    out["maps"], out["quality"] = {}, {}

    def bound(key: str, cap_p: float) -> np.ndarray:  # each voxel's bound at its SNR (inf: unbounded), as a volume
        crlb = est[f"crlb_{key}"]
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = crlb / snr.reshape((-1,) + (1,) * (crlb.ndim - 1))
        sd = np.where(np.isnan(sd), np.inf, sd)
        out[key] = np.zeros(shape + crlb.shape[1:], np.float32)
        out[key][idx] = np.minimum(sd, cap_p)
        return sd

    for p in ms.PARAMS:
        if p == "r" and not radius_resolvable:
            continue
        sd = bound(p, cap[p])
        for k in range(ms.K):
            sel = slice(None) if p == "nu" else est["nu"][:, k] >= PRESENT_NU
            out["maps"][f"{p}/{k + 1}"] = out[p][..., k]
            out["quality"][f"{p}/{k + 1}"] = sensitivity.precision_quality(
                sd[sel, k], p, f"{p}_{k + 1}", nz["snr_median"], cap[p])
    sd = bound("nu_fw", cap["nu"])
    out["maps"]["nu/free_water"] = out["nu_fw"]
    out["quality"]["nu/free_water"] = sensitivity.precision_quality(sd, "nu", "nu_free_water", nz["snr_median"],
                                                                    cap["nu"])
    return out


def stacked(maps: dict) -> np.ndarray:
    """(X, Y, Z, 6) float32: ν_1, r_1, f_1, ν_2, r_2, f_2 (the plain infer output)."""
    return np.stack([maps[p][..., k] for k in range(ms.K) for p in ms.PARAMS], -1).astype(np.float32)


def _options(method, mask, orientations="csd"):
    """Validated request options: method name; mask None/true (sidecar or b=0 threshold), false (every voxel
    with signal) or an array (library callers); orientations one of ORIENTATIONS."""
    if not isinstance(method, str) or method not in ms.METHODS:
        raise InvalidInput(f"'method' must be one of {', '.join(ms.METHODS)}; got {method!r}")
    if not isinstance(orientations, str) or orientations not in ORIENTATIONS:
        raise InvalidInput(f"'orientations' must be one of {', '.join(ORIENTATIONS)}; got {orientations!r}")
    if isinstance(mask, str) and mask.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        mask = mask.strip().lower() in ("true", "1", "yes")
    if isinstance(mask, bool):
        mask = None if mask else np.bool_(False)
    elif mask is not None and not isinstance(mask, np.ndarray):
        raise InvalidInput("'mask' is true or false; a mask image goes next to the DWI as <stem>_mask.nii.gz")
    return method, mask


def _load(model, image_path, bvals, bvecs, mask, big_delta, small_delta, **protocol_options):
    data, affine, protocol, m, notes = load_dwi(image_path, bvals, bvecs, None if isinstance(mask, np.bool_) else mask,
                                                big_delta, small_delta, **protocol_options)
    if isinstance(mask, np.bool_):  # mask=false: the whole volume with signal
        m = (data[..., protocol.b0_mask].mean(-1) > 0) & notes["finite"]
    return data, affine, protocol, m, notes


def predict_file(model, image_path, device="cpu", method: str = "hybrid", bvals=None, bvecs=None, mask=None,
                 big_delta=None, small_delta=None, log=logger.info, workers: int = 1, orientations: str = "csd",
                 engine: str = "local", chunk: int = VOXEL_CHUNK, on_chunk=None, dask_scheduler: str = "threads",
                 on_slice=None, **protocol_options):
    """(X, Y, Z, 6) maps ν_1, r_1 (µm), f_1, ν_2, r_2, f_2 and the affine of a DWI file (the infer task's call).
    Where the protocol cannot resolve radius (sensitivity.radius_sensitivity) r_1, r_2 are 0: not estimated."""
    method, mask = _options(method, mask, orientations)
    data, affine, protocol, m, _ = _load(model, image_path, bvals, bvecs, mask, big_delta, small_delta,
                                         **_protocol_options(protocol_options))
    return stacked(fit_maps(model, data, protocol, m, method, device=device, log=log, keep_weights=False,
                            workers=workers, orientation_method=orientations, engine=engine, chunk=chunk,
                            on_chunk=on_chunk, dask_scheduler=dask_scheduler, on_slice=on_slice)), affine


def check_job(model, image_path, method: str = "hybrid", bvals=None, bvecs=None, mask=None, big_delta=None,
              small_delta=None, orientations: str = "csd", **protocol_options) -> dif.Protocol:
    """The checks of run_bundle that read no voxel, for a job before it is queued: the options, the DWI's header
    (4D), its protocol (counts, units, timing: never defaulted) and whether the model takes that protocol with
    `method`. Raises InvalidInput with the reason; returns the protocol."""
    import nibabel as nib

    _options(method, mask, orientations)
    path = Path(image_path)
    try:
        shape = nib.load(str(path)).shape
    except (nib.filebasedimages.ImageFileError, OSError, ValueError) as e:
        raise InvalidInput(f"image {path.name} is not a readable NIfTI image: {e}") from None
    if len(shape) != 4:
        raise InvalidInput(f"a DWI must be a 4D image (X, Y, Z, volumes); got shape {tuple(shape)}")
    protocol = gradient_table(image_path, bvals, bvecs, big_delta, small_delta, n_volumes=shape[3],
                              **_protocol_options(protocol_options))
    dif.check_gradients(protocol.bvals, protocol.bvecs, n_volumes=shape[3])
    check_protocol(model, protocol, method)
    return protocol


def _protocol_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(PROTOCOL_OPTIONS))
    if unknown:
        raise InvalidInput(f"unknown options {unknown}; known: {sorted(OPTIONS)}")
    return options


def _preview_png(maps: dict, method: str) -> bytes:
    plt = pyplot()

    z = maps["nu"].shape[2] // 2
    panels: list[tuple[str, Any, tuple[float, float] | None]] = [(f"ν_{k + 1}", maps["nu"][..., z, k], (0, 1)) for k in range(ms.K)]
    panels += [(f"r_{k + 1} (µm)", maps["r"][..., z, k], (0, 7)) for k in range(ms.K)]
    panels += [(f"f_{k + 1}", maps["f"][..., z, k], (0, 1)) for k in range(ms.K)]
    if "sparsity" in maps:
        panels.append(("|w|_0", maps["sparsity"][..., z], None))
    if "residual" in maps:
        panels.append(("residual (rel. RMS)", maps["residual"][..., z], None))
    if "precision" in maps:  # how far the signal pins the first population's share (Cramér–Rao)
        panels.append(("Cramér–Rao SD of ν_1", maps["precision"]["nu"][..., z, 0], (0, 0.2)))
    u = np.abs(maps["peaks"][..., z, 0, :]) * maps["nu"][..., z, :1]
    fig, axes = plt.subplots(2, (len(panels) + 2) // 2, figsize=(2.6 * ((len(panels) + 2) // 2), 5.2))
    axes = axes.ravel()
    for ax, (title, img, rng) in zip(axes, panels):
        im = ax.imshow(np.rot90(img), cmap="viridis", vmin=None if rng is None else rng[0],
                       vmax=None if rng is None else rng[1])
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[len(panels)].imshow(np.rot90(np.clip(u / max(float(u.max()), 1e-6), 0, 1)))
    axes[len(panels)].set_title("peak 1 (RGB x ν_1)", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"microstructure, {method}, axial slice {z}", fontsize=9)
    return png_bytes(fig, dpi=80)


def _add_precision(w: BundleWriter, prec: dict, units: dict) -> None:
    """The precision outputs of a bundle (maps_precision): the SNR map, each map's Cramér–Rao standard deviation
    and the table of their quality objects (the rows of explain.served.quality_rows: set, scope, metric, value,
    aim, status)."""
    w.add_volume("precision/snr", prec["snr"], colormap="viridis",
                 description=f"SNR at b = 0, S0 / σ (σ = {prec['sigma']:.4g} from the {prec['source']})")
    rows = []
    for name, q in prec["quality"].items():
        p, k = name.split("/")
        w.add_volume(f"precision/{name}", prec["maps"][name], colormap="viridis", quality=q,
                     description=f"Cramér–Rao standard deviation of {p}_{k} ({units[p]}) at each voxel's estimate, "
                                 f"orientations and SNR: no unbiased estimate is more precise; capped at the "
                                 f"parameter's range, where the signal does not bound it (e.g. ν_1 against ν_2 "
                                 f"where CSD found one peak: both populations share it)")
        for metric in ("crlb_mae_floor_median", "crlb_share_above_aim", "crlb_share_unbounded"):
            v, judged = q[metric], metric == "crlb_mae_floor_median"
            rows.append({"set": "precision", "scope": name, "metric": metric,
                         "value": "none" if v is None else f"{v:.4g}", "aim": f"<= {q['crlb_aim']:g}" if judged else "",
                         "status": "" if not judged or v is None else ("ok" if v <= q["crlb_aim"] else "FAIL")})
    w.add_table("precision/quality", rows, description="precision of every map: the median voxel's Cramér–Rao MAE "
                "floor (√(2/π) × the bound) against the precision the map is read to, and the share of voxels "
                f"above it; r and f where their population holds ν >= {PRESENT_NU:g}")


def run_bundle(model, name: str, version: str, image_path, image_id: str, out_path, outputs=None, device="cpu",
               method: str = "hybrid", bvals=None, bvecs=None, mask=None, big_delta=None, small_delta=None,
               log=logger.info, workers: int = 1, orientations: str = "csd", engine: str = "local",
               chunk: int = VOXEL_CHUNK, on_chunk=None, dask_scheduler: str = "threads", on_slice=None,
               **protocol_options) -> Path:
    """Maps and their interpretation as a result bundle (docs/ARCHITECTURE.md). `outputs` from BUNDLE_OUTPUTS (None: all
    but "tsne"): maps (nu|r|f/<population>), precision (each map's Cramér–Rao standard deviation per voxel,
    precision/nu|r|f/<population>, the SNR map precision/snr, the table precision/quality, and each map's
    quality object; not for the MLP), free_water, peaks (peak/<k>/x|y|z, n_peaks), sparsity (|w|_0),
    residual, nnls_maps (weight-averaged r, f of the chosen fingerprints), weights (table of the chosen
    fingerprints per voxel), weights_plot, preview, tsne (hybrid's split/joint activations, Fig. 4).
    `orientations`, `engine`, `dask_scheduler`, `chunk`, `on_chunk`, `on_slice`: as fit_maps' orientation_method,
    engine, dask_scheduler, chunk, on_chunk, on_slice."""
    wanted = list(DEFAULT_OUTPUTS) if outputs is None else list(outputs)
    unknown = sorted(set(wanted) - set(BUNDLE_OUTPUTS))
    if unknown:
        raise InvalidInput(f"unknown bundle outputs {unknown}; choose from {list(BUNDLE_OUTPUTS)}")
    method, mask = _options(method, mask, orientations)
    data, affine, protocol, m, notes = _load(model, image_path, bvals, bvecs, mask, big_delta, small_delta,
                                             **_protocol_options(protocol_options))
    maps = fit_maps(model, data, protocol, m, method, device=device, interpret="tsne" in wanted, log=log,
                    keep_weights=bool({"weights", "weights_plot"} & set(wanted)), workers=workers,
                    orientation_method=orientations, engine=engine, chunk=chunk, on_chunk=on_chunk,
                    dask_scheduler=dask_scheduler, on_slice=on_slice, precision="precision" in wanted)
    sens = maps["radius"]
    prec = maps.get("precision", {})
    w = BundleWriter(name, version, image_id, affine, data.shape[:3], method=method,
                     protocol={"volumes": protocol.m, "shells": protocol.shell_table(SHELL_TOL),
                               "hash": protocol.hash, "source": protocol.source, "config": protocol.to_config(),
                               "model_protocol_hash": model.protocol.hash},
                     extra_axonal={"law": model.extra_law.name,
                                   "about": "Monte-Carlo calibrated gamma law (data/diffusion/extra_axonal.py)"
                                   if model.extra_law.name == "mc" else "tortuosity D⊥ = D (1 - f), Gaussian"},
                     radius=sens, orientations=maps["orientations"], seconds=round(float(maps["seconds"]), 3),
                     voxels=int(m.sum()),
                     nonfinite_voxels=notes["nonfinite_voxels"],
                     fractions={"max_sum": round(float(maps["fraction_sum"].max()), 6),
                                "rule": "ν_1 + ν_2 + ν_fw <= 1 by construction (simplex projection)"},
                     noise={k: prec[k] for k in ("sigma", "source", "b0_volumes", "snr_median") if k in prec} or
                     {"note": "not estimated: the precision output was not asked for, or the method (mlp) has no "
                              "orientations for the Cramér–Rao bound"})
    units = {"nu": "volume fraction", "r": "axon radius index (µm)", "f": "intra-axonal fraction"}
    if "maps" in wanted:
        for k in range(ms.K):
            for p in ms.PARAMS:
                if p == "r" and not sens["resolvable"]:
                    continue  # the manifest's "radius" says why
                desc = f"{units[p]} of population {k + 1} ({method})"
                if p == "r":
                    desc += f"; resolution limit {sens['r_min_um']:.2f} µm: smaller radii read as that"
                q = prec.get("quality", {}).get(f"{p}/{k + 1}")
                w.add_volume(f"{p}/{k + 1}", maps[p][..., k], colormap="viridis", description=desc,
                             **({"quality": q} if q else {}))
    if "precision" in wanted and prec:
        _add_precision(w, prec, units)
    if "free_water" in wanted and "nu_fw" in maps:
        q = prec.get("quality", {}).get("nu/free_water")
        w.add_volume("nu/free_water", maps["nu_fw"], description="free-water share of the dictionary weights",
                     **({"quality": q} if q else {}))
    if "peaks" in wanted and not maps["orientations"]["method"].startswith("none"):
        for k in range(ms.K):
            for c, axis in enumerate("xyz"):
                w.add_volume(f"peak/{k + 1}/{axis}", maps["peaks"][..., k, c],
                             description=f"orientation u_{k + 1} (CSD peak), {axis} component")
        w.add_volume("n_peaks", maps["n_peaks"], kind="labelmap", classes={1: "one peak", 2: "two peaks"})
    if "sparsity" in wanted and "sparsity" in maps:
        w.add_volume("sparsity", maps["sparsity"], description="|w|_0: fingerprints with non-zero weight")
    if "residual" in wanted and "residual" in maps:
        w.add_volume("residual", maps["residual"], description="||y - D w|| / ||y|| (relative RMS)")
    if "nnls_maps" in wanted and "nnls_f" in maps:
        for k in range(ms.K):
            if sens["resolvable"]:
                w.add_volume(f"nnls/r/{k + 1}", maps["nnls_r"][..., k],
                             description="weight-averaged r of the fingerprints NNLS chose (first stage alone)")
            w.add_volume(f"nnls/f/{k + 1}", maps["nnls_f"][..., k],
                         description="weight-averaged f of the fingerprints NNLS chose (first stage alone)")
    vox = np.stack(maps["voxels"], 1)
    if "weights" in wanted:
        rows = []
        if "w" in maps:
            for v, chosen in enumerate(ms.chosen_fingerprints(model, maps["w"])):
                for c in chosen:
                    rows.append({"i": int(vox[v, 0]), "j": int(vox[v, 1]), "k": int(vox[v, 2]), **c})
        elif "j" in maps:
            for v in range(len(vox)):
                for k in range(ms.K):
                    a = int(maps["j"][v, k])
                    rows.append({"i": int(vox[v, 0]), "j": int(vox[v, 1]), "k": int(vox[v, 2]), "population": k + 1,
                                 "r_um": float(model.grid.r_of_atom[a]), "f": float(model.grid.f_of_atom[a]),
                                 "atom": k * model.grid.n + a, "weight": float(maps["w_pair"][v, k])})
        if rows:
            w.add_table("weights", rows, description="chosen fingerprints per voxel (voxel i, j, k; population, r, "
                                                     "f, weight); NNLS weights under 1% of the voxel's total omitted")
    if "weights_plot" in wanted and "w" in maps:
        pick = np.linspace(0, len(vox) - 1, min(4, len(vox))).astype(int)
        w.add_plot("weights_plot", microstructure_plots.weights_png(model, maps["w"][pick],
                                                  titles=[f"voxel {tuple(vox[p])}" for p in pick]))
    if "preview" in wanted:
        w.add_plot("preview", _preview_png(maps, method))
    if "tsne" in wanted and maps.get("activations"):
        acts = maps["activations"]
        layers = [k for k in acts if k.endswith("layer1")][:1] + [k for k in ("split/last",) if k in acts]
        layers += [k for k in acts if k.startswith(("joint", "mlp"))][-1:]
        sel = maps["voxels"]
        colour = {"ν_1": maps["nu"][sel][:, 0], "r_1": maps["r"][sel][:, 0], "f_1": maps["f"][sel][:, 0]}
        w.add_plot("tsne", microstructure_plots.tsne_png(acts, colour, layers, max_points=800))
    return w.write(out_path)
