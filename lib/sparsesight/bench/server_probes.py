"""Measurements of a running SparseSight server, shared by `sparsesight.bench.reliability` and tests/reliability.

Everything talks to the server over HTTP or reads /proc (Linux): nothing here imports monailabel. The server is
any process started by `sparsesight.server.MonaiLabelServer` (its pid is the root of the process tree measured).
"""
from __future__ import annotations

import json
import statistics
import threading
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import requests

from .. import checkpoint, models

MiB = 1 << 20

#: the upload routes a gzip bomb is sent through: name -> (method, path, query, multipart field)
BOMB_ROUTES = {
    "image upload": ("PUT", "/datastore/image", {"image": "hostile"}, "file"),
    "infer upload": ("POST", "/infer/mlcsc", {"output": "image"}, "file"),
}


# ---------------------------------------------------------------------------------------------- model files
def write_checkpoints(model_dir: Path, names=("mlcsc", "sum")) -> dict:
    """{name: version} of fresh (untrained) networks saved as <model_dir>/<name>.pt: enough for the server to
    serve infers of the right size and cost without a training run."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    return {n: checkpoint.save(model_dir / f"{n}.pt", models.build(n), n, models.default_config(n)) for n in names}


# ---------------------------------------------------------------------------------------------- hostile bodies
def small_image(dtype=np.float32) -> np.ndarray:
    """A 16^3 x 4 random image (seed 0)."""
    return np.random.default_rng(0).random((16, 16, 16, 4)).astype(dtype)


def gzip_bomb(inflated: int) -> bytes:
    """A valid small NIfTI header (16^3 x 4 float32) followed by zeros up to `inflated` bytes, gzip-compressed
    in one streamed pass (about 1 MiB per GiB)."""
    head = nib.Nifti1Image(small_image(), np.eye(4)).to_bytes()
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(head)]
    zeros = bytes(16 * MiB)
    left = inflated - len(head)
    while left > 0:
        out.append(comp.compress(zeros[: min(left, len(zeros))]))
        left -= len(zeros)
    out.append(comp.flush())
    return b"".join(out)


# ---------------------------------------------------------------------------------------------- memory (/proc)
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM, ...); 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pids) -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident set) to the current RSS."""
    for p in pids:
        Path(f"/proc/{p}/clear_refs").write_text("5")


def rss_mib(pids) -> float:
    return sum(status_kib(p, "VmRSS") for p in pids) / 1024


def peak_rss_mib(pids) -> float:
    return sum(status_kib(p, "VmHWM") for p in pids) / 1024


def bomb_upload(url: str, server_pid: int, bomb: bytes, route: str = "image upload", headers=None,
                timeout: float = 600) -> dict:
    """Send `bomb` through one of BOMB_ROUTES and measure the server process tree's memory around it:
    {route, status, detail, seconds, rss_before_mib, peak_rss_mib, peak_over_before_mib}. The peak is VmHWM,
    reset just before the request."""
    method, path, params, field = BOMB_ROUTES[route]
    pids = process_tree(server_pid)
    reset_peak_rss(pids)
    before = rss_mib(pids)
    start = time.time()
    r = requests.request(method, url + path, params=params, files={field: ("bomb.nii.gz", bomb)},
                         headers=headers or {}, timeout=timeout)
    seconds = time.time() - start
    peak = peak_rss_mib(pids)
    try:
        detail = r.json().get("detail")
    except ValueError:
        detail = r.text[:300]
    return {"route": route, "status": r.status_code, "detail": detail, "seconds": round(seconds, 2),
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "peak_over_before_mib": round(peak - before, 1)}


# ---------------------------------------------------------------------------------------------- latency
def latency_summary(seconds: list[float]) -> dict:
    """{n, p50_s, p95_s, max_s} of latency samples (p95: the last of statistics.quantiles(n=20))."""
    if not seconds:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    p95 = statistics.quantiles(seconds, n=20)[-1] if len(seconds) >= 2 else seconds[0]
    return {"n": len(seconds), "p50_s": round(statistics.median(seconds), 4), "p95_s": round(p95, 4),
            "max_s": round(max(seconds), 4)}


def infer(url: str, model: str = "mlcsc", image: str = "case_001", params=None, headers=None,
          timeout: float = 600) -> tuple[requests.Response, float]:
    """POST /infer/{model}?image=...&output=json; (response, seconds)."""
    start = time.time()
    r = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "json"}, headers=headers or {},
                      data={"params": json.dumps(params or {})}, timeout=timeout)
    return r, time.time() - start


def info_latency_under_infers(url: str, clients: int = 8, infers_per_client: int | None = None,
                              seconds: float | None = None, model: str = "mlcsc", image: str = "case_001",
                              params=None, headers=None, poll: float = 0.05) -> dict:
    """GET /info/ latency while `clients` threads send infers back to back: each client sends
    `infers_per_client` infers, or keeps sending until `seconds` have passed (then finishes the one in flight).
    /info is timed every `poll` s from the start until the infers stop being sent (or all are done).

    Returns latency_summary of the /info times plus: info_status (the codes seen, {code: count}), infers
    ({code: count}), infer_s (sorted infer durations), and the samples themselves (info_s)."""
    if infers_per_client is None and seconds is None:
        raise ValueError("give infers_per_client or seconds")
    stop = threading.Event()
    results, lock = [], threading.Lock()

    def client():
        k = 0
        while not stop.is_set() and (infers_per_client is None or k < infers_per_client):
            try:
                r, took = infer(url, model, image, params, headers)
                outcome = (r.status_code, took)
            except requests.RequestException as e:
                outcome = (type(e).__name__, 0.0)
            with lock:
                results.append(outcome)
            k += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    deadline = None if seconds is None else time.time() + seconds
    info_s, info_status = [], {}
    while any(t.is_alive() for t in threads) and (deadline is None or time.time() < deadline):
        start = time.time()
        try:
            code = requests.get(url + "/info/", headers=headers or {}, timeout=60).status_code
        except requests.RequestException as e:
            code = type(e).__name__
        info_s.append(time.time() - start)
        info_status[code] = info_status.get(code, 0) + 1
        time.sleep(poll)
    stop.set()
    for t in threads:
        t.join()
    infers = {}
    for code, _ in results:
        infers[code] = infers.get(code, 0) + 1
    return {**latency_summary(info_s), "info_status": info_status, "infers": infers,
            "infer_s": sorted(round(s, 2) for _, s in results), "info_s": info_s}
