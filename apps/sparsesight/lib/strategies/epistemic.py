"""Next image: the one the served model is least sure about under test-time augmentation (highest entropy)."""
from __future__ import annotations

from .ranked import ScoreRanked


class Epistemic(ScoreRanked):
    def __init__(self, scoring):
        super().__init__(scoring, "Unlabelled image with the highest predictive entropy of the served model over "
                                  "test-time augmentations (flips), as MONAI Label's epistemic scoring")
