"""The real MONAI Label server with apps/sparsesight on a free 127.0.0.1 port and a small generated datastore.

One server per test session: 4 phantom cases at 4 mm (imagesTr of sparsesight.data.phantom), case_000 with a
final label, and one short training run so that the infer tests have a checkpoint. The server's TMPDIR is a
folder of its own so the tests can see that refused uploads leave nothing behind. When a test that uses the
server fails, the tail of the server's log is added to its report.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from sparsesight.data.phantom import write_dataset
from sparsesight.server import MonaiLabelServer

N_CASES = 4
# a small patch keeps one CPU epoch to seconds on the 4 mm phantoms (60 x 60 x 39 voxels)
FAST_TRAIN = {"patch_size": [32, 32, 32], "samples_per_image": 1, "batch_size": 1}


@dataclass
class Rest:
    """REST calls to a running SparseSight server (shared by every server handle of the tests)."""
    url: str

    def get(self, path, **kw):
        kw.setdefault("timeout", 120)
        return requests.get(self.url + path, **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", 300)
        return requests.post(self.url + path, **kw)

    def put(self, path, **kw):
        kw.setdefault("timeout", 120)
        return requests.put(self.url + path, **kw)

    def delete(self, path, **kw):
        kw.setdefault("timeout", 120)
        return requests.delete(self.url + path, **kw)

    def info(self) -> dict:
        r = self.get("/info/")
        assert r.status_code == 200, r.text
        return r.json()

    def version(self, model="mlcsc"):
        return self.info()["models"][model]["version"]

    def train(self, model="mlcsc", timeout=240, **params) -> dict:
        """POST /train/{model}, wait for the task to end, return its final status (asserts it is DONE)."""
        params = {"epochs": 1, "train_config": FAST_TRAIN, **params}
        r = self.post(f"/train/{model}", json=params)
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.get("/train/").json()
            if status.get("id") == task_id and status["status"] not in ("SUBMITTED", "RUNNING"):
                assert status["status"] == "DONE", "\n".join(status.get("details", []))
                return status
            time.sleep(1)
        raise TimeoutError(f"training did not finish in {timeout} s")


@dataclass
class Server(Rest):
    studies: Path  # the datastore folder
    phantom: Path  # MSD layout: imagesTr/, labelsTr/
    model_dir: Path
    tmpdir: Path  # the server process' TMPDIR
    process: MonaiLabelServer
    tmp_baseline: frozenset = frozenset()  # what the server keeps in TMPDIR (its log config)

    def files(self) -> dict:
        """{path in the datastore: sha1}: a snapshot to show a refused request changed nothing stored."""
        return {str(p.relative_to(self.studies)): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(self.studies.rglob("*")) if p.is_file() and p.name != ".lock"}


def make_datastore(work: Path, n_cases: int = 2) -> tuple[Path, Path]:
    """(datastore, phantom): n_cases 4 mm phantoms under <work>/phantom, case_000 with a final label."""
    phantom = work / "phantom"
    write_dataset(phantom, n_cases=n_cases, seed=0, downsample=4, n_test=0, progress=False)
    studies = work / "datastore"
    (studies / "labels" / "final").mkdir(parents=True)
    for image in sorted((phantom / "imagesTr").glob("*.nii.gz")):
        shutil.copy(image, studies / image.name)
    shutil.copy(phantom / "labelsTr" / "case_000.nii.gz", studies / "labels" / "final" / "case_000.nii.gz")
    return studies, phantom


def start(work: Path, studies: Path, phantom: Path, conf: dict | None = None, name: str = "server",
          timeout: float = 240) -> Server:
    """The real server on studies with <work>/model and a TMPDIR of its own (<work>/tmp)."""
    model_dir, tmpdir = work / "model", work / "tmp"
    tmpdir.mkdir(exist_ok=True)
    # untrained unless a test asks for the shipped weights (`pretrained`): the tests train their own models
    proc = MonaiLabelServer(studies, conf={"model_dir": model_dir, "pretrained": "false", **(conf or {})},
                            log_path=work / f"{name}.log")
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmpdir)  # inherited by the server process only (restored right after start)
    try:
        url = proc.start(timeout=timeout)
    finally:
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
    return Server(url, studies, phantom, model_dir, tmpdir, proc, frozenset(p.name for p in tmpdir.iterdir()))


@pytest.fixture(scope="session")
def server_tools():
    """(make_datastore, start) for a test module that needs a server of its own (no import of this conftest)."""
    return make_datastore, start


@pytest.fixture(scope="session")
def server(request, tmp_path_factory) -> Server:
    running = getattr(request.config, "_sparsesight_server", None)
    if running is not None:  # this fixture re-exported by another conftest (tests/slicer): the same server
        yield running
        return
    work = tmp_path_factory.mktemp("monailabel")
    studies, phantom = make_datastore(work, n_cases=N_CASES)
    srv = start(work, studies, phantom, timeout=300)
    proc = srv.process
    try:
        srv.train()  # so that the infer tests have a checkpoint
        request.config._sparsesight_server = srv  # one server per session, whichever conftest asks first
        yield srv
    finally:
        request.config._sparsesight_server = None
        proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "server" in getattr(item, "funcargs", {}):
        srv = item.funcargs["server"]
        report.sections.append(("monailabel server log (tail)", srv.process.log(tail=6000)))
