"""Helpers of the reliability tests: real MONAI Label servers on datastores and model folders of their own.

Reuses tests/server/conftest.py (loaded from that file, not copied): its `Server` handle and its log-tail report
hook. No training: the checkpoints are fresh networks (sparsesight.bench.server_probes.write_checkpoints).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from sparsesight.bench.server_probes import write_checkpoints  # noqa: F401  (fresh networks, shared with the bench)
from sparsesight.data.phantom import write_dataset
from sparsesight.server import MonaiLabelServer

ROOT = Path(__file__).resolve().parents[2]
_NAME = "sparsesight_tests_server_conftest"  # the name tests/slicer loads it under: one module either way
if _NAME in sys.modules:
    server_conftest = sys.modules[_NAME]
else:
    _spec = importlib.util.spec_from_file_location(_NAME, ROOT / "tests" / "server" / "conftest.py")
    server_conftest = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = server_conftest  # dataclasses look their module up there
    _spec.loader.exec_module(server_conftest)

Server = server_conftest.Server

MODELS = ("mlcsc", "sum")


def make_datastore(work: Path, n_cases: int = 2) -> tuple[Path, Path]:
    """(datastore, phantom): n_cases 4 mm phantoms, case_000 with a final label."""
    phantom = work / "phantom"
    write_dataset(phantom, n_cases=n_cases, seed=0, downsample=4, n_test=0, progress=False)
    studies = work / "datastore"
    (studies / "labels" / "final").mkdir(parents=True)
    for image in sorted((phantom / "imagesTr").glob("*.nii.gz")):
        shutil.copy(image, studies / image.name)
    shutil.copy(phantom / "labelsTr" / "case_000.nii.gz", studies / "labels" / "final" / "case_000.nii.gz")
    return studies, phantom


def start(work: Path, studies: Path, phantom: Path, conf: dict | None = None, name: str = "server") -> Server:
    """The real server on studies with <work>/model and a TMPDIR of its own (<work>/tmp)."""
    model_dir, tmpdir = work / "model", work / "tmp"
    tmpdir.mkdir(exist_ok=True)
    conf = {"model_dir": model_dir, "models": ",".join(MODELS), **(conf or {})}
    proc = MonaiLabelServer(studies, conf=conf, log_path=work / f"{name}.log")
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmpdir)  # inherited by the server process only (restored right after start)
    try:
        url = proc.start(timeout=240)
    finally:
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
    return Server(url, studies, phantom, model_dir, tmpdir, proc, frozenset(p.name for p in tmpdir.iterdir()))


def strings(value):
    """Every string in a JSON value (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def server_paths(srv: Server) -> list[str]:
    """The server-side folders no answer may reveal (as given and resolved)."""
    out = set()
    for p in (srv.studies, srv.model_dir, srv.tmpdir, ROOT / "apps"):
        out |= {str(p), os.path.realpath(p)}
    return sorted(out)


def leaked_paths(srv: Server, answer) -> list[str]:
    """The strings of a JSON answer (or of an answer's text) that contain a server path."""
    values = list(strings(answer)) if not isinstance(answer, str) else [answer]
    if isinstance(answer, str):
        try:
            values += list(strings(json.loads(answer)))
        except ValueError:
            pass
    return [v for v in values for p in server_paths(srv) if p in v]


def stray_tmp(srv: Server, wait: float = 3.0) -> list[str]:
    """Files left in the server's TMPDIR beyond its baseline (waits for the background clean-ups first)."""
    import time

    deadline = time.time() + wait
    while True:
        left = sorted(p.name for p in srv.tmpdir.iterdir() if p.name not in srv.tmp_baseline)
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)
