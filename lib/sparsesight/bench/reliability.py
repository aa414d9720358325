"""Crash-safety benchmark: labels acknowledged with 200 must survive kill -9 of the server at any moment.

    python -m sparsesight.bench.reliability [--trials 20] [--clients 6] [--seed 0] [--out bench/results]

Drives the real MONAI Label server with apps/sparsesight as a child process (sparsesight.server; nothing here
imports monailabel). One datastore (2 phantom cases at 4 mm) for the whole run. Each trial starts the server on
that datastore, lets `clients` threads save labels concurrently (PUT /datastore/label, each save under a tag of
its own so that every acknowledged save names one file), and kills the server's process group with SIGKILL
after a random 0.2-2.5 s. The next start must succeed on whatever the kill left (an index half-written, temp
files) and, before its own burst, every label acknowledged in any earlier trial must be present, readable
(GET /datastore/label, same bytes as sent) and listed (GET /datastore/?output=all). After the last trial one
more start checks them all.

Writes reliability.json under --out: trials, saves acknowledged, saves not acknowledged (cut by the kill),
labels lost (acknowledged but missing, unreadable, changed or unlisted), failed starts, index recoveries seen in
the server logs, seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import requests

from ..data.phantom import write_dataset
from ..server import MonaiLabelServer

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


def kill(server: MonaiLabelServer) -> None:
    """SIGKILL the server's whole process group (it runs in a session of its own) and reap it."""
    if server.proc is None or server.proc.poll() is not None:
        return
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.proc.wait(timeout=30)
    if getattr(server, "_log", None):
        server._log.close()
        server._log = None


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
        progress=print) -> dict:
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
            kill(server)
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
        kill(server)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--keep", action="store_true", help="keep the work folder (datastore, server logs)")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sparsesight-reliability-"))
    try:
        result = run(work, trials=a.trials, clients=a.clients, seed=a.seed)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".reliability.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "reliability.json")
    print(f"{result['trials']} trials: {result['saves_acknowledged']} saves acknowledged, "
          f"{result['labels_lost']} lost, {result['failed_starts']} failed starts -> {out / 'reliability.json'}")
    return 0 if result["labels_lost"] == 0 and result["failed_starts"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
