"""Infer task for any SparseSight model: plain label NIfTI by default, the result bundle on request.

Request keys (besides MONAI Label's own): `bundle` (bool) returns the result-bundle zip of the model's runner
instead of the label; `outputs` (list of output names) narrows the bundle; `device` overrides the app's device;
plus the model's own options (declared by its config as `options`, e.g. SUM's `alpha`), handed to the runner.

A runner is any object (usually a module of the library) with
    predict_file(model, image_path, device="cpu", **options) -> (label or main map ndarray, affine)
    run_bundle(model, name, version, image_path, image_id, out_path, outputs=None, device="cpu", **options) -> path
raising sparsesight.errors.InvalidInput for bad inputs or options (answered as HTTP 400 with the reason).
The default runner is sparsesight.runners.mlcsc; the protocol is sparsesight.runners.Runner.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any, Dict, Tuple, Union

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from sparsesight.data import io as sio
from sparsesight.runners import mlcsc

from ..http_errors import BAD_REQUEST, CONFLICT, bad_request, flag, http_errors, refuse
from ..model_file import BrokenModel, ModelFile, pick_device

logger = logging.getLogger(__name__)

RESERVED = {"bundle", "outputs", "device"}
SERVICE_UNAVAILABLE = 503


class SparseSightInfer(InferTask):
    def __init__(self, name: str, model_file: ModelFile, labels: Dict[str, int], description: str, device=None,
                 runner=mlcsc, options: Dict[str, Any] | None = None, infer_type=InferType.SEGMENTATION,
                 dimension: int = 3):
        """`options`: {request key: default} of the model's own infer options, shown in /info and passed to
        the runner only when the request sets them."""
        options = dict(options or {})
        clash = RESERVED & set(options)
        if clash:
            raise ValueError(f"infer options {sorted(clash)} are reserved")
        super().__init__(
            type=infer_type,
            labels=labels,
            dimension=dimension,
            description=description,
            config={"bundle": False, "outputs": [], **options},
        )
        self.name = name
        self.model_file = model_file
        self.device = device
        self.runner = runner
        self.options = options

    # ---------------------------------------------------------------- what /info shows
    def info(self) -> Dict[str, Any]:
        info = super().info()
        meta = self.model_file.meta()
        info["version"] = meta.get("version") if meta else None
        info["trained"] = meta is not None
        if meta:
            info["source"] = meta.get("source")  # "trained" (model_dir) or "shipped" (with its model card)
            if meta.get("card"):
                info["card"] = meta["card"]
        if meta:
            info["created"] = meta.get("created")
        error = self.model_file.error()
        if error:
            info["error"] = error  # this model only; the others keep serving
        return info

    def is_valid(self) -> bool:
        return True  # listed even before the first training; infer then answers 409 with what to do

    def get_path(self, validate=True):
        return self.model_file.path if (not validate or self.model_file.exists()) else None

    # ---------------------------------------------------------------- the task
    def __call__(self, request) -> Tuple[Union[str, None], Dict]:
        with http_errors():
            return self._run(request)

    def _run(self, request):
        start = time.time()
        with bad_request():  # a device outside the allow-list: 400 naming the valid ones
            device = pick_device(request.get("device"), self.device)
        try:
            model, meta = self.model_file.load(device)
        except BrokenModel as e:
            raise refuse(SERVICE_UNAVAILABLE, f"model {self.name} cannot serve: its checkpoint is unusable ({e}); "
                                              f"retrain it or upload a valid checkpoint") from None
        if model is None:
            raise refuse(
                CONFLICT,
                f"model {self.name} has no trained checkpoint yet: POST /train/{self.name} first "
                f"(it trains on the datastore's images that have a final label)",
            )
        version = meta["version"]
        image_path = request["image"]
        image_id = request.get("image_id") or os.path.basename(image_path).split(".")[0]
        outputs = request.get("outputs") or None
        if outputs is not None and (
            not isinstance(outputs, (list, tuple)) or not all(isinstance(o, str) for o in outputs)
        ):
            raise refuse(BAD_REQUEST, "'outputs' must be a list of output names, e.g. [\"label\", \"params\"]")

        # the model's own options, only those the request sets (the runner keeps its defaults otherwise)
        opts = {k: request[k] for k in self.options if k in request and request[k] is not None}
        params = {"model": self.name, "model_version": version, "image": image_id, "device": device, **opts}
        if getattr(self.runner, "INPUT_CHECKS", False) and request.get("series_grids"):
            opts["series_grids"] = request["series_grids"]  # set by the app from the datastore (a PACS study)
        if flag(request.get("bundle", False)):
            fd, out = tempfile.mkstemp(prefix=f"{self.name}-{image_id}-", suffix=".zip")
            os.close(fd)
            try:
                out = str(self.runner.run_bundle(model, self.name, version, image_path, image_id, out,
                                                 outputs=outputs, device=device, **opts))
            except BaseException:
                os.unlink(out)
                raise
            params.update({"bundle": True, "outputs": outputs or "all"})
        else:
            if getattr(self.runner, "INPUT_CHECKS", False):
                # the input checks a bundle's label carries (noise, slice thickness), in the params of the answer
                label, affine, checks = self.runner.predict_file(model, image_path, device=device,
                                                                 checks_for=(self.name, version), **opts)
                if checks is not None:
                    params["checks"] = checks
            else:
                label, affine = self.runner.predict_file(model, image_path, device=device, **opts)
            fd, out = tempfile.mkstemp(prefix=f"{self.name}-{image_id}-", suffix=".nii.gz")
            os.close(fd)
            try:
                out = str(sio.save_nifti(label, affine, out))
            except BaseException:
                os.unlink(out)  # no result file left behind when writing it fails
                raise
            params.update({"bundle": False, "label_names": self.labels, "shape": list(label.shape)})
        params["latencies"] = {"total": round(time.time() - start, 3)}
        logger.info(f"{self.name} {version} on {image_id}: {params['latencies']['total']} s")
        return out, params
