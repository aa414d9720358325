"""A strategy that suggests the unlabelled image with the highest score of a scoring method.

The scores come from the method's cache for the model's current version (filled in the background after each
training); images still without a current score are scored on the spot, so the answer always reflects the
served model. Without a trained model there is nothing to score with: the answer is a random image, and it
says so ("fallback": "random").

Request keys: `model` (which served model scores; default the first with a checkpoint), `device`,
`label_tag` / `labels` (as the stock strategies).
"""
from __future__ import annotations

import logging

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from sparsesight.active_learning import rank

from ..scoring.cached import CachedScoring
from .random import Random, nothing_left, unlabelled

logger = logging.getLogger(__name__)


def scored(scoring: CachedScoring, name: str, images, datastore: Datastore, device) -> tuple[dict, int]:
    """The current scores of `images` by one method (computing the missing ones), and how many were computed."""
    entries, computed = scoring.ensure(name, images, datastore, device, progress=logger.info)
    return {i: e["score"] for i, e in entries.items() if e.get("score") is not None}, computed


class ScoreRanked(Strategy):
    def __init__(self, scoring: CachedScoring, description: str):
        super().__init__(description)
        self.scoring = scoring
        self.label = scoring.method  # in the log and the fallback messages

    def scores(self, name: str, images, datastore: Datastore, device) -> tuple[dict, int]:
        """({image id: score} of the images that could be scored, how many were computed now)."""
        return scored(self.scoring, name, images, datastore, device)

    def _random(self, request, datastore, why: str) -> dict:
        res = Random()(request, datastore)
        res.update({"fallback": "random", "message": why})
        return res

    def __call__(self, request, datastore: Datastore):
        images = unlabelled(request, datastore)
        if not images:
            return nothing_left(datastore)
        name = self.scoring.pick_model(request)
        if name is None:
            return self._random(request, datastore, f"no trained model to compute {self.label} scores "
                                                    f"with yet (POST /train/<model> first): a random image")
        scores, computed = self.scores(name, images, datastore, request.get("device"))
        if not scores:
            return self._random(request, datastore, f"none of the {len(images)} unlabelled images could be scored "
                                                    f"by {name}: a random image")
        order = rank(scores)
        top = order[0]
        version = self.scoring.model_files[name].version()
        logger.info(f"{self.label}: {top} (score {scores[top]:.4g}) of {len(images)} unlabelled images, "
                    f"{name} {version}, {computed} scored now")
        return {
            "id": top,
            "score": scores[top],
            "model": name,
            "model_version": version,
            "unlabeled": len(images),
            "scored_now": computed,
            "ranking": [[i, scores[i]] for i in order[:10]],
        }
