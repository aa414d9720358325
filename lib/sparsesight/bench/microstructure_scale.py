"""Whole-brain scale and orientations of the microstructure task (issue 21): what a job costs against the
synchronous infer, Dask against the in-process chunks, MSMT-CSD against single-shell CSD.

    python -m sparsesight.bench.microstructure_scale --out bench/results            # all three parts
    python -m sparsesight.bench.microstructure_scale --parts dask msmt --out out/bench
    python -m sparsesight.bench.microstructure_scale --whole-brain --out bench/results   # minutes, ~5 GB
    python -m sparsesight.bench.microstructure_scale --parts nnls_chunks --out bench/results

- `jobs`: a server with only the microstructure model (a small checkpoint for the protocol) and a DWI phantom slab
  (2 mm, 6 slices, HCP MGH subsampled 8x) in its datastore; per method and repetition, the bundle through
  POST /infer/microstructure, then as a job (POST /jobs/microstructure, polled every 0.2 s, result downloaded)
  with chunks of 16384 (the infer's) and 4096 (the job's default). The job's own cost is the client's wall time
  minus the server's `elapsed_s`.
- `dask`: fit_maps on the same slab's white matter with the true orientations (the fit alone), chunks of 1024,
  in-process, Dask threads (1, 2), fit_maps' own 2 spawned processes, Dask processes (2); the maps of every run
  compared with the in-process ones.
- `msmt`: peaks of DIPY `multi_tensor` crossings (60/75/90 degrees in the xy plane, with single-fibre, grey-matter
  and CSF voxels for the responses, SNR 30, HCP MGH subsampled 4x) with and without 20 % free water, and of the DWI
  phantom (4 mm, 4 slices; voxels where each population holds >= 25 % of the axonal volume), by MSMT-CSD and by
  single-shell CSD: share of voxels with two peaks, median and 90th percentile of the worse peak's angular error.
- `whole_brain` (`--whole-brain`, not in the default parts: ~3 GB of memory, minutes): an HCP-size int16 DWI
  generated here (145 x 174 x 145 at 1.25 mm, the MNI152 template's tissue fractions; 18 b=0 + 90 directions at
  b 1000 / 2000 / 3000, Δ/δ 43.1/10.6 ms: 288 volumes, 2.1 GB; two fibre populations in the white matter, Rician
  noise), the paper's dictionary for that protocol and CPU-sized networks (briefly trained: the cost is measured,
  not the accuracy); fit_maps with the hybrid on the white-matter mask (WM fraction > 0.5): CSD orientations
  (response, peaks), then the maps and their precision (as a bundle or job has them; the noise σ estimated against
  the simulated 1000 / 30) in `--workers` processes with `--chunk` voxels per chunk. Wall time per phase
  and the peak resident memory of the process and its workers (sampled every 0.2 s) against the int16 input's
  bytes. `--wm-voxels N` fits central axial slabs of N/2 and N white-matter voxels instead of the whole mask and
  extrapolates from the larger (say so when quoting it): the time in proportion to the voxels, the memory as its
  peak plus fit_maps' per-voxel results for the voxels not fitted.

- `nnls_chunks` (`--parts nnls_chunks`): the hybrid's NNLS (nnls_weights) on 4,096 simulated voxels of the HCP
  protocol, one thread, in batches of 2048 ... 128 voxels, 3 interleaved repetitions: median ms per voxel (the
  batch size sets its memory and cache use), and the voxels whose weights differ from the first size's with the
  largest residual change; then the whole hybrid estimate (NNLS and networks) per voxel at the default batch on
  this protocol and on HCP MGH (M = 552, b up to 10,000), against the aim of 1 ms per voxel per core.

- `extra_law_cost` (`--parts extra_law_cost`): the whole hybrid estimate on HCP MGH per voxel, one thread, with the
  tortuosity and the Monte-Carlo-calibrated extra-axonal law (data/diffusion/extra_axonal.py), interleaved.

Writes <out>/microstructure_scale.json (parts not run this time are kept from an earlier file). Figures depend on
the machine's load; the JSON records it per part.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..data import diffusion as dif
from ..runners import microstructure as run
from . import setup_process

logger = logging.getLogger(__name__)

WM = np.array([1.7e-3, 0.3e-3, 0.3e-3])  # mm²/s: a single fibre's tensor
ANGLES = (60, 75, 90)


# ------------------------------------------------------------------------------------------------ crossings
def crossing_volume(protocol: dif.Protocol, snr: float = 30.0, seed: int = 0, n: int = 6, csf_share: float = 0.0):
    """(data (n, n, n, M) float32, crossing mask, true angle per crossing voxel, white-matter mask (single fibres
    and crossings: the mask to fit, so that single-shell CSD finds its response there too)): a quarter each single
    fibres (random orientations), grey matter (D 0.8e-3 mm²/s), CSF (D 3e-3) and equal two-fibre crossings at 60,
    75 or 90 degrees in the xy plane (with `csf_share` of free water), Rician noise at `snr` (DIPY's
    multi_tensor)."""
    from dipy.sims.voxel import multi_tensor

    gtab = protocol.gtab()
    rng = np.random.default_rng(seed)
    data = np.zeros((n, n, n, protocol.m))
    crossing = np.zeros((n, n, n), bool)
    angle = np.zeros((n, n, n))
    wm = np.zeros((n, n, n), bool)
    for i, j, k in np.ndindex(n, n, n):
        kind = (i + j + k) % 4
        wm[i, j, k] = kind in (0, 3)
        if kind == 0:
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            ang = [(np.degrees(np.arccos(d[2])), np.degrees(np.arctan2(d[1], d[0])))]
            evals, fr = np.array([WM]), [100.0]
        elif kind in (1, 2):
            evals, ang, fr = np.array([[0.8e-3] * 3 if kind == 1 else [3e-3] * 3]), [(0, 0)], [100.0]
        else:
            a = ANGLES[(i + j) % 3]
            w = 50 * (1 - csf_share)
            evals, ang, fr = np.array([WM, WM, [3e-3] * 3]), [(90, 0), (90, a), (0, 0)], [w, w, 100 * csf_share]
            crossing[i, j, k], angle[i, j, k] = True, a
        s, _ = multi_tensor(gtab, evals, S0=100, angles=ang, fractions=fr, snr=None)
        noise = rng.normal(0, 100 / snr, (2, protocol.m))
        data[i, j, k] = np.hypot(s + noise[0], noise[1])
    return data.astype(np.float32), crossing, angle, wm


def peak_errors(u: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per voxel, the worse of the two peaks' angular errors (degrees) under the better pairing with the truth;
    u, truth (N, 2, 3)."""
    c = np.abs(np.einsum("nkc,nlc->nkl", u, truth)).clip(0, 1)
    same = np.degrees(np.arccos(np.minimum(c[:, 0, 0], c[:, 1, 1])))
    swapped = np.degrees(np.arccos(np.minimum(c[:, 0, 1], c[:, 1, 0])))
    return np.minimum(same, swapped)


def angular_errors(u, n_peaks, crossing, angle) -> dict:
    """{angle: (share of the crossing voxels with two peaks, errors of those (degrees))}."""
    out = {}
    for a in ANGLES:
        sel = crossing & (angle == a)
        two = n_peaks[sel] >= 2
        truth = np.array([[1.0, 0, 0], [np.cos(np.radians(a)), np.sin(np.radians(a)), 0]])
        out[a] = (float(two.mean()), peak_errors(u[sel][two], np.broadcast_to(truth, (int(two.sum()), 2, 3))))
    return out


def _summary(share: float, errs: np.ndarray) -> dict:
    return {"two_peaks": round(share, 3), "median_deg": round(float(np.median(errs)), 1),
            "p90_deg": round(float(np.percentile(errs, 90)), 1)}


def bench_msmt() -> list[dict]:
    rows = []
    p = dif.hcp_mgh_protocol(4)
    for csf in (0.0, 0.2):
        data, crossing, angle, wm = crossing_volume(p, csf_share=csf)
        for method in ("msmt", "csd"):
            info: dict = {}
            t = time.time()
            u, n = run.csd_peaks(data, p, wm, info=info, method=method)
            dt = time.time() - t
            errs = angular_errors(u, n, crossing, angle)
            rows.append({"data": "multi_tensor, SNR 30", "csf_share": csf, "method": method,
                         "voxels": int(wm.sum()), "ms_per_voxel": round(1e3 * dt / wm.sum(), 2),
                         "by_angle": {str(a): _summary(*errs[a]) for a in ANGLES},
                         "response": info.get("response")})
            logger.info(f"msmt: {rows[-1]}")
    with tempfile.TemporaryDirectory() as tmp:
        import nibabel as nib

        paths = dif.write_dwi_phantom(tmp, p, downsample=4, slices=4, seed=1)
        data = np.asarray(nib.load(paths["dwi"]).dataobj, np.float32)
        mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
        truth = np.asarray(nib.load(paths["u"]).dataobj).reshape(mask.shape + (2, 3))
        nu = np.asarray(nib.load(paths["nu"]).dataobj)
    cross = mask & (nu.min(-1) >= 0.25 * nu.sum(-1))
    for method in ("msmt", "csd"):
        info = {}
        t = time.time()
        u, n = run.csd_peaks(data, p, mask, info=info, method=method)
        dt = time.time() - t
        two = n[cross] >= 2
        rows.append({"data": "DWI phantom 4 mm, 4 slices, SNR 50", "method": method, "voxels": int(mask.sum()),
                     "crossing_voxels": int(cross.sum()), "ms_per_voxel": round(1e3 * dt / mask.sum(), 2),
                     "crossings": _summary(float(two.mean()), peak_errors(u[cross][two], truth[cross][two])),
                     "orientations": {k: info[k] for k in ("method", "shell_b", "shells_b", "response_voxels",
                                                           "msmt_fallback") if k in info}})
        logger.info(f"msmt: {rows[-1]}")
    return rows


# ------------------------------------------------------------------------------------------------ dask
def _slab(folder, protocol, downsample=2, slices=6, name="dwi"):
    return dif.write_dwi_phantom(folder, protocol, downsample=downsample, slices=slices, seed=1, name=name)


def _small_model(protocol):
    from .. import models
    from ..training import microstructure as ms_training

    model = models.build("microstructure", {"protocol": protocol.to_config(),
                                            "grid": dif.small_grid(12, 8).to_config(),
                                            "mlp_hidden": [64, 64], "split_hidden": [32, 32], "joint_hidden": [32]})
    data = ms_training.simulate_training_set(model, 1000, (50,), seed=0)
    ms_training.fit_networks(model, data, epochs=1, batch_size=64, lr=3e-3)
    return model


def bench_dask(method: str = "hybrid", chunk: int = 1024) -> dict:
    import nibabel as nib
    import torch

    torch.set_num_threads(1)
    p = dif.hcp_mgh_protocol(8)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _slab(tmp, p)
        data = np.asarray(nib.load(paths["dwi"]).dataobj, np.float32)
        mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
        u = np.asarray(nib.load(paths["u"]).dataobj).reshape(mask.shape + (2, 3))
    model = _small_model(p)
    q: dict[str, Any] = {"log": lambda s: None, "orientations": u, "keep_weights": False, "chunk": chunk}
    runs: list[tuple[str, dict[str, Any]]] = [("in-process", {}), ("dask threads x1", {"engine": "dask"}),
            ("dask threads x2", {"engine": "dask", "workers": 2}), ("fit_maps processes x2", {"workers": 2}),
            ("dask processes x2", {"engine": "dask", "dask_scheduler": "processes", "workers": 2}),
            ("in-process (again)", {})]
    out: dict = {"shape": list(data.shape), "voxels": int(mask.sum()), "method": method, "chunk": chunk, "runs": []}
    ref = None
    for name, kw in runs:
        t = time.time()
        maps = run.fit_maps(model, data, p, mask, method, **q, **kw)
        dt = time.time() - t
        ref = ref or maps
        same = all(np.array_equal(maps[k], ref[k]) for k in ("nu", "r", "f", "nu_fw", "residual", "nnls_r")
                   if k in ref)
        out["runs"].append({"run": name, "seconds": round(dt, 2), "ms_per_voxel": round(1e3 * dt / mask.sum(), 3),
                            "identical_to_in_process": same})
        logger.info(f"dask: {out['runs'][-1]}")
    return out


# ------------------------------------------------------------------------------------------------ whole brain
HCP_SHAPE = (145, 174, 145)  # HCP WU-Minn at 1.25 mm
HCP_EXTENT_MM = (181, 217, 181)  # that grid's extent (the MNI152 1 mm template's)
HCP_SHELLS = ((0.0, 18), (1000.0, 90), (2000.0, 90), (3000.0, 90))  # 288 volumes
HCP_TIMING = (43.1e-3, 10.6e-3)  # Δ, δ (s) of HCP WU-Minn
WB_RADII_UM, WB_FRACTIONS = np.array([1.0, 2.0, 3.0, 4.5, 6.0]), np.array([0.4, 0.55, 0.7])


def hcp_protocol() -> dif.Protocol:
    """An HCP WU-Minn-like protocol: 18 b=0, 90 directions at each of b 1000, 2000, 3000 s/mm²."""
    from ..data.diffusion.protocol import hemisphere_directions

    bvals: list = []
    bvecs: list = []
    for s, (b, n) in enumerate(HCP_SHELLS):
        bvals += [b] * n
        bvecs += [[0.0, 0.0, 0.0]] * n if b == 0 else hemisphere_directions(n, twist=0.7 * s).tolist()
    return dif.Protocol(np.array(bvals), np.array(bvecs), *HCP_TIMING, name="hcp-wu-minn")


def hcp_tissue() -> dict:
    """CSF / GM / WM fractions of the MNI152 template (nilearn's, shipped) resampled to the HCP grid."""
    from scipy import ndimage as ndi

    from ..data.phantom.anatomy import load_mni152, tissue_maps

    t1, gm, wm, _ = load_mni152()
    maps = tissue_maps(t1, gm, wm)
    idx = np.argwhere(maps["brain"] > 0)
    ext = np.array(HCP_EXTENT_MM)
    lo = np.clip((idx.min(0) + idx.max(0)) // 2 - ext // 2, 0, np.array(t1.shape) - ext)
    crop = tuple(slice(a, a + e) for a, e in zip(lo, ext))
    return {k: ndi.zoom(maps[k][crop], np.array(HCP_SHAPE) / ext, order=1).clip(0, 1) for k in ("csf", "gm", "wm")}


def _fibres(protocol: dif.Protocol, rng, n: int, axis: int, log_perp: np.ndarray) -> np.ndarray:
    """(n, M) signals of one population per voxel: orientations scattered around `axis`, r and f from a few
    values."""
    from ..data.diffusion.signal import D_AXON, cos2_angles, extra_perp_diffusivity

    u = rng.normal(0, 0.3, (n, 3))
    u[:, axis] = 1.0
    c2 = cos2_angles(protocol, u / np.linalg.norm(u, axis=1, keepdims=True))
    b = protocol.b_si[None]
    f = rng.choice(WB_FRACTIONS, n)[:, None]
    dperp = extra_perp_diffusivity(f)
    s_in = np.exp(-b * D_AXON * c2 + (1 - c2) * log_perp[rng.integers(0, len(WB_RADII_UM), n)])
    return f * s_in + (1 - f) * np.exp(-b * (dperp + (D_AXON - dperp) * c2))


def hcp_dwi(protocol: dif.Protocol, tissue: dict, snr: float = 30.0, seed: int = 0) -> np.ndarray:
    """An int16 DWI (X, Y, Z, M) written slice by slice (every voxel, as a scanner's: Rayleigh noise outside the
    brain): white matter two populations (left-right and inferior-superior, the second's share 0.2-0.5), grey
    matter isotropic 0.8e-9 m²/s, CSF free water; S0 1000 x the tissue fraction, Rician noise at `snr`."""
    from ..data.diffusion.signal import free_water_signal, intra_log_perp_table

    rng = np.random.default_rng(seed)
    log_perp = intra_log_perp_table(protocol, WB_RADII_UM)
    iso = np.stack([free_water_signal(protocol), np.exp(-protocol.b_si * 0.8e-9)])
    shape = tissue["wm"].shape
    out = np.empty(shape + (protocol.m,), np.int16)
    sigma = 1000.0 / snr
    for z in range(shape[2]):
        csf, gm, wm = (tissue[k][:, :, z].reshape(-1) for k in ("csf", "gm", "wm"))
        total = csf + gm + wm
        idx = np.nonzero(total > 0.05)[0]
        sig = np.zeros((total.size, protocol.m))
        share = rng.uniform(0.2, 0.5, len(idx))[:, None]
        fibres = (1 - share) * _fibres(protocol, rng, len(idx), 0, log_perp) + \
            share * _fibres(protocol, rng, len(idx), 2, log_perp)
        sig[idx] = (wm[idx, None] * fibres + csf[idx, None] * iso[0] + gm[idx, None] * iso[1]) * \
            (1000.0 / np.maximum(total[idx], 1e-6) * total[idx].clip(0, 1))[:, None]
        noisy = np.hypot(sig + rng.normal(0, sigma, sig.shape), rng.normal(0, sigma, sig.shape))
        out[:, :, z] = np.rint(noisy).clip(0, 32767).reshape(shape[:2] + (protocol.m,))
    return out


def central_slab(mask: np.ndarray, voxels: int) -> np.ndarray:
    """The mask's voxels in the fewest central axial slices that hold at least `voxels` of them (all: 0)."""
    per_slice = mask.sum((0, 1))
    if voxels <= 0 or voxels >= per_slice.sum():
        return mask
    lo = hi = int(np.argmax(per_slice))
    while per_slice[lo:hi + 1].sum() < voxels:
        if lo > 0 and (hi + 1 >= len(per_slice) or per_slice[lo - 1] >= per_slice[hi + 1]):
            lo -= 1
        else:
            hi += 1
    out = np.zeros_like(mask)
    out[:, :, lo:hi + 1] = mask[:, :, lo:hi + 1]
    return out


def tree_rss() -> int:
    """Resident bytes of this process and its descendants (Linux /proc)."""
    page = os.sysconf("SC_PAGE_SIZE")
    parent, rss = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/statm") as f:
                rss[int(name)] = int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    tree, grown = {os.getpid()}, True
    while grown:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= new
        grown = bool(new)
    return sum(rss.get(p, 0) for p in tree)


class PeakMemory:
    """`with PeakMemory() as peak:` samples tree_rss() every `every` s in a thread; peak.bytes is the largest."""

    def __init__(self, every: float = 0.2):
        import threading

        self.every, self.bytes = every, tree_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.bytes = max(self.bytes, tree_rss())

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.bytes = max(self.bytes, tree_rss())


def _fit_whole_brain(model, data, protocol, mask, method, workers, chunk, before) -> dict:
    """One fit_maps on `mask` (CSD orientations, then the maps in `workers` processes, with their precision as a
    bundle has it: the Cramér–Rao bounds and the noise): phases, peak memory, the estimated noise σ."""
    marks: dict = {}
    held = tree_rss()
    t = time.time()
    with PeakMemory() as peak:
        maps = run.fit_maps(model, data, protocol, mask, method, keep_weights=False, chunk=chunk, workers=workers,
                            precision=True,
                            on_slice=lambda done, total: marks.setdefault("first_slice", time.time()),
                            on_chunk=lambda done, total: marks.setdefault("orientations_done", time.time()),
                            log=lambda s: None)
    wall = time.time() - t
    n = int(mask.sum())
    return {"voxels": n, "slices": int(mask.any((0, 1)).sum()), "wall_s": round(wall, 1),
            "response_s": round(marks["first_slice"] - t, 1),
            "peaks_s": round(marks["orientations_done"] - marks["first_slice"], 1),
            "maps_s": round(t + wall - marks["orientations_done"], 1), "ms_per_voxel_wall": round(1e3 * wall / n, 3),
            "rss_with_input_bytes": held, "peak_rss_bytes": peak.bytes,
            "memory_over_input": round((peak.bytes - before) / data.nbytes, 3),
            "orientations": maps["orientations"]["method"],
            "noise_sigma": round(float(maps["precision"]["sigma"]), 3),
            "snr_median": round(float(maps["precision"]["snr_median"]), 2)}


def _result_bytes_per_voxel(model, data, protocol, mask, method, n: int = 256) -> float:
    """Bytes fit_maps holds per fitted voxel until the end: its chunks' per-voxel results (twice: the parts and
    their concatenation) and the voxel's three indices."""
    sel = tuple(i[:n] for i in np.nonzero(mask))
    u = np.broadcast_to(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), (len(sel[0]), 2, 3))
    e = run._estimate_chunk(model, data[sel], u, method, protocol, "cpu", False, precision=True)
    return 2 * sum(v.nbytes for v in e.values() if isinstance(v, np.ndarray)) / len(sel[0]) + 3 * 8


def _extrapolate(runs: list, n_all: int, per_voxel: float, before: int, input_bytes: int) -> dict:
    """The whole mask from the larger slab: its seconds x (white-matter voxels / its voxels), an upper bound (the
    fixed costs, the workers' start, scale too; a line through both slabs follows the load more than the mask);
    memory its peak plus the per-voxel results of the voxels it did not fit (the rest of the peak is bounded by the
    chunk, the slice or the volume's shape, not by the mask)."""
    b = max(runs, key=lambda r: r["voxels"])
    scale = n_all / b["voxels"]
    peak = b["peak_rss_bytes"] + per_voxel * (n_all - b["voxels"])
    return {"how": "time: the larger slab's seconds x white-matter voxels / its voxels; memory: its peak + "
                   "result_bytes_per_voxel x the white-matter voxels it did not fit",
            **{k: round(b[k] * scale, 1) for k in ("wall_s", "response_s", "peaks_s", "maps_s")},
            "result_bytes_per_voxel": round(per_voxel, 1), "peak_rss_bytes": int(peak),
            "memory_over_input": round((peak - before) / input_bytes, 3)}


def bench_whole_brain(wm_voxels: int = 0, workers: int = 2, chunk: int = 4096, method: str = "hybrid") -> dict:
    """The hybrid on the white matter (WM fraction > 0.5) of an HCP-size DWI (145 x 174 x 145 x 288, int16):
    CSD orientations, then the maps in `workers` processes. `wm_voxels` > 0: central axial slabs of wm_voxels / 2
    and wm_voxels WM voxels instead, extrapolated to the whole mask (_extrapolate).
    memory_over_input: (peak resident memory of the process and its workers - the process' memory before the
    DWI existed) / the int16 DWI's bytes."""
    import torch

    from .. import models
    from ..models import microstructure as msm
    from ..training import microstructure as ms_training

    torch.set_num_threads(1)
    p = hcp_protocol()
    config = {**msm.default_config(), "protocol": p.to_config()}  # the paper's dictionary, CPU-sized networks
    model = models.build("microstructure", config)
    ms_training.fit_networks(model, ms_training.simulate_training_set(model, 1000, (30,), seed=0), epochs=1,
                             batch_size=64, lr=3e-3)  # trained briefly: the cost, not the accuracy, is measured
    tissue = hcp_tissue()
    whole = tissue["wm"] > 0.5
    before = tree_rss()
    t = time.time()
    data = hcp_dwi(p, tissue)
    out: dict = {"shape": list(data.shape), "dtype": str(data.dtype), "input_bytes": int(data.nbytes),
                 "protocol": {"name": p.name, "shells": [list(s) for s in HCP_SHELLS], "big_delta_s": HCP_TIMING[0],
                              "small_delta_s": HCP_TIMING[1]},
                 "method": method, "workers": workers, "chunk": chunk, "white_matter_voxels": int(whole.sum()),
                 "generation_s": round(time.time() - t, 1), "rss_before_input_bytes": before}
    masks = [whole]
    if wm_voxels > 0:  # the second slab at least a slice more than the first
        masks = [central_slab(whole, wm_voxels // 2)]
        masks.append(central_slab(whole, max(wm_voxels, int(masks[0].sum()) + 1)))
    out["runs"] = []
    for mask in masks:
        out["runs"].append(_fit_whole_brain(model, data, p, mask, method, workers, chunk, before))
        logger.info(f"whole brain: {out['runs'][-1]}")
    if wm_voxels > 0:
        per_voxel = _result_bytes_per_voxel(model, data, p, whole, method)
        out["extrapolated_whole_mask"] = _extrapolate(out["runs"], out["white_matter_voxels"], per_voxel, before,
                                                      data.nbytes)
    logger.info(f"whole brain: {out}")
    return out


# ------------------------------------------------------------------------------------------------ nnls batch
def bench_nnls_chunks(sizes=(2048, 1024, 512, 256, 128), n: int = 4096, reps: int = 3) -> dict:
    """The hybrid's NNLS (nnls_weights) on n simulated voxels of the HCP protocol with the paper's dictionary, one
    thread, in batches of each size: ms per voxel, and how far the weights and residuals move from the first
    size's (the optimum of a few voxels is not unique)."""
    import torch

    from .. import models
    from ..models import microstructure as msm
    from ..training import microstructure as ms_training

    torch.set_num_threads(1)
    p = hcp_protocol()
    model = models.build("microstructure", {**msm.default_config(), "protocol": p.to_config()})
    sim = ms_training.simulate_training_set(model, n, (30,), seed=0, with_weights=False)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    found: dict[int, dict] = {}
    for rep in range(reps):  # the sizes interleaved, so a change of load hits every size alike
        for size in sizes:
            t = time.perf_counter()
            found[size] = msm.nnls_weights(model, sim["signal"], sim["u"], chunk=size)
            times[size].append(1e3 * (time.perf_counter() - t) / n)
            logger.info(f"nnls chunk {size}, repetition {rep + 1}/{reps}: {times[size][-1]:.3f} ms/voxel")
    ref = found[sizes[0]]
    rows = [{"chunk": size, "ms_per_voxel": round(float(np.median(times[size])), 3),
             "ms_per_voxel_runs": [round(x, 3) for x in times[size]],
             "voxels_with_other_weights": int((np.abs(found[size]["w"] - ref["w"]).max(1) > 1e-6).sum()),
             "max_residual_change": float(np.abs(found[size]["residual"] - ref["residual"]).max())} for size in sizes]
    for r in rows:
        logger.info(f"nnls chunks: {r}")
    return {"voxels": n, "protocol": p.name, "atoms": model.n_atoms, "default": msm.NNLS_CHUNK, "repetitions": reps,
            "rows": rows, "hybrid": [hybrid_cost(q, n // 2, reps) for q in (p, dif.hcp_mgh_protocol())]}


def bench_extra_law_cost(n: int = 2048, reps: int = 3) -> dict:
    """The whole hybrid estimate on HCP MGH (M = 552) with either extra-axonal law (hybrid_cost), the two
    interleaved per repetition so a change of load hits both: what the calibrated law's log1p per extra-axonal
    row costs against the aim of 1 ms per voxel per core."""
    runs: dict[str, list[dict]] = {law: [] for law in dif.EXTRA_AXONAL_LAWS}
    for _ in range(reps):
        for law in dif.EXTRA_AXONAL_LAWS:
            runs[law].append(hybrid_cost(dif.hcp_mgh_protocol(), n, 1, law))
    rows: dict[str, dict[str, Any]] = {law: {"ms_per_voxel": round(float(np.median([r["ms_per_voxel"] for r in rs])), 3),
                  "ms_per_voxel_runs": [r["ms_per_voxel"] for r in rs],
                  "precision_ms_per_voxel": round(float(np.median([r["precision_ms_per_voxel"] for r in rs])), 3)}
            for law, rs in runs.items()}
    return {"protocol": "hcp-mgh", "voxels": n, "repetitions": reps, "laws": rows,
            "mc_over_tortuosity": round(rows["mc"]["ms_per_voxel"] / rows["tortuosity"]["ms_per_voxel"], 3)}


def hybrid_cost(p: dif.Protocol, n: int, reps: int, extra_axonal: str = "tortuosity") -> dict:
    """The whole hybrid estimate (NNLS + split MLPs; the networks untrained: the cost is the same) at the default
    batch on n simulated voxels of protocol p, one thread: median ms per voxel of wall and CPU time (the aim: 1 ms
    per voxel per core); and of the bundle's precision output after it (the Cramér–Rao bound at the estimates)."""
    import torch

    from .. import models
    from ..models import microstructure as msm

    torch.set_num_threads(1)
    model = models.build("microstructure", {**msm.default_config(), "protocol": p.to_config(),
                                            "extra_axonal": extra_axonal})
    sim = dif.simulate(p, n, 30.0, 0, law=model.extra_law)
    msm.estimate(model, sim["signal"][:64], sim["u"][:64])  # warm-up: the protocol's radius table, allocations
    wall, cpu, bound = [], [], []
    for rep in range(reps):
        est = msm.estimate(model, sim["signal"], sim["u"], "hybrid")
        wall.append(1e3 * est["seconds"] / n)
        cpu.append(1e3 * est["cpu_seconds"] / n)
        t = time.perf_counter()
        dif.cramer_rao(p, sim["u"], est["nu"], est["r"], est["f"], 1.0, law=model.extra_law)
        bound.append(1e3 * (time.perf_counter() - t) / n)
        logger.info(f"hybrid on {p.name} (M = {p.m}), repetition {rep + 1}/{reps}: {wall[-1]:.3f} ms/voxel, "
                    f"its precision {bound[-1]:.3f}")
    return {"protocol": p.name, "m": p.m, "b_max": float(p.bvals.max()), "voxels": n, "chunk": msm.NNLS_CHUNK,
            "ms_per_voxel": round(float(np.median(wall)), 3), "cpu_ms_per_voxel": round(float(np.median(cpu)), 3),
            "ms_per_voxel_runs": [round(x, 3) for x in wall],
            "precision_ms_per_voxel": round(float(np.median(bound)), 3)}


# ------------------------------------------------------------------------------------------------ jobs
def bench_jobs(methods=("hybrid", "fingerprinting"), reps: int = 2) -> dict:
    import requests

    from .. import checkpoint
    from ..server import MonaiLabelServer

    p = dif.hcp_mgh_protocol(8)
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    studies = work / "datastore"
    studies.mkdir()
    paths = _slab(work / "phantom", p)
    for key in ("bval", "bvec", "json", "dwi"):
        shutil.copy(paths[key], studies / paths[key].name)
    model = _small_model(p)
    checkpoint.save(work / "model" / "microstructure.pt", model, "microstructure", model.config)
    data, _, _, mask, _ = run.load_dwi(studies / "dwi.nii.gz")
    out: dict = {"shape": list(data.shape), "voxels": int(mask.sum()), "runs": []}
    server = MonaiLabelServer(studies, conf={"models": "microstructure", "model_dir": work / "model",
                                             "pretrained": "false"}, log_path=work / "server.log")
    url = server.start(timeout=300)
    try:
        for method in methods:
            for rep in range(reps):
                t = time.time()
                r = requests.post(f"{url}/infer/microstructure", params={"image": "dwi", "output": "image"},
                                  data={"params": json.dumps({"method": method, "bundle": True})}, timeout=7200)
                r.raise_for_status()
                row = {"method": method, "rep": rep, "infer_s": round(time.time() - t, 2)}
                for chunk in (16384, 4096):
                    t = time.time()
                    r = requests.post(f"{url}/jobs/microstructure", params={"image": "dwi"},
                                      json={"method": method, "chunk": chunk}, timeout=60)
                    r.raise_for_status()
                    job = r.json()["id"]
                    while (s := requests.get(f"{url}/jobs/{job}", timeout=60).json())["status"] in ("queued",
                                                                                                 "running"):
                        time.sleep(0.2)
                    if s["status"] != "done":
                        raise RuntimeError(f"job {job} {s['status']}: {s['error']}")
                    requests.get(f"{url}/jobs/{job}/result", timeout=600).raise_for_status()
                    wall = time.time() - t
                    row[f"job_chunk{chunk}"] = {"wall_s": round(wall, 2), "server_s": s["elapsed_s"],
                                                "overhead_s": round(wall - s["elapsed_s"], 2),
                                                "chunks": s["progress"]["chunks_total"]}
                out["runs"].append(row)
                logger.info(f"jobs: {row}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--parts", nargs="+", default=["jobs", "dask", "msmt"],
                    choices=["jobs", "dask", "msmt", "whole_brain", "nnls_chunks", "extra_law_cost"])
    ap.add_argument("--whole-brain", action="store_true", help="run the whole_brain part only (minutes; ~3 GB)")
    ap.add_argument("--wm-voxels", type=int, default=0,
                    help="whole_brain: fit a central slab of this many white-matter voxels and extrapolate (0: all)")
    ap.add_argument("--workers", type=int, default=2, help="whole_brain: processes for the maps")
    ap.add_argument("--chunk", type=int, default=4096, help="whole_brain: voxels per chunk (a job's default 4096)")
    ap.add_argument("--reps", type=int, default=2, help="jobs: repetitions per method")
    ap.add_argument("--methods", nargs="+", default=["hybrid", "fingerprinting"], help="jobs: methods")
    args = ap.parse_args(argv)
    if args.whole_brain:
        args.parts = ["whole_brain"]
    setup_process()
    warnings.simplefilter("ignore")
    path = args.out / "microstructure_scale.json"
    result: dict = json.loads(path.read_text()) if path.is_file() else {}
    command = "python -m sparsesight.bench.microstructure_scale " + " ".join(argv or [])
    parts = {"jobs": lambda: bench_jobs(tuple(args.methods), args.reps), "dask": bench_dask, "msmt": bench_msmt,
             "whole_brain": lambda: bench_whole_brain(args.wm_voxels, args.workers, args.chunk),
             "nnls_chunks": bench_nnls_chunks, "extra_law_cost": bench_extra_law_cost}
    for name in parts:
        if name in args.parts:
            load = round(os.getloadavg()[0], 2)
            result[name] = {"command": command, "cpus": os.cpu_count(), "python": platform.python_version(),
                            "load_1min_at_start": load, "result": parts[name]()}
            result[name]["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    logger.info(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
