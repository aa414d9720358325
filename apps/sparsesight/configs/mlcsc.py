"""ML-CSC (multimodal multi-layer convolutional sparse coding) brain-tumour segmentation: infer + train `mlcsc`."""
from __future__ import annotations

from sparsesight.runners import mlcsc as runner

from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_config import ModelConfig
from lib.trainers.sparsesight_train import SparseSightTrain


class MLCSC(ModelConfig):
    def infer(self):
        return SparseSightInfer(
            self.name, self.model_file, self.labels, device=self.device,
            description="ML-CSC segmentation of FLAIR/T1/T1ce/T2 into oedema, non-enhancing core, enhancing; "
                        "{'bundle': true} returns the result bundle (label, components, sparsity, params); "
                        "'attribution': 'ig' adds attribution maps with faithfulness scores",
            runner=runner, options=dict(runner.OPTIONS),
        )

    def trainer(self):
        return SparseSightTrain(
            self.name, self.model_file, self.model_config, device=self.device, default_epochs=self.epochs,
            description="Train ML-CSC on the datastore's final labels, continuing from the current checkpoint",
        )
