"""SparseSight MONAI Label app: serves every model of the `sparsesight` library by its one name.

    monailabel start_server --app apps/sparsesight --studies DATASTORE [--conf models all] [--conf model_dir DIR]

conf options: `models` ("all" or a comma-separated list of config names), `model_dir` (checkpoints
<model_dir>/<model>.pt; default apps/sparsesight/model), `device` (default cuda when present, else cpu),
`epochs` (default epochs of a train request), `pretrained` (true: serve the weights shipped in
apps/sparsesight/pretrained/ with their model cards while <model_dir> holds no trained checkpoint; false: start
untrained; or a folder of <model>.pt + <model>.card.json), `jobs_dir` (records and results of the asynchronous
jobs, kept across restarts; default <model_dir>/jobs; never inside the datastore).

Refusals are HTTP 4xx with a reason (see lib/http_errors.py): the app checks ids, models and uploads in its own
layer and raises fastapi.HTTPException, which MONAI Label's endpoints pass through.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Dict

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

import sparsesight
from sparsesight.data import io as sio
from sparsesight.memory import keep_freed_memory

# Everything from the app's lib/ is imported here, while MONAI Label has the app folder on sys.path.
from lib import guard, jobs, pacs_routes, preflight
from lib.datastore import SparseSightDatastore
from lib.http_errors import (
    BAD_REQUEST,
    NOT_FOUND,
    check_id,
    flag,
    http_errors,
    is_stock_upload,
    refuse,
)
from lib.model_file import pick_device
from lib.pacs import PacsDatastore, settings_from
from lib.scoring.cached import CachedScoring
from lib.scoring.epistemic import EpistemicScoring
from lib.scoring.sparse_residual import SparseResidualScoring
from lib.security import Settings, check_infer_request, check_train_request
from lib.strategies.epistemic import Epistemic
from lib.strategies.hybrid import Hybrid
from lib.strategies.random import Random
from lib.strategies.sparse_residual import SparseResidual

logger = logging.getLogger(__name__)

APP_DIR = os.path.dirname(os.path.abspath(__file__))
SUGGEST_ATTEMPTS = 5  # a strategy asked again when its pick is a PACS study that cannot be used (then excluded)


def discover_configs(folder: str = os.path.join(APP_DIR, "configs")) -> Dict[str, type]:
    """{model name: TaskConfig class} from configs/<model name>.py (one TaskConfig subclass per file)."""
    found = {}
    for file in sorted(os.listdir(folder)):
        name, ext = os.path.splitext(file)
        if ext != ".py" or name.startswith("_"):
            continue
        module_name = f"sparsesight_app_configs.{name}"
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(folder, file))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        classes = [
            c for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, TaskConfig) and c is not TaskConfig and c.__module__ == module_name
        ]
        if len(classes) != 1:
            raise RuntimeError(f"configs/{file} must define exactly one TaskConfig subclass, found {len(classes)}")
        found[name] = classes[0]
    return found


CONFIGS = discover_configs()


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        keep_freed_memory()  # CPU tensors reuse freed heap memory instead of page-faulting fresh mmaps (memory.py)
        self.security = Settings.from_conf(conf)  # token, CORS, size limits, queue (lib/security.py)
        self.model_dir = os.path.abspath(conf.get("model_dir") or os.path.join(app_dir, "model"))
        self.jobs_dir = os.path.abspath(conf.get("jobs_dir") or os.path.join(self.model_dir, "jobs"))  # lib/jobs.py
        self.device = pick_device(default=conf.get("device"))  # an absent GPU falls back to cpu (logged)

        wanted = conf.get("models", "all")
        names = list(CONFIGS) if wanted.strip() in ("", "all") else [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise ValueError(f"--conf models: unknown {', '.join(unknown)}; available: {', '.join(CONFIGS)} or all")

        self.task_configs: Dict[str, TaskConfig] = {}
        for name in names:
            config = CONFIGS[name]()
            config.init(name, self.model_dir, conf, None, device=self.device)
            self.task_configs[name] = config
        logger.info(f"SparseSight models: {names}; checkpoints in {self.model_dir}; device {self.device}")

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SparseSight",
            description="Interpretable sparse-coding models for medical images",
            version=sparsesight.__version__,
            labels={v: k for k, v in sparsesight.CLASSES.items() if k},
        )

    # ------------------------------------------------------------------ tasks
    def init_datastore(self):
        from monailabel.config import settings

        if self.studies.startswith(("http://", "https://")):  # a PACS over DICOMweb: one image per study
            with http_errors():
                pacs = settings_from(self.conf)
            return PacsDatastore(self.studies, limits=self.security, **pacs)

        return SparseSightDatastore(
            self.studies,
            limits=self.security,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        return {name: c.infer() for name, c in self.task_configs.items()}

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {name: t for name, c in self.task_configs.items() if (t := c.trainer()) is not None}

    def _active_learning_scoring(self) -> Dict[str, CachedScoring]:
        """The cached image scores of the served segmentation models (shared by strategies and scoring methods)."""
        if not hasattr(self, "_al_scoring"):
            files = {n: t.model_file for n, t in self._infers.items()
                     if getattr(t, "model_file", None) is not None and t.type == InferType.SEGMENTATION}
            kw = {"device": self.device, "datastore": self.datastore}
            self._al_scoring = {"sparse_residual": SparseResidualScoring(files, self.model_dir, **kw),
                                "epistemic": EpistemicScoring(files, self.model_dir, **kw)}
        return self._al_scoring

    def init_strategies(self) -> Dict[str, Strategy]:
        scoring = self._active_learning_scoring()
        return {"random": Random(), "sparse_residual": SparseResidual(scoring["sparse_residual"]),
                "epistemic": Epistemic(scoring["epistemic"]),
                "hybrid": Hybrid(scoring["sparse_residual"], scoring["epistemic"])}

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return dict(self._active_learning_scoring())

    def async_scoring(self, method, params=None):
        """Refresh the scores that are out of date; nothing to do is not a reason to start a process.

        In the server, stale methods go to MONAI Label's background scoring (a child process each). In the
        training process (MONAI Label calls this when training ends) the scores are computed right there, with
        the new checkpoint and the modules already loaded, so a finished training leaves current scores."""
        methods = [method] if method else list(self._scoring_methods)
        try:
            stale = [m for m in methods if m in self._scoring_methods
                     and getattr(self._scoring_methods[m], "stale", lambda d: True)(self.datastore())]
        except HTTPException as e:  # a PACS that is down (502): the server still starts, scoring waits
            logger.warning(f"active-learning scores not refreshed: {e.detail}")
            return {}
        if self._server_mode:
            return {m: super(MyApp, self).async_scoring(m, params) for m in stale}
        result = {}
        for m in stale:
            try:
                result[m] = self.scoring({"method": m, "in_use_only": True, **((params or {}).get(m) or {})})
            except Exception as e:  # the training itself succeeded: report, do not fail it
                logger.exception(f"scoring {m} after training failed")
                print(f"scoring {m} failed: {e}", flush=True)
        return result

    def server_mode(self, mode: bool):
        super().server_mode(mode)
        fastapi_app = getattr(sys.modules.get("monailabel.app"), "app", None)
        if mode and fastapi_app is not None:
            preflight.install(fastapi_app, self)
            if isinstance(self.datastore(), PacsDatastore):
                pacs_routes.install(fastapi_app, self)  # POST /pacs/results/{model}
            jobs.install(fastapi_app, self)  # POST /jobs/{model}, GET/DELETE /jobs/{id} (lib/jobs.py)
            guard.install(fastapi_app, self.security)

    def info(self):
        info = super().info()
        info["security"] = self.security.public()  # limits and whether a token is needed; never the token
        queue = getattr(self, "infer_queue", None)
        if queue is not None:
            info["infer_queue"] = queue.state()
        if getattr(self, "jobs", None) is not None:
            info["jobs"] = self.jobs.state()
        return info

    # ------------------------------------------------------------------ checks in front of the stock flow
    def _unknown(self, kind: str, name, known) -> Exception:
        return refuse(NOT_FOUND, f"unknown {kind} {name!r}; available: {', '.join(known) or 'none'}")

    def check_name(self, kind: str, name: str, known) -> None:
        """A strategy or scoring method named in the path must exist: 404 naming the valid ones."""
        if name not in known:
            raise self._unknown(kind, name, known)

    def _is_upload(self, path: str, request) -> bool:
        """True for the temporary file the stock /infer endpoint writes for an uploaded image (or a session's)."""
        if is_stock_upload(path):
            return True
        sessions = self.sessions()
        if request.get("session") and sessions is not None and os.path.isfile(path):
            return os.path.realpath(path).startswith(os.path.realpath(sessions.store_path) + os.sep)
        return False

    def _check_image_id(self, image, datastore=None):
        check_id(image)
        if image not in (datastore or self.datastore()).list_images():
            raise refuse(
                NOT_FOUND,
                f"image {image!r} is not in the datastore; GET /datastore/?output=all lists the image ids, or send "
                f"the image itself as the multipart field 'file'",
            )

    def check_infer(self, model: str, image: str, has_file: bool, has_session: bool) -> None:
        """Refuse an infer request before the stock endpoint touches it (called by the pre-flight route)."""
        with http_errors():
            if model not in self._infers:
                raise self._unknown("model", model, self._infers)
            if has_file or has_session:
                return
            if not image:
                raise refuse(
                    BAD_REQUEST,
                    "no input: give ?image=ID of a datastore image, or send a NIfTI file as the multipart field 'file'",
                )
            self._check_image_id(image)

    def infer(self, request, datastore=None):
        with http_errors():
            model = request.get("model")
            if model not in self._infers:
                raise self._unknown("model", model, self._infers)
            request = dict(request)
            image = request.get("image")
            check_infer_request(request)
            request.pop("series_grids", None)  # the datastore's word only, never the request's
            if isinstance(image, str):
                if self._is_upload(image, request):
                    request.setdefault("image_id", "upload")
                    s = self.security  # header and inflated size before any voxel is read
                    sio.check_nifti(image, s.max_voxels, s.max_decompressed_bytes, "upload")
                else:
                    self._check_image_id(image, datastore)
                    request["image_id"] = image
                    # series a PACS study had resampled onto its reference's grid: their own grid and noise,
                    # known once the study is fetched (get_image_uri assembles it; the stock infer then reuses it)
                    ds = datastore or self.datastore()
                    ds.get_image_uri(image)
                    grids = ds.get_image_info(image).get("series_grids")
                    if grids:
                        request["series_grids"] = grids
            if flag(request.get("bundle", False)):
                request["save_label"] = False  # a bundle is not a label
            return super().infer(request, datastore)

    def check_train(self, model: str, params: dict) -> dict:
        """Refuse a train request the training process would fail on (called by the pre-flight route)."""
        with http_errors():
            if not isinstance(params, dict):
                raise refuse(BAD_REQUEST, "the train request body must be a JSON object, e.g. {\"epochs\": 1}")
            task = self._trainers.get(model)
            if task is None:
                raise self._unknown("model", model, self._trainers)
            check_train_request(params, self.security)
            check = getattr(task, "check", None)
            return check(params, self.datastore()) if check else {}

    def train(self, request):
        with http_errors():
            if request.get("model") not in self._trainers:
                raise self._unknown("model", request.get("model"), self._trainers)
            return super().train(request)

    def next_sample(self, request):
        with http_errors():
            strategy = request.get("strategy") or "random"
            task = self._strategies.get(strategy)
            if task is None:
                raise self._unknown("strategy", strategy, self._strategies)
            for attempt in range(SUGGEST_ATTEMPTS):
                res = task(request, self.datastore()) or {}
                if not res.get("id"):
                    # The endpoint still looks the id up: None means "no image" to our datastore (answer 200).
                    return {"id": None, "message": res.get("message", "no image to suggest")}
                try:
                    res["path"] = os.path.basename(self.datastore().get_image_uri(res["id"]))  # never a server path
                    return res
                except HTTPException as e:  # a PACS study that cannot be used: now known, so ask again
                    if e.status_code not in (422, 413) or attempt == SUGGEST_ATTEMPTS - 1:
                        raise
                    logger.warning(f"{strategy} suggested {res['id']}, which cannot be used ({e.detail}); asking again")
            raise AssertionError("unreachable")
