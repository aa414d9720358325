"""Whole-brain scale and orientations of the microstructure task (issue 21): what a job costs against the
synchronous infer, Dask against the in-process chunks, MSMT-CSD against single-shell CSD.

    python -m sparsesight.bench.microstructure_scale --out bench/results            # all three parts
    python -m sparsesight.bench.microstructure_scale --parts dask msmt --out out/bench

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
from . import log_to_stderr

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
    ap.add_argument("--parts", nargs="+", default=["jobs", "dask", "msmt"], choices=["jobs", "dask", "msmt"])
    ap.add_argument("--reps", type=int, default=2, help="jobs: repetitions per method")
    ap.add_argument("--methods", nargs="+", default=["hybrid", "fingerprinting"], help="jobs: methods")
    args = ap.parse_args(argv)
    log_to_stderr()
    warnings.simplefilter("ignore")
    path = args.out / "microstructure_scale.json"
    result: dict = json.loads(path.read_text()) if path.is_file() else {}
    command = "python -m sparsesight.bench.microstructure_scale " + " ".join(argv or [])
    parts = {"jobs": lambda: bench_jobs(tuple(args.methods), args.reps), "dask": bench_dask, "msmt": bench_msmt}
    for name in ("jobs", "dask", "msmt"):
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
