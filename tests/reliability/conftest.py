"""Reliability tests (issue 18): the real MONAI Label server, started per test module where a test breaks it.

`server`: a server without a token; `guarded`: one with an API token, a CORS origin and its own limits; `fresh`
(work folder, datastore, phantom) for tests that start, kill and restart servers themselves. The helpers are in
reliability_servers.py; the log tail of a failed test's server comes from tests/server/conftest.py's hook.
"""
from __future__ import annotations

import pytest
from reliability_servers import Server, make_datastore, server_conftest, start, write_checkpoints

pytest_runtest_makereport = server_conftest.pytest_runtest_makereport  # server log tail on failures


# ---------------------------------------------------------------------- part B's fixtures (request guard tests)
def _guarded_conf() -> dict:
    from hostile_inputs import TOKEN, VIEWER, MiB

    # voxel / inflated-byte caps off, so that an allocation the machine cannot make reaches the server (507)
    return {"api_token": TOKEN, "cors_origins": VIEWER, "max_epochs": 5, "infer_workers": 1, "infer_queue": 1,
            "max_body_bytes": 64 * 1024, "max_upload_bytes": 4 * MiB, "max_voxels": 2**62,
            "max_decompressed_bytes": 2**62}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Server:
    """A server with an API token, one CORS origin, small body limits, 1 infer worker + 1 waiting, and the size
    caps off (hostile_inputs.TOKEN / VIEWER)."""
    work = tmp_path_factory.mktemp("guarded")
    studies, phantom = make_datastore(work)
    write_checkpoints(work / "model")
    srv = start(work, studies, phantom, conf=_guarded_conf(), name="guarded")
    try:
        yield srv
    finally:
        srv.process.stop()


# ---------------------------------------------------------------------- part A's fixtures
@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """(work folder, datastore, phantom) with checkpoints written, no server yet."""
    work = tmp_path_factory.mktemp("reliability")
    studies, phantom = make_datastore(work)
    write_checkpoints(work / "model")
    return work, studies, phantom


@pytest.fixture(scope="module")
def server(fresh) -> Server:
    """This module's own server (stopped at the end of the module)."""
    work, studies, phantom = fresh
    srv = start(work, studies, phantom)
    try:
        yield srv
    finally:
        srv.process.stop()
