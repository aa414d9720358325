"""CDL-Lambda reconstruction (seed 001): infer + train `cdl`.

Infer: a datastore image (4D FLAIR/T1/T1ce/T2: option `channel`) whose axial slices are acquired in simulation
(options `mask` lowres | random, `keep`, `acceleration`, `sigma`, `seed`), or a complex (X, Y, Z) k-space NIfTI;
plain answer: the reconstruction NIfTI; {"bundle": true}: reconstruction, zero-filled input, reference, Lambda maps
per filter and summarised, code energy, Lambda statistics, metrics, preview. `dictionary` picks another stored
dictionary at inference (V3: any number of filters).
Train: the datastore's images are the references (reconstruction needs no labels); k-space is simulated per
sample with random acquisitions; continues from the current checkpoint.
"""
from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from sparsesight.runners import cdl as runner

from lib.http_errors import RequestRunner
from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_config import ModelConfig
from lib.trainers.cdl_train import CDLTrain

Runner = RequestRunner(runner)  # its InvalidInput is about the request: 400


class CDL(ModelConfig):
    segmentation = False

    def infer(self):
        return SparseSightInfer(
            self.name, self.model_file, self.labels, device=self.device, runner=Runner,
            options=dict(runner.OPTIONS), infer_type=InferType.OTHERS,
            description="CDL-Lambda low-field MRI reconstruction of a channel ('channel') from k-space simulated "
                        "slice by slice ('mask' lowres|random, 'keep', 'acceleration', 'sigma') or from a complex "
                        "k-space NIfTI; plain: the reconstruction; {'bundle': true}: reconstruction, zero-filled, "
                        "Lambda maps per filter and summarised, code energy, metrics, preview",
        )

    def trainer(self):
        return CDLTrain(
            self.name, self.model_file, self.model_config, device=self.device, default_epochs=self.epochs,
            description="Train the CDL-Lambda sparsity-map estimator on the datastore's images as references "
                        "(simulated acquisitions; no labels needed), continuing from the current checkpoint",
        )
