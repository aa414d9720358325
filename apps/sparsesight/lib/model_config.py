"""What every model's TaskConfig shares: its checkpoint file, device, default epochs and class labels."""
from __future__ import annotations

import os
from typing import Any, Dict

from monailabel.interfaces.config import TaskConfig

import sparsesight
from sparsesight import models

from .model_file import ModelFile


class ModelConfig(TaskConfig):
    """Base of configs/<model>.py: the checkpoint is <model_dir>/<model>.pt, watched by a ModelFile.

    `model_config` holds the hyperparameters of a fresh network: the trainer builds it with sparsesight.models.build
    when there is no checkpoint yet; otherwise sparsesight.checkpoint.load rebuilds it from the checkpoint's config.
    """

    #: True: the labels are the tumour classes (oedema 1, non-enhancing core 2, enhancing 3); False: no labels
    #: (reconstruction and parameter-map models)
    segmentation = True

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.device = kwargs.get("device")
        self.labels = {v: k for k, v in sparsesight.CLASSES.items() if k} if self.segmentation else {}
        self.path = os.path.join(model_dir, f"{name}.pt")
        self.model_config = models.default_config(name)
        self.model_file = ModelFile(name, self.path)
        self.epochs = int(conf.get("epochs", 2))
