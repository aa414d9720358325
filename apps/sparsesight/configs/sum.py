"""SUM (soft-shrinkage Haar U-Net proxy) brain-tumour segmentation with denoising explanations: infer + train `sum`."""
from __future__ import annotations

from sparsesight.errors import InvalidInput
from sparsesight.models.sum import check_alpha
from sparsesight.runners import sum as runner

from lib.http_errors import BAD_REQUEST, http_errors, refuse
from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_config import ModelConfig
from lib.trainers.sparsesight_train import SparseSightTrain


class SUMInfer(SparseSightInfer):
    """The generic infer task; a bad `alpha` is a bad request (400), refused before the model is loaded."""

    def __call__(self, request):
        with http_errors():
            if request.get("alpha") is not None:
                try:
                    check_alpha(request["alpha"])
                except InvalidInput as e:
                    raise refuse(BAD_REQUEST, str(e)) from None
        return super().__call__(request)


class SUM(ModelConfig):
    def infer(self):
        return SUMInfer(
            self.name, self.model_file, self.labels, device=self.device, runner=runner,
            options=dict(runner.OPTIONS),
            description="SUM (soft-shrinkage Haar U-Net proxy) segmentation of FLAIR/T1/T1ce/T2; 'alpha' scales "
                        "every threshold (0: linear filter banks, 1: trained); {'bundle': true} returns the "
                        "denoised reconstruction ED_alpha(x), shrinkage masks, impulse/frequency responses, "
                        "SDS/FDS/FDV, alpha sweep and thresholds",
        )

    def trainer(self):
        return SparseSightTrain(
            self.name, self.model_file, self.model_config, device=self.device, default_epochs=self.epochs,
            description="Train SUM_Rec (soft IoU + 0.35 L1 reconstruction, AdamW) on the datastore's final labels",
        )
