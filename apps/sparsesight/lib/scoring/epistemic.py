"""Epistemic scoring by test-time augmentation: entropy of the flip-averaged class probabilities.

MONAI Label's EpistemicScoring samples a dropout network; the SparseSight models have no dropout, so the
samples are the model's predictions on flipped copies of the image, flipped back (exact inverses).
"""
from __future__ import annotations

from sparsesight.active_learning import FLIPS, epistemic_score

from .cached import CachedScoring


class EpistemicScoring(CachedScoring):
    method = "epistemic"

    def __init__(self, model_files, model_dir, flips=FLIPS, **kwargs):
        kwargs.setdefault("description", f"Mean predictive entropy over the brain of {len(flips)} test-time "
                                         f"augmentations (flips) per unlabelled image; BALD and variance kept")
        super().__init__(model_files, model_dir, **kwargs)
        self.flips = tuple(flips)

    def compute(self, model, image, device) -> dict:
        return epistemic_score(model, image, device, self.flips)
