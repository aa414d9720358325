"""Issue 18, part A: a crash-safe datastore. A corrupt or empty index never stops the server; labels saved with a
200 survive kill -9 at any moment (the small form of `python -m sparsesight.bench.reliability`)."""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid

import pytest
from reliability_servers import make_datastore, start

from sparsesight.bench import reliability

pytestmark = pytest.mark.server

INDEX = "datastore_v2.json"


def listing(srv) -> dict:
    r = srv.get("/datastore/", params={"output": "all"})
    assert r.status_code == 200, r.text
    return r.json()["objects"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A datastore whose index was written by the server (with a .bak), the server stopped again."""
    work = tmp_path_factory.mktemp("index")
    studies, phantom = make_datastore(work)
    srv = start(work, studies, phantom, name="first")
    try:
        r = srv.put("/datastore/image/info", params={"image": "case_001"}, data={"info": json.dumps({"note": "kept"})})
        assert r.status_code == 200, r.text
        r = srv.put("/datastore/image/info", params={"image": "case_000"}, data={"info": json.dumps({"n": 2})})
        assert r.status_code == 200, r.text
    finally:
        srv.process.stop()
    backup = (studies / f"{INDEX}.bak").read_bytes()
    assert json.loads(backup)["objects"]["case_001"]["image"]["info"]["note"] == "kept"
    return work, studies, phantom, backup


@pytest.mark.parametrize("content,backup", [(b"", False), (b'{"objects": {"case_0', True)],
                         ids=["empty index, no backup", "garbage index, valid backup"])
def test_server_starts_on_a_broken_index(store, content, backup):
    work, studies, phantom, good_backup = store
    (studies / INDEX).write_bytes(content)
    if backup:
        (studies / f"{INDEX}.bak").write_bytes(good_backup)
    else:
        (studies / f"{INDEX}.bak").unlink(missing_ok=True)
    stale = studies / "labels" / "final" / f".case_000.nii.gz.{uuid.uuid4().hex}.tmp"  # an interrupted commit
    stale.write_bytes(b"partial")
    stale_ckpt = work / "model" / ".mlcsc.pt.k3x9q2ab.tmp"  # a checkpoint write cut short
    stale_ckpt.parent.mkdir(exist_ok=True)
    stale_ckpt.write_bytes(b"partial")
    old_upload, new_upload = work / "tmp" / "sparsesight-upload-old", work / "tmp" / "sparsesight-upload-new"
    for folder in (old_upload, new_upload):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "upload.nii.gz").write_bytes(b"partial")
    os.utime(old_upload, (time.time() - 7200, time.time() - 7200))  # two hours: its process is gone
    srv = start(work, studies, phantom, name=f"restart-{int(backup)}")
    try:
        objects = listing(srv)
        assert sorted(objects) == ["case_000", "case_001"]
        assert "final" in objects["case_000"]["labels"]
        r = srv.get("/datastore/label", params={"label": "case_000", "tag": "final"})
        assert r.status_code == 200 and r.content == (phantom / "labelsTr" / "case_000.nii.gz").read_bytes()
        assert ("note" in objects["case_001"]["image"]["info"]) is backup  # restored from the .bak, or from disk
        assert "was empty or corrupt" in srv.process.log(tail=10**6)
        assert list(studies.glob(f"{INDEX}.corrupt-*"))  # the bad index is kept aside, not deleted
        assert not stale.exists() and not stale_ckpt.exists() and not old_upload.exists()
        assert new_upload.exists()  # may belong to a live server sharing TMPDIR
        shutil.rmtree(new_upload)
        assert json.loads((studies / INDEX).read_text())["objects"]  # a valid index again
    finally:
        srv.process.stop()


def test_index_writes_are_atomic_with_a_backup(server):
    studies = server.studies
    for k in range(3):
        r = server.put("/datastore/label", params={"image": "case_001", "tag": f"atomic{k}"},
                       files={"label": ("l.nii.gz", (server.phantom / "labelsTr" / "case_001.nii.gz").read_bytes())})
        assert r.status_code == 200, r.text
        index = json.loads((studies / INDEX).read_text())
        previous = json.loads((studies / f"{INDEX}.bak").read_text())
        assert f"atomic{k}" in index["objects"]["case_001"]["labels"]
        assert f"atomic{k}" not in previous["objects"]["case_001"]["labels"]  # the version before this save
    assert not [p for p in studies.rglob("*.tmp")]


@pytest.mark.slow
def test_labels_acknowledged_survive_kill_9(tmp_path):
    result = reliability.run(tmp_path, trials=3, clients=4, seed=1, progress=lambda s: None)
    assert result["failed_starts"] == 0, result
    assert result["saves_acknowledged"] > 0, result
    assert result["labels_lost"] == 0, result["lost"]
