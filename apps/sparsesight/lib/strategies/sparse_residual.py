"""Next image: the one the learned sparse codes reconstruct worst (relative residual, highest first)."""
from __future__ import annotations

from .ranked import ScoreRanked


class SparseResidual(ScoreRanked):
    def __init__(self, scoring):
        super().__init__(scoring, "Unlabelled image worst explained by the learned dictionaries: highest relative "
                                  "reconstruction residual ||x - xhat||^2 / ||x||^2 of the served model")
