"""Asynchronous jobs for large volumes: submit -> status -> result, instead of one long infer request.

    POST   /jobs/{model}?image=ID   body: JSON object of the model's infer options (as POST /infer/{model} takes
                                    in `params`) plus `outputs` (bundle outputs) and `chunk` (voxels per chunk,
                                    CHUNK_RANGE; default JOB_CHUNK) -> 202 {"id", "status", "status_url"}
    GET    /jobs/                   the jobs the server knows, newest first
    GET    /jobs/{id}               status (queued | running | done | failed | cancelled), stage, progress (axial
                                    slices of the orientation fit, then voxel chunks done / total, fraction of
                                    the chunks, ETA), error reason
    GET    /jobs/{id}/result        the result bundle zip once done; 409 before (or when failed/cancelled)
    DELETE /jobs/{id}               cancels a queued or running job (a running one stops between two slices of
                                    the orientation fit or two voxel chunks);
                                    a finished one is forgotten, its record and result files removed

Only models whose runner reports progress per voxel chunk take jobs (JOB_MODELS: microstructure). Everything a
job needs is checked before it is queued, so bad options, an unknown image, missing timing or a protocol the
model refuses answer 4xx with the reason at once and nothing is queued. Jobs run on `job_workers` daemon threads
of the server process (the event loop stays free: /info answers while a job runs), each fitting its voxel chunks
in `job_processes` spawned processes (one thread each; fit_maps' workers); at most `max_jobs` are queued
or running, more are answered 429 with Retry-After. The routes sit behind the same guard as every other route
(API token, CORS, body size) and the same RBAC dependency as the infer route.

State survives a restart. Each job's record is a JSON file <jobs_dir>/<id>.json (temp file + fsync + rename,
atomic.py; written when the job is queued, starts and ends) and a finished job's result is <jobs_dir>/<id>.zip
(written next to its final name and renamed into place after an fsync: a client never downloads half a bundle).
jobs_dir is the app's `--conf jobs_dir` (default <model_dir>/jobs; never inside the datastore), one server per
folder. At start the server lists its finished jobs (done, failed, cancelled) again, their results downloadable;
a job that was queued or running when the server stopped is marked failed, "interrupted by a server restart",
and not re-run: a job that took the server down (out of memory) would take it down again at every start, and
the client's resubmission is one request. A record that cannot be read (half-written, not a job) is skipped
with a logged warning; temp files of interrupted writes are removed. The last KEEP_FINISHED finished jobs are
kept, older ones are deleted with their record and result. Answers name images by id, never by a server path
(error messages go through integrity.scrub).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from sparsesight.atomic import fsync_dir, replace_atomically
from sparsesight.errors import InvalidInput

from .http_errors import BAD_REQUEST, CONFLICT, NOT_FOUND, bad_request, check_id, refuse
from .integrity import scrub, server_folders
from .model_file import BrokenModel, pick_device

logger = logging.getLogger(__name__)

JOB_MODELS = ("microstructure",)
JOB_CHUNK = 4096  # voxels per chunk of a job: progress (and a cancel) every few seconds on a CPU
CHUNK_RANGE = (64, 65536)
KEEP_FINISHED = 16
TOO_MANY = 429
SERVICE_UNAVAILABLE = 503
RETRY_AFTER_S = 30
_ID = re.compile(r"^[0-9a-f]{32}$")
STATUSES = ("queued", "running", "done", "failed", "cancelled")
INTERRUPTED = "interrupted by a server restart (it was {was}); submit it again"
# what a record file keeps of a job (plus "result": the result file's name)
RECORD = ("id", "model", "image", "options", "submitted", "status", "started", "finished", "chunks_done",
          "chunks_total", "slices_done", "slices_total", "error")


class JobCancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    model: str
    image: str
    options: Dict[str, Any]
    submitted: float = field(default_factory=time.time)
    status: str = "queued"
    stage: Optional[str] = "queued"
    started: Optional[float] = None
    finished: Optional[float] = None
    fit_started: Optional[float] = None
    chunks_done: int = 0
    chunks_total: Optional[int] = None
    slices_done: int = 0
    slices_total: Optional[int] = None
    error: Optional[str] = None
    result: Optional[Path] = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # what the worker needs, resolved at submission
    work: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def public(self) -> Dict[str, Any]:
        now = time.time()
        progress: Dict[str, Any] = {"chunks_done": self.chunks_done, "chunks_total": self.chunks_total,
                                    "fraction": None, "eta_s": None, "orientation_slices_done": self.slices_done,
                                    "orientation_slices_total": self.slices_total}
        if self.chunks_total:
            progress["fraction"] = round(self.chunks_done / self.chunks_total, 4)
            if self.status == "running" and self.chunks_done and self.fit_started:
                per_chunk = (now - self.fit_started) / self.chunks_done
                progress["eta_s"] = round(per_chunk * (self.chunks_total - self.chunks_done), 1)
        if self.status == "done":
            progress["eta_s"] = 0.0
        end = self.finished or now
        out = {"id": self.id, "model": self.model, "image": self.image, "status": self.status, "stage": self.stage,
               "progress": progress, "options": self.options,
               "submitted": _iso(self.submitted), "started": _iso(self.started), "finished": _iso(self.finished),
               "elapsed_s": round(end - self.started, 2) if self.started else None,
               "queued_s": round((self.started or end) - self.submitted, 2), "error": self.error}
        if self.status == "done":
            out["result_url"] = f"/jobs/{self.id}/result"
        return out

    def record(self) -> Dict[str, Any]:
        """What the job's record file holds (no server path: the result by its file name)."""
        return {**{k: getattr(self, k) for k in RECORD}, "result": self.result.name if self.result else None}

    @classmethod
    def from_record(cls, data: Any, folder: Path, name: str) -> "Job":
        """The job of a record file `name` in `folder`; ValueError when it is not one."""
        if not isinstance(data, dict) or set(data) != set(RECORD) | {"result"}:
            raise ValueError("not a job record (its fields differ)")
        if data["id"] != name or not _ID.match(name) or data["status"] not in STATUSES:
            raise ValueError("its id or status is not valid")
        if not all(isinstance(data[k], str) for k in ("model", "image")) or not isinstance(data["options"], dict):
            raise ValueError("its model, image or options are not valid")
        numbers = ("submitted", "started", "finished", "chunks_done", "chunks_total", "slices_done", "slices_total")
        if not all(isinstance(data[k], (int, float)) or (data[k] is None and k != "submitted") for k in numbers):
            raise ValueError("its times or progress are not numbers")
        job = cls(**{k: data[k] for k in RECORD}, stage=None)  # the stage of a live job only
        if data["result"] is not None:
            job.result = folder / f"{name}.zip"
        return job


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class JobManager:
    """Jobs of one server: validation at submission, `workers` daemon threads, records and results in `folder`."""

    def __init__(self, app, workers: int, max_active: int, folder: Path):
        self.app, self.workers, self.max_active = app, workers, max_active
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()  # the jobs' state (held briefly: never around file I/O)
        self._io_lock = threading.Lock()  # record writes and deletions, in order
        self._closing = False
        self._queue: "queue.Queue[Job]" = queue.Queue()
        self._load()
        self._threads = [threading.Thread(target=self._loop, name=f"sparsesight-job-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()
        atexit.register(self.close)

    # ---------------------------------------------------------------- what /info shows
    def state(self) -> Dict[str, Any]:
        with self._lock:
            jobs = list(self._jobs.values())
        return {"workers": self.workers, "max_jobs": self.max_active, "models": list(JOB_MODELS),
                "queued": sum(j.status == "queued" for j in jobs), "running": sum(j.status == "running" for j in jobs)}

    def close(self) -> None:
        """At exit: stop what runs (recorded as interrupted); records and results stay for the next start."""
        self._closing = True
        with self._lock:
            for j in self._jobs.values():
                j.cancel.set()

    # ---------------------------------------------------------------- records on disk
    def _load(self) -> None:
        """The jobs of the records in the folder; the ones a stop interrupted are marked failed."""
        for path in self.folder.iterdir():  # no write is in flight before the workers start
            if path.name.startswith(".") and path.name.endswith(".tmp") or ".part.zip" in path.name:
                path.unlink(missing_ok=True)
        interrupted = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                job = Job.from_record(json.loads(path.read_text()), self.folder, path.stem)
            except (OSError, ValueError, TypeError) as e:
                logger.warning(f"job record {path.name} skipped: unreadable ({e})")
                continue
            if job.active:
                self._finish(job, "failed", INTERRUPTED.format(was=job.status))
                interrupted.append(job)
            elif job.status == "done" and (job.result is None or not job.result.is_file()):
                job.status, job.error, job.result = "failed", "its result file is gone from the server", None
                interrupted.append(job)
            self._jobs[job.id] = job
        for job in interrupted:
            self._save(job)
        self._delete(self._forget_old())
        logger.info(f"jobs: {len(self._jobs)} known from {self.folder.name}/ ({len(interrupted)} marked failed)")

    def _save(self, job: Job) -> bool:
        """Write the job's record (atomically); False (logged) when the disk refuses it."""
        with self._io_lock:
            with self._lock:
                if self._jobs.get(job.id) is not job:  # forgotten meanwhile: no record to bring back
                    return True
                data = job.record()
            try:
                replace_atomically(self.folder / f"{job.id}.json", json.dumps(data).encode())
                return True
            except OSError as e:
                logger.error(f"job {job.id}: its record could not be written ({e}); a restart will not know it")
                return False

    def _delete(self, jobs) -> None:
        """Remove the record and result files of forgotten jobs."""
        with self._io_lock:
            for job in jobs:
                for path in (self.folder / f"{job.id}.json", self.folder / f"{job.id}.zip"):
                    path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- submission (checks, then the queue)
    def check(self, model: str, image: str, body: Any) -> Job:
        """Every check a job would fail on, before it is queued: 4xx with the reason."""
        from sparsesight.runners import microstructure as runner

        app = self.app
        if model not in app._infers:
            raise refuse(NOT_FOUND, f"unknown model {model!r}; available: {', '.join(app._infers) or 'none'}")
        if model not in JOB_MODELS:
            raise refuse(BAD_REQUEST, f"model {model!r} takes no jobs (its inference is short: POST /infer/{model}); "
                                      f"jobs: {', '.join(JOB_MODELS)}")
        if not isinstance(body, dict):
            raise refuse(BAD_REQUEST, "the job's body must be a JSON object of infer options, e.g. "
                                      "{\"method\": \"hybrid\"}")
        check_id(image)
        datastore = app.datastore()
        if image not in datastore.list_images():
            raise refuse(NOT_FOUND, f"image {image!r} is not in the datastore; GET /datastore/?output=all lists "
                                    f"the image ids (upload a DWI with PUT /datastore/image first)")
        known = set(runner.OPTIONS) | {"outputs", "chunk", "device", "bundle"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise refuse(BAD_REQUEST, f"unknown job options {unknown}; known: {sorted(known)}")
        if body.get("bundle") not in (None, True, "true"):
            raise refuse(BAD_REQUEST, "a job always writes the result bundle: leave 'bundle' out")
        outputs = body.get("outputs")
        if outputs is not None:
            if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs) or not outputs:
                raise refuse(BAD_REQUEST, "'outputs' must be a non-empty list of bundle outputs, e.g. [\"maps\"]")
            wrong = sorted(set(outputs) - set(runner.BUNDLE_OUTPUTS))
            if wrong:
                raise refuse(BAD_REQUEST, f"unknown bundle outputs {wrong}; choose from {list(runner.BUNDLE_OUTPUTS)}")
        chunk = body.get("chunk", JOB_CHUNK)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not CHUNK_RANGE[0] <= chunk <= CHUNK_RANGE[1]:
            raise refuse(BAD_REQUEST, f"'chunk' must be a whole number of voxels between {CHUNK_RANGE[0]} and "
                                      f"{CHUNK_RANGE[1]}, got {chunk!r}")
        task = app._infers[model]
        with bad_request():
            device = pick_device(body.get("device"), task.device)
        opts = {k: v for k, v in body.items() if k in runner.OPTIONS and v is not None}
        try:
            loaded, meta = task.model_file.load(device)
        except BrokenModel as e:
            raise refuse(SERVICE_UNAVAILABLE, f"model {model} cannot serve: its checkpoint is unusable ({e})") from None
        if loaded is None:
            raise refuse(CONFLICT, f"model {model} has no trained checkpoint yet: POST /train/{model} first")
        path = datastore.get_image_uri(image)
        with bad_request():  # the options, the DWI's header and its protocol: everything but the voxels
            runner.check_job(loaded, path, **opts)
        job = Job(uuid.uuid4().hex, model, image, {**opts, "chunk": chunk, **({"outputs": outputs} if outputs else {})})
        job.work = {"path": path, "device": device, "outputs": outputs, "chunk": chunk, "opts": opts,
                    "version": meta["version"]}
        return job

    def submit(self, job: Job) -> Job:
        """Queue a checked job (429 over max_jobs; 503 when its record cannot be written). Blocking: file I/O."""
        with self._lock:
            active = sum(j.active for j in self._jobs.values())
            if active >= self.max_active:
                raise HTTPException(TOO_MANY, f"{active} jobs are queued or running, at most {self.max_active} (the "
                                              f"server's max_jobs); retry in {RETRY_AFTER_S} s or cancel one",
                                    headers={"Retry-After": str(RETRY_AFTER_S)})
            self._jobs[job.id] = job
            old = self._forget_old()
        self._delete(old)
        if not self._save(job):
            with self._lock:
                self._jobs.pop(job.id, None)
            raise HTTPException(SERVICE_UNAVAILABLE, "the server cannot write the job's record (its disk is full "
                                                     "or read-only); the job was not queued")
        self._queue.put(job)
        logger.info(f"job {job.id}: {job.model} on {job.image} queued")
        return job

    def _forget_old(self) -> list:
        """Drop all but the last KEEP_FINISHED finished jobs (caller holds the lock; then _delete their files)."""
        finished = sorted((j for j in self._jobs.values() if not j.active), key=lambda j: j.finished or 0)
        old = finished[:max(0, len(finished) - KEEP_FINISHED)]
        for j in old:
            self._jobs.pop(j.id, None)
        return old

    # ---------------------------------------------------------------- status, result, cancel
    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id) if _ID.match(job_id or "") else None
        if job is None:
            raise refuse(NOT_FOUND, f"unknown job {job_id!r} (a server keeps its last {KEEP_FINISHED} finished "
                                    f"jobs); GET /jobs/ lists the known ones")
        return job

    def listing(self) -> list:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: -j.submitted)
        return [j.public() for j in jobs]

    def result(self, job_id: str) -> Path:
        job = self.get(job_id)
        if job.status != "done" or job.result is None or not job.result.is_file():
            why = {"queued": "is queued", "running": "is still running", "failed": f"failed: {job.error}",
                   "cancelled": "was cancelled"}.get(job.status, "has no result")
            raise refuse(CONFLICT, f"job {job.id} {why}; GET /jobs/{job.id} shows its status")
        return job.result

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancel an active job, or forget a finished one with its files. Blocking: file I/O."""
        job = self.get(job_id)
        with self._lock:
            active, queued = job.active, job.status == "queued"
            if active:
                job.cancel.set()
                if queued:
                    self._finish(job, "cancelled", "cancelled before it started")
                else:
                    job.stage = "cancelling (stops after the chunk in progress)"
            else:
                self._jobs.pop(job.id, None)
        if not active:
            self._delete([job])
            return {**job.public(), "forgotten": True}
        if queued:
            self._save(job)
        logger.info(f"job {job.id}: cancel requested")
        return job.public()

    # ---------------------------------------------------------------- the worker
    def _finish(self, job: Job, status: str, error: Optional[str] = None) -> None:
        job.status, job.error, job.finished = status, error, time.time()
        job.stage = None
        job.work = {}

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                self._run(job)
            except BaseException:  # never lose a worker thread
                logger.exception(f"job {job.id}: worker error")
            finally:
                self._queue.task_done()

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.status != "queued":  # cancelled while it waited
                return
            job.status, job.started, job.stage = "running", time.time(), "loading the DWI"
        self._save(job)
        part = self.folder / f"{job.id}.part.zip"
        try:
            status, error = self._compute(job, part)
        finally:
            part.unlink(missing_ok=True)
            Path(f"{part}.tmp").unlink(missing_ok=True)
        with self._lock:
            if status == "done":
                job.result = self.folder / f"{job.id}.zip"
            self._finish(job, status, error)
        self._save(job)
        if status != "done":
            (self.folder / f"{job.id}.zip").unlink(missing_ok=True)

    def _compute(self, job: Job, part: Path) -> Tuple[str, Optional[str]]:
        """Fit the maps and write the bundle to <id>.zip: (final status, error for the client)."""
        from sparsesight.runners import microstructure as runner

        work = job.work

        def on_chunk(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise JobCancelled()
            if done == 0:
                job.fit_started = time.time()
            job.chunks_done, job.chunks_total = done, total
            job.stage = "fitting voxel chunks" if done < total else "writing the bundle"

        def on_slice(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise JobCancelled()
            job.slices_done, job.slices_total = done, total
            job.stage = "fibre orientations (axial slices)"

        try:
            task = self.app._infers[job.model]
            model, _ = task.model_file.load(work["device"])
            if model is None:
                raise InvalidInput(f"model {job.model} has no trained checkpoint any more")
            runner.run_bundle(model, job.model, work["version"], work["path"], job.image, part,
                              outputs=work["outputs"], device=work["device"], chunk=work["chunk"],
                              workers=self.app.security.job_processes,
                              on_chunk=on_chunk, on_slice=on_slice, **work["opts"])
            if job.cancel.is_set():
                raise JobCancelled()
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            os.replace(part, self.folder / f"{job.id}.zip")
            fsync_dir(self.folder)
            logger.info(f"job {job.id}: done in {time.time() - (job.started or 0):.1f} s")
            return "done", None
        except JobCancelled:
            if self._closing:  # the server is stopping
                logger.info(f"job {job.id}: interrupted by the server's stop")
                return "failed", INTERRUPTED.format(was="running")
            logger.info(f"job {job.id}: cancelled")
            return "cancelled", "cancelled while running"
        except (InvalidInput, HTTPException) as e:
            reason = str(e.detail if isinstance(e, HTTPException) else e)
            logger.warning(f"job {job.id}: failed: {reason}")
            return "failed", scrub(reason, server_folders(self.app))
        except MemoryError:
            logger.exception(f"job {job.id}: out of memory")
            return "failed", "the server ran out of memory for this volume"
        except Exception as e:
            logger.exception(f"job {job.id}: failed")
            return "failed", f"internal error ({type(e).__name__}); the server log has the details"


def build_router(app, manager: JobManager) -> APIRouter:
    router = APIRouter(tags=["Jobs"])
    user_role = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))

    @router.post("/jobs/{model}", status_code=202, summary="Submit an asynchronous job (large volumes)")
    async def submit(model: str, image: str = Query(..., description="datastore image id"),
                     body: Any = Body(default=None), user: User = user_role):
        job = await run_in_threadpool(manager.check, model, image, {} if body is None else body)
        await run_in_threadpool(manager.submit, job)
        # "queued" as of this answer (a free worker may already have started it)
        return JSONResponse({"id": job.id, "status": "queued", "status_url": f"/jobs/{job.id}"}, status_code=202)

    @router.get("/jobs/", summary="The jobs this server knows")
    async def jobs(user: User = user_role):
        return {"jobs": manager.listing(), **manager.state()}

    @router.get("/jobs/{job_id}", summary="A job's status and progress")
    async def status(job_id: str, user: User = user_role):
        return manager.get(job_id).public()

    @router.get("/jobs/{job_id}/result", summary="A finished job's result bundle (zip)")
    async def result(job_id: str, user: User = user_role):
        job = manager.get(job_id)
        path = manager.result(job_id)
        return FileResponse(path, media_type="application/zip", filename=f"{job.model}-{job.image}-{job.id[:8]}.zip")

    @router.delete("/jobs/{job_id}", summary="Cancel a job, or forget a finished one and its result")
    async def cancel(job_id: str, user: User = user_role):
        return await run_in_threadpool(manager.cancel, job_id)

    return router


def jobs_folder(app) -> Path:
    """The app's jobs_dir (default <model_dir>/jobs); ValueError when it lies inside the datastore (clients write
    there)."""
    folder = Path(getattr(app, "jobs_dir", None) or Path(app.model_dir) / "jobs").resolve()
    store = getattr(app.datastore(), "_datastore_path", None)
    if store and folder.is_relative_to(Path(store).resolve()):
        raise ValueError("--conf jobs_dir: the jobs folder must not lie inside the datastore (clients write there); "
                         "choose a folder of the server's own, e.g. <model_dir>/jobs")
    return folder


def install(fastapi_app, app) -> None:
    """Add the job routes (once); the manager is app.jobs, its records and results in jobs_folder(app)."""
    if getattr(fastapi_app.state, "sparsesight_jobs", False):
        return
    app.jobs = JobManager(app, app.security.job_workers, app.security.max_jobs, jobs_folder(app))
    fastapi_app.include_router(build_router(app, app.jobs), prefix=settings.MONAI_LABEL_API_STR)
    fastapi_app.state.sparsesight_jobs = True
