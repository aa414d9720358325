"""Next image: rank fusion of the sparse residual and the epistemic entropy (sparsesight.active_learning.rank_fusion).

Each unlabelled image gets the mean of its fractional ranks under the two cached scores of the served model, so
the first pick is an image the dictionaries explain poorly *and* the classifier is unsure about. Both caches are
the ones the single-score strategies use (and the training process refreshes).
"""
from __future__ import annotations

from monailabel.interfaces.datastore import Datastore

from sparsesight.active_learning import rank_fusion

from ..scoring.cached import CachedScoring
from .ranked import ScoreRanked, scored


class Hybrid(ScoreRanked):
    def __init__(self, residual: CachedScoring, epistemic: CachedScoring):
        super().__init__(residual, "Unlabelled image first by the mean of its ranks under the sparse residual and "
                                   "the epistemic (test-time augmentation) entropy of the served model")
        self.methods, self.label = (residual, epistemic), "hybrid"

    def scores(self, name: str, images, datastore: Datastore, device) -> tuple[dict, int]:
        parts = [scored(m, name, images, datastore, device) for m in self.methods]
        return rank_fusion(*(p[0] for p in parts)), sum(p[1] for p in parts)
