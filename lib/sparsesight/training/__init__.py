"""Training: one skeleton (loop.py: epochs, objectives, clipping, validation, progress, checkpoint hook, DDP)
configured per model: segmentation.py (ML-CSC, SUM and the MONAI baselines on labelled images), cdl.py
(CDL-Lambda on reference slices), microstructure.py (the MLPs on simulated voxels)."""
from .loop import Objective, fit
from .segmentation import check_train_config, default_train_config, train

__all__ = ["Objective", "check_train_config", "default_train_config", "fit", "train"]
