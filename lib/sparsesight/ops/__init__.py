"""Framework-level maths shared by the models."""
from .haar import dwt, haar_filters, idwt
from .soft_threshold import soft_threshold, soft_threshold_nonneg

__all__ = ["dwt", "haar_filters", "idwt", "soft_threshold", "soft_threshold_nonneg"]
