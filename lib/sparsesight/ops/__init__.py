"""Framework-level maths shared by the models."""
from .soft_threshold import soft_threshold, soft_threshold_nonneg

__all__ = ["soft_threshold", "soft_threshold_nonneg"]
