"""POST /pacs/results/{model}?image=STUDY_UID: a model's results stored in the PACS as DICOM objects.

Runs the model's bundle inference on the study (the same task as POST /infer/{model} with {"bundle": true}),
then writes the bundle's label as a DICOM SEG (segments AUTOMATIC, the model named as the algorithm, so it is
never taken for an annotator's final label) and each chosen scalar volume (per-class probabilities,
components, attribution maps, ...) as a Parametric Map, all on the study's reference series, and stores them
with one STOW-RS request. All or nothing: a PACS that refuses or drops an object gets the objects of this
request removed again and the answer is 502 with its reason.

Body (optional JSON): {"outputs": [the model's bundle outputs, as for POST /infer], "options": {model infer
options}}; default outputs ["label", "probabilities"] (mlcsc/sum: also "components", "reconstruction", ...).
Every volume of the bundle is stored: the label as SEG, scalars as Parametric Maps (at most MAX_MAPS, 413).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

import numpy as np
from fastapi import APIRouter, Body, Query
from fastapi.concurrency import run_in_threadpool
from monailabel.config import settings

from sparsesight import bundle as sbundle
from sparsesight.data.dicom import results, web

from .http_errors import BAD_REQUEST, TOO_LARGE, check_id, refuse
from .pacs import PacsDatastore, pacs_errors

logger = logging.getLogger(__name__)

MAX_MAPS = 32
MAX_STORE_BYTES = 512 << 20  # pixel bytes of the Parametric Maps of one request (1 mm BraTS: 17.9 MB a map)
DEFAULT_OUTPUTS = ["label", "probabilities"]


def store_results(app, model: str, image: str, outputs: List[str], options: Dict[str, Any]) -> Dict[str, Any]:
    """Infer (bundle), convert, store; the stored objects' UIDs (runs in a worker thread)."""
    datastore = app.datastore()
    if not isinstance(datastore, PacsDatastore):
        raise refuse(BAD_REQUEST, "the server's datastore is not a PACS: start it with --studies <DICOMweb URL>")
    check_id(image)
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o for o in outputs):
        raise refuse(BAD_REQUEST, "'outputs' must be a non-empty list of bundle outputs, e.g. "
                                  "[\"label\", \"probabilities\", \"components\"]")
    if not isinstance(options, dict):
        raise refuse(BAD_REQUEST, "'options' must be a JSON object of the model's infer options")
    request = {**options, "model": model, "image": image, "bundle": True, "outputs": outputs, "save_label": False}
    result = app.infer(request)
    path = result.get("file")
    try:
        with pacs_errors():
            bundle = sbundle.read(path)
            try:
                entries = [e for e in bundle.outputs if e["kind"] in ("labelmap", "scalar")]
                maps = [e for e in entries if e["kind"] == "scalar"]
                voxels = int(np.prod(bundle.manifest.get("spatial_shape") or [0]))
                if len(maps) > MAX_MAPS or len(maps) * voxels * 2 > MAX_STORE_BYTES:
                    raise refuse(TOO_LARGE, f"{len(maps)} maps of {voxels} voxels in the bundle; at most {MAX_MAPS} "
                                            f"maps and {MAX_STORE_BYTES >> 20} MiB of 16-bit pixels per request: "
                                            f"ask for fewer 'outputs'")
                if not entries:
                    raise refuse(BAD_REQUEST, f"the outputs {outputs} hold no volume to store")
                source = datastore._reference_source(image)
                objects, described = [], []
                for n, entry in enumerate(entries):
                    volume, _ = bundle.volume(entry["name"])
                    if entry["kind"] == "labelmap" and entry["name"] == "label":
                        ds = results.label_to_seg(volume, source, model=model, series_number=900,
                                                  description=f"SparseSight {model} label")
                    elif entry["kind"] == "labelmap":
                        continue  # other labelmaps (e.g. peak counts) are not BraTS classes
                    else:
                        ds = results.map_to_parametric_map(volume, source, entry["name"], series_number=901 + n,
                                                           description=entry.get("description"))
                    objects.append(ds)
                    described.append({"name": entry["name"], "modality": str(ds.Modality),
                                      "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                                      "SOPInstanceUID": str(ds.SOPInstanceUID)})
            finally:
                bundle.close()
            web.store(datastore._client, objects)
    finally:
        if path and os.path.exists(path):
            os.unlink(path)
    logger.info(f"stored {len(objects)} result object(s) of {model} on study {image} in {datastore.name()}")
    return {"study": image, "model": model, "model_version": result.get("params", {}).get("model_version"),
            "pacs": datastore.name(), "stored": described}


def build_router(app) -> APIRouter:
    router = APIRouter(tags=["PACS"])

    @router.post("/pacs/results/{model}", summary="Store a model's results on a study in the PACS as SEG and "
                                                   "Parametric Maps")
    async def pacs_results(model: str, image: str = Query(..., description="StudyInstanceUID"),
                           body: Dict[str, Any] = Body(default={})):
        outputs = body.get("outputs", DEFAULT_OUTPUTS)
        options = body.get("options", {})
        return await run_in_threadpool(store_results, app, model, image, outputs, options)

    return router


def install(fastapi_app, app) -> None:
    """Add the PACS routes (once) in front of the stock ones."""
    if getattr(fastapi_app.state, "sparsesight_pacs", False):
        return
    fastapi_app.include_router(build_router(app), prefix=settings.MONAI_LABEL_API_STR)
    fastapi_app.state.sparsesight_pacs = True
