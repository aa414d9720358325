"""ML-CSC (multimodal multi-layer convolutional sparse coding) brain-tumour segmentation: infer + train `mlcsc`."""
from __future__ import annotations

import os
from typing import Any, Dict

from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_file import ModelFile
from lib.trainers.sparsesight_train import SparseSightTrain
from monailabel.interfaces.config import TaskConfig

import sparsesight
from sparsesight import models
from sparsesight.explain import served


class MLCSC(TaskConfig):
    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.device = kwargs.get("device")
        self.labels = {v: k for k, v in sparsesight.CLASSES.items() if k}  # oedema 1, non-enh. core 2, enh. 3
        self.path = os.path.join(model_dir, f"{name}.pt")
        # hyperparameters of a fresh network; the trainer builds it with sparsesight.models.build when there is no
        # checkpoint yet, otherwise sparsesight.checkpoint.load rebuilds it from the checkpoint's own config
        self.model_config = models.default_config(name)
        self.model_file = ModelFile(name, self.path)
        self.epochs = int(conf.get("epochs", 2))

    def infer(self):
        return SparseSightInfer(
            self.name, self.model_file, self.labels, device=self.device,
            description="ML-CSC segmentation of FLAIR/T1/T1ce/T2 into oedema, non-enhancing core, enhancing; "
                        "{'bundle': true} returns the result bundle (label, components, sparsity, params); "
                        "'attribution': 'ig' adds attribution maps with faithfulness scores",
            options=dict(served.INFER_OPTIONS),
        )

    def trainer(self):
        return SparseSightTrain(
            self.name, self.model_file, self.model_config, device=self.device, default_epochs=self.epochs,
            description="Train ML-CSC on the datastore's final labels, continuing from the current checkpoint",
        )
