"""Image scores of the served models, computed in the background and cached per model version.

A CachedScoring is a MONAI Label ScoringMethod over every served segmentation model that has a checkpoint:
it scores the datastore's unlabelled images that have no score for the model's *current* version yet and
stores them in <model_dir>/scores/<model>.<method>.json (sparsesight.active_learning.ScoreCache). A new model
version (training, a replaced checkpoint) or a replaced image makes the stored scores invalid; they are then
recomputed after the next training (MyApp.async_scoring runs the methods in use at the end of the training
process: those a strategy or a /scoring request has used with that model) or on demand when a strategy
needs them. /info shows per model the version the scores belong to,
whether it is the current one, and the top of the ranking.

Request keys (POST /scoring/<method>): `model` (one model instead of all), `device`, `images`
("unlabeled" (default) or "all"), `in_use_only` (only the models this method has scored with before).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict, List, Optional

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from sparsesight.active_learning import ScoreCache, file_fingerprint, rank
from sparsesight.data.io import load_image
from sparsesight.errors import InvalidInput

from ..http_errors import BAD_REQUEST, NOT_FOUND, refuse
from ..model_file import ModelFile, pick_device

logger = logging.getLogger(__name__)


class CachedScoring(ScoringMethod):
    """Subclasses set `method` and implement `compute(model, image, device) -> {"score": float, ...}`."""

    method = ""

    def __init__(self, model_files: Dict[str, ModelFile], model_dir: str, description: str,
                 device: Optional[str] = None, datastore: Optional[Callable[[], Datastore]] = None):
        super().__init__(description)
        self.model_files = dict(model_files)
        self.model_dir = model_dir
        self.device = device
        self._datastore = datastore  # for info(); MONAI Label calls info() without one

    def compute(self, model, image, device) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ models and cache
    def cache(self, model_name: str) -> ScoreCache:
        return ScoreCache(os.path.join(self.model_dir, "scores", f"{model_name}.{self.method}.json"), self.method,
                          model_name)

    def trained_models(self) -> List[str]:
        return [name for name, f in self.model_files.items() if f.exists() and not f.error()]  # broken: skipped

    def pick_model(self, request) -> Optional[str]:
        """The request's `model` (404 if not scored here), else the first served model with a checkpoint."""
        name = request.get("model")
        if name:
            if name not in self.model_files:
                raise refuse(NOT_FOUND, f"model {name!r} is not scored by {self.method}; "
                                        f"available: {', '.join(self.model_files) or 'none'}")
            return name if name in self.trained_models() else None
        trained = self.trained_models()
        return trained[0] if trained else None

    @staticmethod
    def fingerprints(datastore: Datastore, image_ids) -> Dict[str, list]:
        out = {}
        for image_id in image_ids:
            try:
                out[image_id] = file_fingerprint(datastore.get_image_uri(image_id))
            except (OSError, HTTPException):
                continue  # gone from disk, or a PACS study that cannot be used (422) or fetched (502): skipped
        return out

    def current(self, model_name: str, datastore: Datastore, image_ids) -> Dict[str, dict]:
        """The stored entries of image_ids that are valid for the model's current version and image files."""
        version = self.model_files[model_name].version()
        return self.cache(model_name).scores(version, self.fingerprints(datastore, image_ids))

    def missing(self, model_name: str, datastore: Datastore, image_ids) -> List[str]:
        have = self.current(model_name, datastore, image_ids)
        return [i for i in image_ids if i not in have]

    def in_use(self, model_name: str) -> bool:
        """True once the method has scored with this model (a strategy or a /scoring request asked for it)."""
        return os.path.exists(self.cache(model_name).path)

    def stale(self, datastore: Datastore) -> bool:
        """True when a trained model in use lacks a current score for some unlabelled image.

        Methods nobody has asked for are not refreshed after training, so they cost nothing."""
        images = datastore.get_unlabeled_images()
        return any(self.missing(m, datastore, images) for m in self.trained_models() if self.in_use(m))

    # ------------------------------------------------------------------ scoring
    def ensure(self, model_name: str, image_ids, datastore: Datastore, device=None,
               progress: Callable[[str], None] = print) -> tuple[Dict[str, dict], int]:
        """(current entries of image_ids, how many were computed now): scores the missing ones and stores them."""
        todo = self.missing(model_name, datastore, image_ids)
        if todo:
            self.score_images(model_name, todo, datastore, device, progress)
        return self.current(model_name, datastore, image_ids), len(todo)

    def score_images(self, model_name: str, image_ids, datastore: Datastore, device=None,
                     progress: Callable[[str], None] = print) -> Dict[str, dict]:
        """Score image_ids with the model's current checkpoint; store and return {image id: entry}."""
        device = pick_device(device, self.device)
        model, meta = self.model_files[model_name].load(device)
        if model is None:
            return {}
        version, start, entries = meta["version"], time.time(), {}
        channels = getattr(model, "n", 4)
        every = max(1, len(image_ids) // 10)
        for k, image_id in enumerate(image_ids, 1):
            try:
                path = datastore.get_image_uri(image_id)
            except HTTPException as e:  # a PACS study that cannot be used or fetched: not scored, not suggested
                logger.warning(f"scoring {self.method}: {image_id} skipped ({e.detail})")
                continue
            entry = {"fingerprint": file_fingerprint(path)}
            try:
                image, _ = load_image(path, channels=channels)
                entry.update(self.compute(model, image, device))
            except InvalidInput as e:  # a file put into the datastore folder by hand: no score, say why
                entry.update({"score": None, "error": str(e)})
            entries[image_id] = entry
            if len(image_ids) > 10 and (k % every == 0 or k == len(image_ids)):
                progress(f"scoring {self.method} {model_name}: {k}/{len(image_ids)} images")
        # the checkpoint may have been replaced meanwhile: store under the version that computed them
        self.cache(model_name).put(version, entries)
        best = rank({i: e["score"] for i, e in entries.items() if e.get("score") is not None})
        progress(f"scoring {self.method} {model_name} {version}: {len(entries)} image(s) in "
                 f"{time.time() - start:.1f} s" + (f", highest {best[0]} {entries[best[0]]['score']:.4g}" if best else ""))
        return entries

    def __call__(self, request, datastore: Datastore):
        which = request.get("images", "unlabeled")
        if which not in ("unlabeled", "all"):
            raise refuse(BAD_REQUEST, f"'images' must be 'unlabeled' or 'all', got {which!r}")
        images = datastore.list_images() if which == "all" else datastore.get_unlabeled_images()
        names = [request["model"]] if request.get("model") else [
            m for m in self.trained_models() if not request.get("in_use_only") or self.in_use(m)]
        result = {}
        for name in names:
            if self.pick_model({"model": name}) is None:
                result[name] = {"scored": 0, "message": f"{name} has no checkpoint yet"}
                continue
            entries, computed = self.ensure(name, images, datastore, request.get("device"))
            result[name] = {"version": self.model_files[name].version(), "scored": len(entries), "computed": computed}
        return result

    # ------------------------------------------------------------------ what /info shows
    def info(self):
        info = super().info()
        models = {}
        for name, f in self.model_files.items():
            cache, version = self.cache(name), f.version()
            stored = cache.version()
            entry = {"model_version": version, "scores_version": stored, "current": stored is not None and stored == version}
            if entry["current"]:
                scores = cache.scores(version)
                if self._datastore is not None:  # only the images still waiting for a label
                    todo = set(self._datastore().get_unlabeled_images())
                    scores = {k: v for k, v in scores.items() if k in todo}
                ok = {k: v["score"] for k, v in scores.items() if v.get("score") is not None}
                entry["scored"] = len(scores)
                entry["top"] = [[k, round(ok[k], 6)] for k in rank(ok)[:5]]
            models[name] = entry
        info["models"] = models
        return info
