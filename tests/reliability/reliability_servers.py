"""Helpers of the reliability tests: real MONAI Label servers on datastores and model folders of their own.

Reuses tests/server/conftest.py (loaded from that file, not copied): its `Server` handle and its log-tail report
hook. No training: the checkpoints are fresh networks (sparsesight.bench.server_probes.write_checkpoints).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sparsesight.bench.server_probes import write_checkpoints  # noqa: F401  (fresh networks, shared with the bench)

ROOT = Path(__file__).resolve().parents[2]
server_conftest = sys.modules["sparsesight_tests_server_conftest"]  # loaded by tests/conftest.py

Server = server_conftest.Server

MODELS = ("mlcsc", "sum")


make_datastore = server_conftest.make_datastore


def start(work: Path, studies: Path, phantom: Path, conf: dict | None = None, name: str = "server") -> Server:
    """The real server serving only MODELS (see server_conftest.start)."""
    return server_conftest.start(work, studies, phantom, conf={"models": ",".join(MODELS), **(conf or {})}, name=name)


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
