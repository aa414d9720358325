"""Reliability benchmark (issue 18): /info latency under load, memory under a gzip bomb, kill -9 during saves.

    python -m sparsesight.bench.reliability [--trials 20] [--clients 6] [--seed 0] [--latency-seconds 30]
        [--infer-clients 8] [--bomb-mib 1024] [--out bench/results]

Drives the real MONAI Label server with apps/sparsesight as a child process (sparsesight.server; nothing here
imports monailabel). The measurements are in sparsesight.bench.server_probes, which tests/reliability uses too.

Probes, on one server (default limits; a fresh, untrained `mlcsc` checkpoint, as tests/reliability writes; 2
phantom cases at 4 mm):

- latency: `--infer-clients` threads send infers (POST /infer/mlcsc, output json) back to back for
  `--latency-seconds` while GET /info/ is timed every 50 ms: p50, p95, max (aim: p95 < 0.5 s);
- gzip bomb: a `.nii.gz` of about 1 MiB that inflates to `--bomb-mib` MiB, uploaded as an image and as an infer
  file, once after a warm-up infer and again after the latency load: the status codes, and the server process
  tree's peak RSS (VmHWM, reset just before each upload) against max_decompressed_bytes + 200 MiB (the aim) and
  against its RSS just before (the baseline: what the bomb itself adds).

Kill trials (`--trials`; 0 skips them): one datastore (2 phantom cases at 4 mm) for the whole run. Each trial
starts the server on that datastore, lets `clients` threads save labels concurrently (PUT /datastore/label, each
save under a tag of its own so that every acknowledged save names one file), and kills the server's process group
with SIGKILL after a random 0.2-2.5 s. The next start must succeed on whatever the kill left (an index
half-written, temp files) and, before its own burst, every label acknowledged in any earlier trial must be
present, readable (GET /datastore/label, same bytes as sent) and listed (GET /datastore/?output=all). After the
last trial one more start checks them all.

Writes reliability.json under --out: for the kill trials (top level) trials, saves acknowledged, saves not
acknowledged (cut by the kill), labels lost (acknowledged but missing, unreadable, changed or unlisted), failed
starts, index recoveries seen in the server logs, seconds; "info_latency" and "gzip_bomb" for the probes. A part
that was not run is absent from the file (`--trials 0` writes "trials": 0 only): write partial runs to another
--out to keep the recorded one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from ..data.phantom import write_dataset
from ..server import MonaiLabelServer
from . import server_probes

IMAGES = ("case_000", "case_001")


def auth_headers() -> dict:
    """The API token the server was given through the environment, if any (its guard then asks for it)."""
    token = os.environ.get("SPARSESIGHT_API_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def make_datastore(work: Path) -> tuple[Path, dict]:
    """A datastore of the phantom images, and {image id: label bytes} to save."""
    phantom = work / "phantom"
    write_dataset(phantom, n_cases=len(IMAGES), seed=0, downsample=4, n_test=0, progress=False)
    studies = work / "datastore"
    studies.mkdir(parents=True)
    for image in IMAGES:
        shutil.copy(phantom / "imagesTr" / f"{image}.nii.gz", studies / f"{image}.nii.gz")
    labels = {image: (phantom / "labelsTr" / f"{image}.nii.gz").read_bytes() for image in IMAGES}
    return studies, labels


def burst(url: str, labels: dict, trial: int, clients: int, stop: threading.Event):
    """Start concurrent label saves that run until `stop` or the server dies: (threads, [(image, tag)]
    acknowledged, [saves cut]), filled in while they run."""
    acked, cut, lock = [], [0], threading.Lock()

    def client(c: int):
        session, k = requests.Session(), 0
        while not stop.is_set():
            image = IMAGES[(c + k) % len(IMAGES)]
            tag = f"t{trial}_c{c}_{k}"
            k += 1
            try:
                r = session.put(f"{url}/datastore/label", params={"image": image, "tag": tag},
                                files={"label": (f"{image}.nii.gz", labels[image])}, headers=auth_headers(),
                                timeout=30)
            except requests.RequestException:
                with lock:
                    cut[0] += 1
                return  # the server is gone
            with lock:
                if r.status_code == 200:
                    acked.append((image, tag))
                else:
                    cut[0] += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    return threads, acked, cut


def verify(url: str, labels: dict, acked: list) -> list:
    """The acknowledged (image, tag) saves that are missing, unreadable, changed or not listed."""
    listing = requests.get(f"{url}/datastore/", params={"output": "all"}, headers=auth_headers(), timeout=60)
    listing.raise_for_status()
    objects = listing.json().get("objects", {})
    lost = []
    for image, tag in acked:
        listed = tag in objects.get(image, {}).get("labels", {})
        r = requests.get(f"{url}/datastore/label", params={"label": image, "tag": tag}, headers=auth_headers(),
                         timeout=60)
        if not listed or r.status_code != 200 or r.content != labels[image]:
            lost.append({"image": image, "tag": tag, "listed": listed, "status": r.status_code,
                         "same_bytes": r.status_code == 200 and r.content == labels[image]})
    return lost


def run(work: Path, trials: int = 20, clients: int = 6, seed: int = 0, models: str = "mlcsc",
        progress=None) -> dict:
    """The kill -9 trials (module docstring); `progress(line)` hears one line per trial."""
    progress = progress or (lambda line: None)
    rng = random.Random(seed)
    work = Path(work)
    studies, labels = make_datastore(work)
    start = time.time()
    acked_all, cut_total, lost, failed_starts, recoveries = [], 0, {}, 0, 0
    conf = {"model_dir": work / "model", "models": models}
    previous: list = []
    for trial in range(trials + 1):  # the extra start checks the last trial
        server = MonaiLabelServer(studies, conf=conf, log_path=work / "logs" / f"server-{trial}.log")
        try:
            url = server.start(timeout=240)
        except (RuntimeError, TimeoutError) as e:
            failed_starts += 1
            progress(f"trial {trial}: the server did not start: {str(e)[:300]}")
            server.stop(kill=True)
            continue
        recoveries += server.log(tail=10**7).count("was empty or corrupt")
        missing = verify(url, labels, acked_all if trial == trials else previous)
        lost.update({(x["image"], x["tag"]): x for x in missing})
        if trial == trials:
            server.stop()
            break
        stop = threading.Event()
        threads, acked, cut = burst(url, labels, trial, clients, stop)
        time.sleep(rng.uniform(0.2, 2.5))
        server.stop(kill=True)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        acked_all += acked
        cut_total += cut[0]
        previous = list(acked)
        progress(f"trial {trial + 1}/{trials}: {len(acked)} saves acknowledged before kill -9, {cut[0]} cut; "
                 f"{len(missing)} of the previous trial's lost")
    return {
        "benchmark": "kill -9 during concurrent label saves (PUT /datastore/label), restart on the same datastore",
        "trials": trials,
        "clients": clients,
        "seed": seed,
        "saves_acknowledged": len(acked_all),
        "saves_cut_by_kill": cut_total,
        "labels_lost": len(lost),
        "lost": list(lost.values())[:50],
        "failed_starts": failed_starts,
        "index_recoveries_logged": recoveries,
        "seconds": round(time.time() - start, 1),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------- probes
def start_server(studies: Path, conf: dict, log_path: Path, tmpdir: Path) -> MonaiLabelServer:
    """The real server on studies, with a TMPDIR of its own (inherited by the server process only)."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    server = MonaiLabelServer(studies, conf=conf, log_path=log_path)
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmpdir)
    try:
        server.start(timeout=240)
    finally:
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
    return server


def probe(work: Path, latency_seconds: float = 30.0, infer_clients: int = 8, bomb_mib: int = 1024,
          progress=None) -> dict:
    """On one server: a gzip bomb that inflates to `bomb_mib` MiB (0 skips) on the server just started, again
    after a warm-up infer, /info latency while `infer_clients` send infers for `latency_seconds` (0 skips), and
    the bomb once more after that load: {"info_latency": ..., "gzip_bomb": ...}."""
    progress = progress or (lambda line: None)
    work = Path(work)
    studies, _ = make_datastore(work)
    model_dir = work / "model"
    server_probes.write_checkpoints(model_dir, names=("mlcsc",))
    server = start_server(studies, {"model_dir": model_dir, "models": "mlcsc"}, work / "logs" / "probe.log",
                          work / "tmp")
    url, out, headers = server.url, {}, auth_headers()
    bomb = server_probes.gzip_bomb(bomb_mib * server_probes.MiB) if bomb_mib > 0 else b""

    def bombs(phase: str) -> list[dict]:
        routes = [{"phase": phase, **server_probes.bomb_upload(url, server.proc.pid, bomb, route, headers=headers)}
                  for route in server_probes.BOMB_ROUTES]
        for m in routes:
            progress(f"bomb via {m['route']} ({phase}): {m['status']} in {m['seconds']:.1f} s, server RSS "
                     f"{m['rss_before_mib']:.0f} -> peak {m['peak_rss_mib']:.0f} MiB")
        return routes

    try:
        security = requests.get(url + "/info/", headers=headers, timeout=60).json()["security"]
        routes = bombs("server started") if bomb_mib > 0 else []
        r, _ = server_probes.infer(url, headers=headers)  # warm-up: the model's first use
        if r.status_code != 200:
            raise RuntimeError(f"an infer failed before the probes: {r.status_code} {r.text[:300]}")
        routes += bombs("after one infer") if bomb_mib > 0 else []
        if latency_seconds > 0:
            _, alone = server_probes.infer(url, headers=headers)
            progress(f"latency: one infer alone {alone:.2f} s; {infer_clients} clients for {latency_seconds:.0f} s")
            m = server_probes.info_latency_under_infers(url, clients=infer_clients, seconds=latency_seconds,
                                                        headers=headers)
            out["info_latency"] = {
                "benchmark": f"GET /info/ every 50 ms while {infer_clients} clients send POST /infer/mlcsc back to "
                             f"back (fresh checkpoint, 4 mm phantom, default infer_workers/infer_queue)",
                "infer_clients": infer_clients,
                "seconds": latency_seconds,
                "n": m["n"], "p50_s": m["p50_s"], "p95_s": m["p95_s"], "max_s": m["max_s"],
                "aim_p95_s": 0.5,
                "info_status": {str(k): v for k, v in m["info_status"].items()},
                "infers": {str(k): v for k, v in m["infers"].items()},
                "infer_alone_s": round(alone, 2),
                "infer_under_load_median_s": round(statistics.median(m["infer_s"]), 2) if m["infer_s"] else None,
                "infer_workers": security.get("infer_workers"),
                "infer_queue": security.get("infer_queue"),
            }
            routes += bombs(f"after {infer_clients} infer clients") if bomb_mib > 0 else []
        if bomb_mib > 0:
            limit_mib = security["max_decompressed_bytes"] / server_probes.MiB
            phases: dict = {}
            for u in routes:
                ph = phases.setdefault(u["phase"], {"rss_before_mib": u["rss_before_mib"], "peak_rss_mib": 0.0})
                ph["peak_rss_mib"] = max(ph["peak_rss_mib"], u["peak_rss_mib"])
            out["gzip_bomb"] = {
                "benchmark": "a .nii.gz that inflates to bomb_mib MiB, PUT /datastore/image and POST /infer/mlcsc "
                             "(file), on the server just started, after one infer and after the latency load; "
                             "peak RSS = VmHWM of the server process tree, reset just before each upload; "
                             "baseline = its RSS just before",
                "compressed_bytes": len(bomb),
                "bomb_mib": bomb_mib,
                "max_decompressed_mib": round(limit_mib, 1),
                "aim_peak_rss_mib": round(limit_mib + 200, 1),
                "statuses": sorted({u["status"] for u in routes}),
                "uploads": len(routes),
                "peak_rss_mib": max(u["peak_rss_mib"] for u in routes),
                "max_peak_over_before_mib": max(u["peak_over_before_mib"] for u in routes),
                "phases": phases,
                "routes": routes,
            }
    finally:
        server.stop()
    return out


def aims_missed(result: dict) -> list[str]:
    """The issue's aims that this result misses."""
    missed = []
    if result.get("trials", 0) > 0:
        if result["labels_lost"] or result["failed_starts"]:
            missed.append(f"{result['labels_lost']} labels lost, {result['failed_starts']} failed starts")
    lat = result.get("info_latency")
    if lat and not (lat["p95_s"] is not None and lat["p95_s"] < lat["aim_p95_s"]):
        missed.append(f"/info p95 {lat['p95_s']} s >= {lat['aim_p95_s']} s")
    bomb = result.get("gzip_bomb")
    if bomb:
        if bomb["statuses"] != [413]:
            missed.append(f"bomb: statuses {bomb['statuses']}, not 413")
        if bomb["max_peak_over_before_mib"] > 200:
            missed.append(f"bomb: peak {bomb['max_peak_over_before_mib']} MiB over the server's RSS before (> 200)")
        for phase, ph in bomb["phases"].items():
            if ph["peak_rss_mib"] > bomb["aim_peak_rss_mib"]:
                missed.append(f"bomb ({phase}): peak RSS {ph['peak_rss_mib']} MiB > max_decompressed_bytes + 200 = "
                              f"{bomb['aim_peak_rss_mib']} MiB (RSS before: {ph['rss_before_mib']} MiB)")
    return missed


def table(result: dict) -> str:
    rows = [("measure", "value", "aim")]
    if result.get("trials", 0) > 0:
        rows += [("kill -9 trials", str(result["trials"]), ">= 20"),
                 ("saves acknowledged", str(result["saves_acknowledged"]), ""),
                 ("labels lost", str(result["labels_lost"]), "0"),
                 ("failed starts", str(result["failed_starts"]), "0")]
    lat = result.get("info_latency")
    if lat:
        rows += [(f"/info p50 / p95 / max under {lat['infer_clients']} infers (n={lat['n']})",
                  f"{lat['p50_s'] * 1000:.0f} / {lat['p95_s'] * 1000:.0f} / {lat['max_s'] * 1000:.0f} ms",
                  f"p95 < {lat['aim_p95_s'] * 1000:.0f} ms")]
    bomb = result.get("gzip_bomb")
    if bomb:
        rows += [(f"gzip bomb ({bomb['compressed_bytes'] / server_probes.MiB:.1f} MiB -> {bomb['bomb_mib']} MiB) "
                  f"status", ",".join(map(str, bomb["statuses"])), "413")]
        for phase, ph in bomb["phases"].items():
            rows += [(f"peak server RSS, {phase}", f"{ph['rss_before_mib']:.0f} -> {ph['peak_rss_mib']:.0f} MiB",
                      f"<= {bomb['aim_peak_rss_mib']:.0f} MiB")]
        rows += [(f"largest rise over the RSS before ({bomb['uploads']} uploads)",
                  f"+{bomb['max_peak_over_before_mib']:.0f} MiB", "<= +200 MiB")]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="kill -9 trials (0 skips them)")
    p.add_argument("--clients", type=int, default=6, help="concurrent label savers in the kill trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-seconds", type=float, default=30.0,
                   help="how long the infer clients run while /info is timed (0 skips the latency probe)")
    p.add_argument("--infer-clients", type=int, default=8)
    p.add_argument("--bomb-mib", type=int, default=1024,
                   help="what the gzip bomb inflates to, MiB (0 skips the bomb probe)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--keep", action="store_true", help="keep the work folder (datastore, server logs)")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sparsesight-reliability-"))
    start = time.time()
    result: dict = {}
    try:
        if a.latency_seconds > 0 or a.bomb_mib > 0:
            probes = probe(work / "probe", a.latency_seconds, a.infer_clients, a.bomb_mib, progress=print)
        else:
            probes = {}
        if a.trials > 0:
            result = run(work / "kill", trials=a.trials, clients=a.clients, seed=a.seed, progress=print)
        else:
            result = {"trials": 0, "platform": platform.platform()}
        result.update(probes)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m sparsesight.bench.reliability " + " ".join(sys.argv[1:] if argv is None else argv)
    result["total_seconds"] = round(time.time() - start, 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".reliability.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "reliability.json")
    print(table(result))
    print(f"-> {out / 'reliability.json'}")
    for m in aims_missed(result):  # reported, like every benchmark's figures; the run itself succeeded
        print(f"aim missed: {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
