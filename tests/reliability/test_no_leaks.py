"""Issue 18, part A: no server paths in answers; temp files removed on every path (accepted and refused)."""
from __future__ import annotations

import io
import json
import tarfile

import pytest
from reliability_servers import leaked_paths, server_paths, stray_tmp

pytestmark = pytest.mark.server


def test_the_path_check_sees_a_path():
    """The control: leaked_paths finds a server path inside an answer's strings."""

    class Fake:
        studies = model_dir = tmpdir = __import__("pathlib").Path("/srv/data")

    assert leaked_paths(Fake, {"a": ["x", {"b": "/srv/data/case_000.nii.gz"}]})
    assert not leaked_paths(Fake, {"a": "case_000.nii.gz"})


def test_no_server_paths_in_answers(server):
    label = (server.phantom / "labelsTr" / "case_000.nii.gz").read_bytes()
    answers = {
        "info": server.get("/info/"),
        "listing all": server.get("/datastore/", params={"output": "all"}),
        "listing train": server.get("/datastore/", params={"output": "train"}),
        "listing stats": server.get("/datastore/"),
        "image info": server.get("/datastore/image/info", params={"image": "case_001"}),
        "label info": server.get("/datastore/label/info", params={"label": "case_000", "tag": "final"}),
        "model info": server.get("/model/info/mlcsc"),
        "next sample": server.post("/activelearning/random", json={}),
        "train status": server.get("/train/"),
        "save label": server.put("/datastore/label", params={"image": "case_000", "tag": "paths"},
                                 files={"label": ("l.nii.gz", label)}),
        "infer json": server.post("/infer/mlcsc", params={"image": "case_001", "output": "json"}),
        # refusals: their reasons must not name server files either
        "unknown image": server.post("/infer/mlcsc", params={"image": "nope", "output": "json"}),
        "bad device": server.post("/infer/mlcsc", params={"image": "case_001", "output": "json"},
                                  data={"params": json.dumps({"device": "meta"})}),
        "bad upload": server.put("/datastore/image", params={"image": "junk"}, files={"file": ("j.nii.gz", b"junk")}),
        "bad label": server.put("/datastore/label", params={"image": "case_001", "tag": "x"},
                                files={"label": ("l.nii.gz", b"\x1f\x8b junk")}),
        "upload off": server.put("/model/mlcsc", files={"file": ("m.pt", b"x")}),
        "missing label": server.get("/datastore/label", params={"label": "case_001", "tag": "final"}),
    }
    for name, r in answers.items():
        assert r.status_code < 500, (name, r.status_code, r.text)
        assert not leaked_paths(server, r.text), (name, leaked_paths(server, r.text), server_paths(server))
    sample = answers["next sample"].json()
    assert sample["id"] in ("case_000", "case_001") and sample["path"] == f"{sample['id']}.nii.gz"
    assert answers["image info"].json()["path"] == "case_001.nii.gz"
    assert answers["listing train"].json() == [{"image": "case_000.nii.gz", "label": "labels/final/case_000.nii.gz"}]


def test_temp_files_removed_on_every_path(server):
    image = (server.studies / "case_001.nii.gz").read_bytes()
    label = (server.phantom / "labelsTr" / "case_001.nii.gz").read_bytes()
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as tf:
        info = tarfile.TarInfo("../x")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    requests_made = [
        server.put("/datastore/image", params={"image": "tmpcheck"}, files={"file": ("t.nii.gz", image)}),
        server.put("/datastore/image", params={"image": "junk"}, files={"file": ("t.nii.gz", b"junk")}),
        server.put("/datastore/label", params={"image": "tmpcheck", "tag": "t"}, files={"label": ("l.nii.gz", label)}),
        server.put("/datastore/label", params={"image": "nope", "tag": "t"}, files={"label": ("l.nii.gz", label)}),
        server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"}),
        server.post("/infer/mlcsc", params={"image": "case_001", "output": "json"}),
        server.post("/infer/mlcsc", params={"image": "case_001"}, data={"params": json.dumps({"bundle": True})}),
        server.post("/infer/mlcsc", params={"output": "image"}, files={"file": ("u.nii.gz", image)}),
        server.post("/infer/mlcsc", params={"output": "image"}, files={"file": ("u.nii.gz", b"junk")}),
        server.post("/infer/mlcsc", params={"image": "case_001"}, data={"params": json.dumps({"device": "meta"})}),
        server.put("/model/mlcsc", files={"file": ("m.pt", b"x" * 1000)}),
        server.put("/session/", params={"uncompress": "true"}, files={"files": ("s.tar.gz", tar.getvalue())}),
    ]
    accepted = [True, False, True, False, True, True, True, True, False, False, False, False]
    assert [r.status_code == 200 if ok else 400 <= r.status_code < 500 for r, ok in zip(requests_made, accepted)] \
        == [True] * len(accepted), [(r.status_code, r.text[:200]) for r in requests_made]
    assert stray_tmp(server) == []
    assert not [p for p in server.studies.rglob("*.tmp")] and not [p for p in server.model_dir.rglob("*.tmp")]
    assert server.delete("/datastore/image", params={"id": "tmpcheck"}).status_code == 200
