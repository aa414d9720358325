"""Asynchronous jobs (issue 21: whole-brain scale) through the real MONAI Label server: POST /jobs/microstructure
-> GET /jobs/{id} -> GET /jobs/{id}/result, DELETE /jobs/{id} (apps/sparsesight/lib/jobs.py).

This module starts a server of its own: only the microstructure model (a small checkpoint written before the
start), an API token, one job worker and at most 2 jobs queued or running; its last test restarts it on the same
folders (the jobs persist in <model_dir>/jobs). Its datastore holds DWI phantoms with
their FSL and JSON timing sidecars: `dwi_big` (4 mm, 4 slices; a few thousand voxels, so that a job with small
chunks runs for seconds), `dwi_small`, `dwi_nan` (every voxel NaN: fails while running) and `dwi_notiming` (no
JSON sidecar: refused before it is queued).
"""
from __future__ import annotations

import io
import json
import shutil
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
import requests

from sparsesight import bundle, checkpoint, models
from sparsesight.data import diffusion as dif
from sparsesight.training import microstructure as ms_training

pytestmark = pytest.mark.server

TOKEN = "jobs-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FP = {"method": "fingerprinting"}


class Client:
    """The server's routes with the token (or without: `anonymous`)."""

    def __init__(self, srv):
        self.srv = srv

    def __getattr__(self, verb):
        def call(path, anonymous=False, **kw):
            headers = {**({} if anonymous else AUTH), **kw.pop("headers", {})}
            return getattr(self.srv, verb)(path, headers=headers, timeout=60, **kw)
        return call


@pytest.fixture(scope="module")
def jobs_server(server_tools, tmp_path_factory):
    _, start = server_tools
    work = tmp_path_factory.mktemp("jobs")
    studies = work / "datastore"
    studies.mkdir()
    protocol = dif.hcp_mgh_protocol(8)
    for name, ds, slices in (("dwi_big", 4, 4), ("dwi_small", 8, 2)):
        paths = dif.write_dwi_phantom(work / "phantoms", protocol, downsample=ds, slices=slices, seed=1, name=name)
        for key in ("bval", "bvec", "json", "dwi"):
            shutil.copy(paths[key], studies / paths[key].name)
    small = nib.load(studies / "dwi_small.nii.gz")
    nan = np.full(small.shape, np.nan, np.float32)
    nib.save(nib.Nifti1Image(nan, small.affine), studies / "dwi_nan.nii.gz")
    for suffix in (".bval", ".bvec", ".json"):
        shutil.copy(studies / f"dwi_small{suffix}", studies / f"dwi_nan{suffix}")
    shutil.copy(studies / "dwi_small.nii.gz", studies / "dwi_notiming.nii.gz")
    for suffix in (".bval", ".bvec"):
        shutil.copy(studies / f"dwi_small{suffix}", studies / f"dwi_notiming{suffix}")
    # a small model for this protocol (fingerprinting needs no network; the hybrid's are trained briefly)
    model = models.build("microstructure", {"protocol": protocol.to_config(), "grid": dif.small_grid(12, 8).to_config(),
                                            "mlp_hidden": [32], "split_hidden": [16], "joint_hidden": [16]})
    data = ms_training.simulate_training_set(model, 400, (50,), seed=0)
    ms_training.fit_networks(model, data, epochs=1, batch_size=64, lr=3e-3)
    checkpoint.save(work / "model" / "microstructure.pt", model, "microstructure", model.config)
    conf = {"models": "microstructure", "api_token": TOKEN, "job_workers": 1, "max_jobs": 2}
    srv = start(work, studies, work, conf=conf, name="jobs")
    srv.client = Client(srv)
    srv.jobs = work / "model" / "jobs"

    def restart():
        """Stop the server (SIGTERM) and start it again on the same folders."""
        srv.process.stop()
        again = start(work, studies, work, conf=conf, name="jobs-restarted")
        srv.url, srv.process = again.url, again.process

    srv.restart = restart
    try:
        yield srv
    finally:
        srv.process.stop()


def submit(c, image="dwi_big", **options) -> str:
    r = c.post("/jobs/microstructure", params={"image": image}, json={**FP, **options})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["status_url"] == f"/jobs/{r.json()['id']}"
    return r.json()["id"]


def wait(c, job_id, until=("done", "failed", "cancelled"), timeout=240, seen=None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = c.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        s = r.json()
        if seen is not None:
            seen.append(s)
        if s["status"] in until:
            return s
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {s['status']} after {timeout} s")


def no_paths(srv, text: str) -> None:
    for folder in (srv.studies, srv.tmpdir, srv.model_dir):
        assert str(folder) not in text
    assert "/tmp" not in text and "/work" not in text


@pytest.fixture(scope="module")
def observed(jobs_server):
    """One job on dwi_big in chunks of 128 voxels, watched: every status answer, and /info's answer times while
    it ran."""
    c = jobs_server.client
    t0 = time.time()
    job_id = submit(c, chunk=128)
    seen, info_s = [], []
    while True:
        s = wait(c, job_id, until=("running", "done", "failed", "cancelled"), seen=seen)
        if s["status"] != "running":
            break
        t = time.time()
        r = c.get("/info/")
        info_s.append((time.time() - t, r.status_code, c.get(f"/jobs/{job_id}").json()["status"]))
        time.sleep(0.2)
    return {"id": job_id, "seen": seen, "info": info_s, "final": seen[-1], "wall_s": time.time() - t0}


def test_job_status_progresses_to_done(jobs_server, observed):
    final = observed["final"]
    assert final["status"] == "done", final
    assert final["progress"]["chunks_done"] == final["progress"]["chunks_total"] >= 10
    assert final["progress"]["fraction"] == 1.0 and final["result_url"] == f"/jobs/{observed['id']}/result"
    assert final["progress"]["orientation_slices_done"] == final["progress"]["orientation_slices_total"] == 4  # CSD
    running = [s for s in observed["seen"] if s["status"] == "running"]
    done = [s["progress"]["chunks_done"] for s in running if s["progress"]["chunks_total"]]
    assert done == sorted(done) and any(0 < d < final["progress"]["chunks_total"] for d in done)  # seen mid-way
    assert any(s["progress"]["eta_s"] is not None and s["progress"]["eta_s"] > 0 for s in running)
    assert final["image"] == "dwi_big" and final["options"]["method"] == "fingerprinting"
    no_paths(jobs_server, json.dumps(observed["seen"]))
    listed = jobs_server.client.get("/jobs/").json()
    assert observed["id"] in [j["id"] for j in listed["jobs"]] and listed["max_jobs"] == 2


def test_info_answers_while_a_job_runs(jobs_server, observed):
    during = [(s, code) for s, code, status in observed["info"] if status == "running"]
    assert len(during) >= 3, observed["info"]
    assert all(code == 200 for _, code in during) and max(s for s, _ in during) < 2.0, during


def test_result_is_a_valid_bundle_with_the_same_maps_as_the_synchronous_infer(jobs_server, observed, tmp_path):
    c = jobs_server.client
    r = c.get(f"/jobs/{observed['id']}/result")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    path = tmp_path / "job.zip"
    path.write_bytes(r.content)
    man = bundle.validate(path)
    assert man["model"] == "microstructure" and man["image"] == "dwi_big" and man["method"] == "fingerprinting"
    no_paths(jobs_server, json.dumps(man))
    r = c.post("/infer/microstructure", params={"image": "dwi_big", "output": "image"},
               data={"params": json.dumps({**FP, "bundle": True})})
    assert r.status_code == 200, r.text
    (tmp_path / "sync.zip").write_bytes(r.content)
    job, sync = bundle.read(path), bundle.read(tmp_path / "sync.zip")
    try:
        assert {o["name"] for o in job.outputs} == {o["name"] for o in sync.outputs}
        for name in ("nu/1", "f/1", "nu/2", "r/1", "sparsity"):
            np.testing.assert_allclose(job.volume(name)[0], sync.volume(name)[0], rtol=1e-5, atol=1e-6,
                                       err_msg=name)
    finally:
        job.close()
        sync.close()


def test_cancel_a_running_job(jobs_server):
    c = jobs_server.client
    job_id = submit(c, chunk=64)
    s = wait(c, job_id, until=("running",))
    while s["status"] == "running" and not s["progress"]["chunks_done"]:
        s = c.get(f"/jobs/{job_id}").json()
        time.sleep(0.05)
    assert s["status"] == "running", s
    r = c.get(f"/jobs/{job_id}/result")
    assert r.status_code == 409 and "running" in r.json()["detail"]
    r = c.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["stage"].startswith("cancelling"), r.text
    t = time.time()
    final = wait(c, job_id, timeout=60)
    assert final["status"] == "cancelled" and final["progress"]["chunks_done"] < final["progress"]["chunks_total"]
    assert time.time() - t < 30
    assert c.get(f"/jobs/{job_id}/result").status_code == 409
    assert not [p for p in jobs_server.jobs.glob(f"{job_id}*") if p.suffix != ".json"]  # no partial result
    r = c.delete(f"/jobs/{job_id}")  # a finished job is forgotten
    assert r.status_code == 200 and r.json()["forgotten"] is True
    assert c.get(f"/jobs/{job_id}").status_code == 404
    assert not list(jobs_server.jobs.glob(f"{job_id}*"))  # its record is gone too


def test_unknown_job_is_404(jobs_server):
    c = jobs_server.client
    for job_id in ("0" * 32, "not-a-job", "..%2F..%2Fetc"):
        for verb, path in (("get", f"/jobs/{job_id}"), ("get", f"/jobs/{job_id}/result"),
                           ("delete", f"/jobs/{job_id}")):
            r = getattr(c, verb)(path)
            assert r.status_code == 404, (verb, path, r.text)


def test_more_jobs_than_max_jobs_is_429_and_a_queued_job_cancels_at_once(jobs_server):
    c = jobs_server.client
    first, second = submit(c, chunk=64), submit(c, chunk=64)
    r = c.post("/jobs/microstructure", params={"image": "dwi_small"}, json=FP)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and "max_jobs" in r.json()["detail"]
    assert c.get(f"/jobs/{second}").json()["status"] == "queued"
    assert c.delete(f"/jobs/{second}").json()["status"] == "cancelled"  # never started
    assert c.delete(f"/jobs/{first}").status_code == 200
    assert wait(c, first)["status"] == "cancelled"
    assert c.get("/info/").json()["jobs"] == {"workers": 1, "max_jobs": 2, "models": ["microstructure"],
                                              "queued": 0, "running": 0}
    assert submit(c, image="dwi_small")  # room again


def test_bad_jobs_are_refused_before_anything_is_queued(jobs_server):
    c = jobs_server.client
    before = len(c.get("/jobs/").json()["jobs"])
    cases = [
        ("mlcsc", "dwi_small", FP, 404, "unknown model"),
        ("microstructure", "nope", FP, 404, "not in the datastore"),
        ("microstructure", "../dwi_small", FP, 400, "path separator"),
        ("microstructure", "dwi_small", {"method": "magic"}, 400, "'method'"),
        ("microstructure", "dwi_small", {**FP, "orientations": "best"}, 400, "'orientations'"),
        ("microstructure", "dwi_small", {**FP, "colour": 1}, 400, "unknown job options"),
        ("microstructure", "dwi_small", {**FP, "chunk": 10}, 400, "'chunk'"),
        ("microstructure", "dwi_small", {**FP, "outputs": ["maps", "everything"]}, 400, "unknown bundle outputs"),
        ("microstructure", "dwi_small", {**FP, "device": "tpu"}, 400, "device"),
        ("microstructure", "dwi_notiming", FP, 400, "timing"),
        ("microstructure", "dwi_small", {**FP, "big_delta": 21.8, "small_delta": 40}, 400, "δ"),
        ("microstructure", "dwi_small", {"method": "mlp", "big_delta": 30, "small_delta": 12.9}, 400, "trained"),
    ]
    for model, image, body, status, words in cases:
        r = c.post(f"/jobs/{model}", params={"image": image}, json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.status_code, r.text)
        no_paths(jobs_server, r.text)
    r = c.post("/jobs/microstructure", params={"image": "dwi_small"}, data="[1, 2]",
               headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json()["detail"]
    assert len(c.get("/jobs/").json()["jobs"]) == before


def test_a_job_that_fails_says_why_without_server_paths(jobs_server):
    c = jobs_server.client
    s = wait(c, submit(c, image="dwi_nan"))
    assert s["status"] == "failed" and "NaN" in s["error"], s
    no_paths(jobs_server, json.dumps(s))
    r = c.get(f"/jobs/{s['id']}/result")
    assert r.status_code == 409 and "failed" in r.json()["detail"]


def test_job_routes_need_the_token_like_every_other_route(jobs_server):
    c = jobs_server.client
    job_id = "0" * 32
    for verb, path in (("post", "/jobs/microstructure?image=dwi_small"), ("get", "/jobs/"),
                       ("get", f"/jobs/{job_id}"), ("get", f"/jobs/{job_id}/result"), ("delete", f"/jobs/{job_id}")):
        r = getattr(c, verb)(path, anonymous=True)
        assert r.status_code == 401, (verb, path, r.text)
    assert requests.get(jobs_server.url + "/jobs/", headers={"X-API-Key": TOKEN}, timeout=30).status_code == 200


def test_a_result_zip_is_never_half_written(jobs_server):
    """A finished job's file is complete (renamed into place after it was written); no temporary file remains."""
    c = jobs_server.client
    s = wait(c, submit(c, image="dwi_small", outputs=["maps", "peaks"]))
    assert s["status"] == "done", s
    r = c.get(f"/jobs/{s['id']}/result")
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.testzip() is None and "manifest.json" in z.namelist()
    assert not list(jobs_server.jobs.rglob("*.part.zip*")) and not list(jobs_server.tmpdir.rglob("*.zip"))


def test_jobs_survive_a_server_restart(jobs_server, observed):
    """Stopped and started again on the same folders: a finished job is listed with its result, a job that was
    running is failed ("interrupted by a server restart"), a half-written record is skipped, new jobs run."""
    c, folder = jobs_server.client, jobs_server.jobs
    done = c.get(f"/jobs/{observed['id']}").json()
    zip_before = c.get(f"/jobs/{observed['id']}/result").content
    running = submit(c, chunk=64)
    wait(c, running, until=("running",))
    (folder / f"{'f' * 32}.json").write_text('{"id": "ffff')  # a record a crash cut short
    (folder / f"{'e' * 32}.json").write_text("[1, 2]")  # not a record at all
    jobs_server.restart()
    assert c.get(f"/jobs/{observed['id']}").json() == done
    r = c.get(f"/jobs/{observed['id']}/result")
    assert r.status_code == 200 and r.content == zip_before
    s = c.get(f"/jobs/{running}").json()
    assert s["status"] == "failed" and s["error"].startswith("interrupted by a server restart"), s
    assert c.get(f"/jobs/{running}/result").status_code == 409
    listed = c.get("/jobs/").json()
    assert {"f" * 32, "e" * 32}.isdisjoint(j["id"] for j in listed["jobs"]) and listed["running"] == 0
    assert "job record ffffffff" in jobs_server.process.log(tail=100_000)  # the skip is logged
    assert wait(c, submit(c, image="dwi_small"))["status"] == "done"  # the restarted workers take jobs
