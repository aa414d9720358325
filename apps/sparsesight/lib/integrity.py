"""Pre-flight routes for storage and model integrity (installed in front of the stock ones by preflight.install).

- PUT /model/{model}: off (403 with the reason) unless both `allow_model_upload` and `api_token` are set; then
  the upload is size-bounded (max_upload_bytes -> 413), loaded weights-only into the named model (422 with the
  reason when it does not fit), and written atomically to the model's checkpoint path. The answer carries the
  version the server computed from the loaded weights, never one read from the file.
- PUT /session/?uncompress=true: every member of the uploaded tar/zip is checked before the stock code unpacks
  it: absolute or escaping paths, links, devices/fifos and totals over max_decompressed_bytes -> 400 naming
  the member.
- GET /datastore/?output=train: the image/label pairs relative to the datastore, not as server paths; the
  session answers (PUT /session/, GET and DELETE /session/{id}) with paths relative to the sessions folder;
  the task status answers (GET /train/, /scoring/, /batch/infer: the task process' output lines) with every
  server folder replaced by a placeholder such as <datastore> or <model_dir>.

Blocking work (reading, loading, scanning, unpacking) runs in worker threads, not on the event loop.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections import deque
from pathlib import PurePosixPath
from typing import List, Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, HTTPException, Request, UploadFile
from monailabel.config import settings
from monailabel.endpoints import batch_infer as stock_batch_infer
from monailabel.endpoints import datastore as stock_datastore
from monailabel.endpoints import scoring as stock_scoring
from monailabel.endpoints import session as stock_session
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from starlette.concurrency import run_in_threadpool

from sparsesight import checkpoint
from sparsesight.errors import InvalidInput

from .datastore import TEMP_NAME
from .security import Settings

logger = logging.getLogger(__name__)

MAX_MEMBERS = 10_000  # files in one session archive
CHUNK = 1 << 20


def settings_of(app) -> Settings:
    return getattr(app, "security", None) or Settings.from_conf(getattr(app, "conf", {}))


def _token_ok(request: Request, token: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def sweep(app) -> None:
    """At server start: remove temp files of writes a crash interrupted, in the datastore and the model folder."""
    sweep_datastore = getattr(app.datastore(), "sweep_temp_files", None)
    if sweep_datastore:
        sweep_datastore()
    sweep_model_dir(getattr(app, "model_dir", ""))


def sweep_model_dir(model_dir: str) -> None:
    """Remove temp files of checkpoint writes a crash interrupted (no write is in flight at server start)."""
    if not model_dir or not os.path.isdir(model_dir):
        return
    for name in os.listdir(model_dir):
        if TEMP_NAME.match(name) or (name.startswith(".") and name.endswith(".tmp") and ".pt." in name):
            try:
                os.unlink(os.path.join(model_dir, name))
                logger.warning(f"removed {name}, left in the model folder by an interrupted write")
            except OSError:
                pass


# ---------------------------------------------------------------------- model upload
def _receive(file: UploadFile, dest: str, limit: int) -> None:
    """Copy the upload to dest, at most `limit` bytes (413 beyond)."""
    size = 0
    file.file.seek(0)
    with open(dest, "wb") as out:
        while chunk := file.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the checkpoint is larger than max_upload_bytes ({limit} bytes)")
            out.write(chunk)


def store_checkpoint(app, model: str, file: UploadFile) -> dict:
    """Validate the upload as a checkpoint of `model` and write it atomically to the model's path."""
    task = app._infers.get(model)
    model_file = getattr(task, "model_file", None)
    if model_file is None:
        known = [n for n, t in app._infers.items() if getattr(t, "model_file", None) is not None]
        raise HTTPException(404, f"unknown model {model!r}; available: {', '.join(known) or 'none'}")
    limit = settings_of(app).max_upload_bytes
    folder = os.path.dirname(model_file.path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{model}.upload.{uuid.uuid4().hex}.tmp")
    try:
        _receive(file, tmp, limit)
        try:
            net, meta = checkpoint.load_payload(tmp, expect=model)
        except InvalidInput as e:
            raise HTTPException(422, f"checkpoint refused: {e}") from None
        extra = {k: v for k, v in meta.items() if k not in ("model", "version", "config", "created")}
        extra["source"] = "upload"
        version = checkpoint.save(model_file.path, net, model, meta["config"], meta=extra)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    st = os.stat(model_file.path)
    with open(model_file.path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    logger.info(f"model {model}: uploaded checkpoint stored as {version}")
    return {"model": model, "version": version, "checksum": f"SHA256:{digest}", "modified_time": int(st.st_mtime)}


# ---------------------------------------------------------------------- session archives
def _escapes(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or (len(name) > 1 and name[1] == ":") or ".." in path.parts


def _zip_members(fileobj, filename: str):
    """(name, kind, size) of each zip member; kind is "file", "dir", "link" or "special"."""
    if not zipfile.is_zipfile(fileobj):
        raise HTTPException(400, f"uncompress: {filename!r} is not a valid zip archive")
    fileobj.seek(0)
    with zipfile.ZipFile(fileobj) as zf:
        for info in zf.infolist():
            mode = stat.S_IFMT(info.external_attr >> 16)
            kind = ("link" if mode == stat.S_IFLNK else "dir" if mode == stat.S_IFDIR
                    else "file" if mode in (0, stat.S_IFREG) else "special")  # 0: no type recorded (a file)
            yield info.filename, kind, info.file_size


def _tar_members(fileobj, filename: str):
    """(name, kind, size) of each tar member, read one header at a time."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
            for m in tf:
                kind = ("link" if m.issym() or m.islnk() else "dir" if m.isdir()
                        else "file" if m.isfile() else "special")
                yield m.name, kind, m.size
    except (tarfile.TarError, EOFError, OSError) as e:
        raise HTTPException(400, f"uncompress: {filename!r} is not a readable tar archive ({e})") from None


def check_archive(fileobj, filename: str, max_bytes: int) -> None:
    """400 naming the first member of a tar/zip that is unsafe to extract, or a name shutil cannot unpack."""
    known = {ext: fmt for fmt, exts, _ in shutil.get_unpack_formats() for ext in exts}
    fmt = next((f for ext, f in sorted(known.items(), key=lambda x: -len(x[0])) if filename.lower().endswith(ext)), None)
    if fmt is None:
        raise HTTPException(400, f"uncompress: {filename!r} is not a .zip or .tar(.gz/.bz2/.xz) archive by name; "
                                 f"use one of {', '.join(sorted(known))}")
    fileobj.seek(0)
    why = {"link": "is a symbolic or hard link", "special": "is a device, fifo or other special file"}
    total = 0
    members = _zip_members(fileobj, filename) if fmt == "zip" else _tar_members(fileobj, filename)
    for count, (name, kind, size) in enumerate(members, start=1):
        total += size
        if _escapes(name):
            reason = "has an absolute path or leaves the session folder"
        elif kind in why:
            reason = why[kind]
        elif total > max_bytes:
            reason = f"takes the archive past max_decompressed_bytes ({max_bytes} bytes)"
        elif count > MAX_MEMBERS:
            reason = f"is past the limit of {MAX_MEMBERS} members"
        else:
            continue
        raise HTTPException(400, f"uncompress: archive member {name!r} {reason}; nothing was extracted")
    fileobj.seek(0)


def public_session(app, answer):
    """A session answer with its folder and image relative to the sessions folder instead of server paths."""
    sessions = app.sessions()
    if sessions is None or not isinstance(answer, dict):
        return answer
    root = os.path.realpath(sessions.store_path)
    out = dict(answer)
    for key in ("path", "image"):
        if isinstance(out.get(key), str) and os.path.isabs(out[key]):
            out[key] = os.path.relpath(os.path.realpath(out[key]), root)
    if isinstance(out.get("session_info"), dict):
        out["session_info"] = public_session(app, out["session_info"])
    return out


def server_folders(app) -> list:
    """(folder, placeholder) of the server's folders, longest first (as configured and resolved)."""
    sessions = app.sessions()
    named = [(getattr(app.datastore(), "_datastore_path", None), "<datastore>"),
             (getattr(app, "jobs_dir", None), "<jobs>"), (getattr(app, "model_dir", None), "<model_dir>"),
             (getattr(app, "app_dir", None), "<app>"),
             (sessions.store_path if sessions is not None else None, "<sessions>"),
             (tempfile.gettempdir(), "<tmp>"), (sys.prefix, "<python>"), (sys.base_prefix, "<python>")]
    pairs = {}
    for folder, name in named:
        if folder and len(str(folder)) > 1:
            pairs.setdefault(str(folder).rstrip(os.sep), name)
            pairs.setdefault(os.path.realpath(folder), name)
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def scrub(value, folders):
    """`value` (JSON) with each server folder in its strings replaced by its placeholder."""
    if isinstance(value, str):
        for folder, name in folders:
            value = value.replace(folder, name)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, folders) for k, v in value.items()}
    if isinstance(value, (list, tuple, deque)):  # task details are a deque of output lines
        return [scrub(v, folders) for v in value]
    return value


# ---------------------------------------------------------------------- routes
def build_router(app) -> APIRouter:
    router = APIRouter()

    @router.put("/model/{model}", include_in_schema=False)
    async def upload_model(
        request: Request,
        model: str,
        file: UploadFile = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        s = settings_of(app)
        if not (s.allow_model_upload and s.api_token):
            raise HTTPException(403, "model upload is off: the operator enables it with --conf allow_model_upload "
                                     "true together with --conf api_token TOKEN")
        if not _token_ok(request, s.api_token):
            raise HTTPException(401, "model upload needs the API token: Authorization: Bearer TOKEN")
        return await run_in_threadpool(store_checkpoint, app, model, file)

    @router.put("/session/", include_in_schema=False)
    async def create_session(
        background_tasks: BackgroundTasks,
        uncompress: bool = False,
        expiry: int = 0,
        files: List[UploadFile] = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        if uncompress and len(files) == 1:  # the stock code unpacks only a single file
            f = files[0]
            await run_in_threadpool(check_archive, f.file, f.filename or "", settings_of(app).max_decompressed_bytes)
        try:
            answer = await run_in_threadpool(stock_session.create_session, background_tasks, uncompress, expiry, files)
            return public_session(app, answer)
        except HTTPException:
            await background_tasks()  # the stock code's queued removal of its received files
            raise
        except (shutil.ReadError, zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            await background_tasks()
            raise HTTPException(400, f"uncompress: the archive cannot be unpacked ({e})") from None

    @router.get("/session/{session_id}", include_in_schema=False)
    async def get_session(
        session_id: str,
        update_ts: bool = False,
        image: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        answer = await run_in_threadpool(stock_session.get_session, session_id, update_ts, image)
        return answer if image else public_session(app, answer)

    @router.delete("/session/{session_id}", include_in_schema=False)
    async def remove_session(
        session_id: str,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        return public_session(app, await run_in_threadpool(stock_session.remove_session, session_id))

    def task_status(status):
        async def route(
            all: bool = False,
            check_if_running: bool = False,
            user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
        ):
            return scrub(await run_in_threadpool(status, all, check_if_running), server_folders(app))

        return route

    router.add_api_route("/train/", task_status(stock_train.status), methods=["GET"], include_in_schema=False)
    router.add_api_route("/scoring/", task_status(stock_scoring.status), methods=["GET"], include_in_schema=False)
    router.add_api_route("/batch/infer", task_status(stock_batch_infer.status), methods=["GET"],
                         include_in_schema=False)

    @router.get("/datastore/", include_in_schema=False)
    async def datastore(
        output: Optional[stock_datastore.ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        if output != stock_datastore.ResultType.train:
            return await run_in_threadpool(stock_datastore.datastore, output)
        d = app.datastore()
        root = os.path.realpath(d._datastore_path)
        return [{k: os.path.relpath(v, root) for k, v in item.items()} for item in d.datalist()]

    return router
