"""Pre-flight routes in front of four stock MONAI Label endpoints.

The stock endpoints stay as they are; for POST /infer/{model}, POST /train/{model}, PUT /datastore/image (and its
deprecated alias PUT /datastore/) and PUT /datastore/label this module puts a route with the same path,
parameters and RBAC dependency *in front of* the stock one (first match wins). Each runs the checks that must
happen before the stock code, then calls the stock endpoint function unchanged:

- /train/{model}: training runs in a child process, so the stock endpoint answers 200 with a task id even when
  training cannot start; here unknown model (404), bad parameters (400) and no final labels (409) are refused
  before a process is started.
- /infer/{model}: an `image` query parameter must be a datastore id (the stock app would also accept any
  existing server path); unknown model 404, path-like id 400, unknown id 404, neither id nor file 400.
- all four: the stock endpoints delete the temporary copy of an upload in a FastAPI background task, which runs
  only after a successful answer; on a refusal the wrapper runs those queued clean-ups itself, so refused uploads
  leave nothing behind in the temp folder.

The content checks themselves (NIfTI, channels, NaN/Inf, label shape, ids) live in the datastore subclass and
the app, which raise fastapi.HTTPException: MONAI Label's endpoints let it through and FastAPI answers it with
its status code and {"detail": reason}. Installed once, in the server process, when MONAI Label switches the
app to server mode (MyApp.server_mode).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from monailabel.config import settings
from monailabel.endpoints import activelearning as stock_activelearning
from monailabel.endpoints import batch_infer as stock_batch_infer
from monailabel.endpoints import datastore as stock_datastore
from monailabel.endpoints import infer as stock_infer
from monailabel.endpoints import info as stock_info
from monailabel.endpoints import logs as stock_logs
from monailabel.endpoints import scoring as stock_scoring
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from starlette.concurrency import run_in_threadpool

from . import integrity
from .security import check_infer_request
from .workers import InferQueue

logger = logging.getLogger(__name__)


def _json_object(text: str, field: str = "params") -> None:
    try:
        value = json.loads(text) if text else {}
    except ValueError as e:
        raise HTTPException(400, f"the form field {field!r} is not valid JSON ({e}); send e.g. {field}={{}}") from None
    if not isinstance(value, dict):
        raise HTTPException(400, f"the form field {field!r} must be a JSON object, e.g. {{\"bundle\": true}}")


async def _cleanup_on_refusal(background_tasks: BackgroundTasks, call, params: str = "{}", run=run_in_threadpool):
    """`call` (a stock endpoint function: synchronous, slow) runs off the event loop through `run`."""
    try:
        _json_object(params)
        try:
            return await run(call)
        except MemoryError:
            logger.exception("out of memory in a request")
            raise HTTPException(507, "the server ran out of memory for this request; send a smaller input") from None
    except HTTPException:
        await background_tasks()  # the stock endpoint's queued remove_file() of its temporary upload copy
        raise


def build_router(app) -> APIRouter:
    router = APIRouter()
    app.infer_queue = InferQueue(app.security.infer_workers, app.security.infer_queue)

    @router.get("/info/", include_in_schema=False)
    async def info(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return await run_in_threadpool(stock_info.app_info)  # may (re)load checkpoints: not on the event loop

    @router.post("/activelearning/{strategy}", include_in_schema=False)
    async def activelearning(
        strategy: str,
        params: Optional[dict] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        app.check_name("strategy", strategy, app._strategies)
        return await run_in_threadpool(stock_activelearning.sample, strategy, params, user.username)

    @router.post("/scoring/{method}", include_in_schema=False)
    async def scoring(
        method: str,
        params: Optional[dict] = None,
        run_sync: Optional[bool] = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        app.check_name("scoring method", method, app._scoring_methods)
        return await run_in_threadpool(stock_scoring.run_method, method, params, run_sync)

    @router.post("/train/{model}", include_in_schema=False)
    async def train_model(
        model: str,
        params: Optional[dict] = None,
        run_sync: Optional[bool] = False,
        enqueue: Optional[bool] = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        await run_in_threadpool(app.check_train, model, params or {})
        return await run_in_threadpool(stock_train.run_model, model, params, run_sync, enqueue)

    @router.post("/train/", include_in_schema=False)
    async def train_all(
        params: Optional[dict] = None,
        run_sync: Optional[bool] = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        # the stock route trains every model with params[model] over the top-level keys: check each like that
        params = params or {}
        shared = {k: v for k, v in params.items() if k not in app._trainers}
        for model in app._trainers:
            await run_in_threadpool(app.check_train, model, {**shared, **(params.get(model) or {})})
        return await run_in_threadpool(stock_train.run, params, run_sync)

    @router.post("/batch/infer/{model}", include_in_schema=False)
    async def batch_infer(
        model: str,
        images: Optional[stock_batch_infer.BatchInferImageType] = stock_batch_infer.BatchInferImageType.IMAGES_ALL,
        params: Optional[dict] = None,
        run_sync: Optional[bool] = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        app.check_name("model", model, app._infers)
        check_infer_request(params or {})  # a batch saves a label per image: never over the final ones
        return await run_in_threadpool(stock_batch_infer.run, model, images, params, run_sync)

    @router.post("/infer/wsi/{model}", include_in_schema=False)
    @router.post("/infer/wsi_v2/{model}", include_in_schema=False)
    async def infer_wsi(model: str):
        raise HTTPException(404, f"this server has no whole-slide (WSI) models; use POST /infer/{model}")

    @router.post("/infer/{model}", include_in_schema=False)
    async def infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[stock_infer.ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        if label is not None or output == stock_infer.ResultType.dicom_seg:
            raise HTTPException(400, "the SparseSight models take no 'label' input and answer NIfTI, not DICOM SEG: "
                                     "send the image only, with output=image, json or all")
        app.check_infer(model, image, has_file=bool(file), has_session=bool(session_id))
        return await _cleanup_on_refusal(
            background_tasks,
            lambda: stock_infer.run_inference(background_tasks, model, image, session_id, params, file, label, output),
            params,
            app.infer_queue.run,  # at most infer_workers at once, infer_queue waiting, else 503
        )

    async def add_image(
        background_tasks: BackgroundTasks,
        image: Optional[str] = None,
        params: str = Form("{}"),
        file: UploadFile = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        return await _cleanup_on_refusal(
            background_tasks,
            lambda: stock_datastore.add_image(background_tasks, image, params, file, user.username),
            params,
        )

    router.add_api_route("/datastore/image", add_image, methods=["PUT"], include_in_schema=False)
    router.add_api_route("/datastore/", add_image, methods=["PUT"], include_in_schema=False)

    @router.put("/datastore/image/info", include_in_schema=False)
    async def update_image_info(
        image: str,
        info: str = Form("{}"),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        _json_object(info, "info")
        return await run_in_threadpool(stock_datastore.update_image_info, image, info, user.username)

    @router.put("/datastore/label/info", include_in_schema=False)
    async def update_label_info(
        label: str,
        tag: str,
        info: str = Form("{}"),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        _json_object(info, "info")
        return await run_in_threadpool(stock_datastore.update_label_info, label, tag, info, user.username)

    @router.put("/datastore/updatelabelinfo", include_in_schema=False)
    async def update_label_info_deprecated(
        label: str,
        tag: str,
        params: str = Form("{}"),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        _json_object(params)
        return await run_in_threadpool(stock_datastore.update_label_info, label, tag, params, user.username)

    # stock routes that are `async def` around slow synchronous work (zip the datastore, hash an image, delete
    # files and rewrite the index, read the log): the same calls, in a worker thread
    @router.get("/datastore/dataset", include_in_schema=False)
    async def download_dataset(
        limit_cases: Optional[int] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        return await run_in_threadpool(stock_datastore.download_dataset, limit_cases)

    @router.head("/datastore/image", include_in_schema=False)
    async def check_image(
        image: str,
        check_sum: Optional[str] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        return await run_in_threadpool(stock_datastore.download_image, image, True, check_sum)

    async def remove_image(id: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        return await run_in_threadpool(stock_datastore.remove_image, id, user.username)

    router.add_api_route("/datastore/image", remove_image, methods=["DELETE"], include_in_schema=False)
    router.add_api_route("/datastore/", remove_image, methods=["DELETE"], include_in_schema=False)

    @router.delete("/datastore/label", include_in_schema=False)
    async def remove_label(id: str, tag: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        return await run_in_threadpool(stock_datastore.remove_label, id, tag, user.username)

    @router.get("/logs/", include_in_schema=False)
    async def logs(
        lines: Optional[int] = 300,
        html: Optional[bool] = True,
        text: Optional[bool] = False,
        refresh: Optional[int] = 0,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        path = os.path.join(settings.MONAI_LABEL_APP_DIR, "logs", "app.log")
        return await run_in_threadpool(stock_logs.get_logs, path, lines, html, text, refresh)

    @router.put("/datastore/label", include_in_schema=False)
    async def save_label(
        background_tasks: BackgroundTasks,
        image: str,
        params: str = Form("{}"),
        tag: str = DefaultLabelTag.FINAL.value,
        label: UploadFile = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        return await _cleanup_on_refusal(
            background_tasks,
            lambda: stock_datastore.save_label(background_tasks, image, params, tag, label, user.username),
            params,
        )

    return router


def install(fastapi_app, app) -> None:
    if getattr(fastapi_app.state, "sparsesight_preflight", False):
        return
    router = build_router(app)
    router.include_router(integrity.build_router(app))  # model upload, session archives, listings (part A)
    integrity.sweep(app)  # temp files of writes a crash interrupted (server process, at start)
    routes = fastapi_app.router.routes
    n = len(routes)
    fastapi_app.include_router(router, prefix=settings.MONAI_LABEL_API_STR)
    added = routes[n:]  # the routes themselves, or one wrapper for the included router (FastAPI >= 0.13x)
    del routes[n:]
    routes[:0] = added  # the router tries routes in order, first match wins: these answer before the stock ones
    mark_changed = getattr(fastapi_app.router, "_mark_routes_changed", None)
    if mark_changed:
        mark_changed()
    fastapi_app.state.sparsesight_preflight = True
    logger.info(
        "SparseSight pre-flight routes installed: "
        + ", ".join(f"{'/'.join(sorted(r.methods))} {r.path}" for r in router.routes if hasattr(r, "methods"))
    )
