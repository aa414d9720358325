"""Scoring by the sparse residual: how poorly the learned dictionaries reconstruct each image (normalised)."""
from __future__ import annotations

from sparsesight.active_learning import sparse_residual_score

from .cached import CachedScoring


class SparseResidualScoring(CachedScoring):
    method = "sparse_residual"

    def __init__(self, model_files, model_dir, **kwargs):
        kwargs.setdefault("description", "Relative reconstruction residual ||x - xhat||^2 / ||x||^2 over the brain "
                                         "(ML-CSC: sum_c Phi_c gamma_c; SUM: ED_alpha=0) per unlabelled image")
        super().__init__(model_files, model_dir, **kwargs)

    def compute(self, model, image, device) -> dict:
        return sparse_residual_score(model, image, device)
