"""What every model's TaskConfig shares: its checkpoint file, device, default epochs and class labels."""
from __future__ import annotations

import os
from typing import Any, Dict

from monailabel.interfaces.config import TaskConfig

import sparsesight
from sparsesight import models

from .model_file import ModelFile

#: the weights shipped in the repository, one <model>.pt with its <model>.card.json / .card.md each
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")


def shipped_weights(name: str, conf: Dict[str, str]) -> str | None:
    """The shipped checkpoint served while <model_dir>/<name>.pt does not exist: `--conf pretrained` true (the
    default) -> PRETRAINED_DIR, false -> none (a fresh server starts untrained), a folder -> that folder."""
    choice = str(conf.get("pretrained", "true")).strip()
    if choice.lower() in ("false", "0", "no", "off", "none"):
        return None
    folder = PRETRAINED_DIR if choice.lower() in ("true", "1", "yes", "on", "") else os.path.abspath(choice)
    path = os.path.join(folder, f"{name}.pt")
    return path if os.path.isfile(path) else None


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
        self.model_file = ModelFile(name, self.path, shipped=shipped_weights(name, conf))
        self.epochs = int(conf.get("epochs", 2))
