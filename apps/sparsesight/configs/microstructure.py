"""DW-MRI microstructure (seed 002): infer + train `microstructure`.

Infer: a 4D DWI (datastore image with FSL sidecars <id>.bval/<id>.bvec, or an upload with `bvals`/`bvecs`
options) -> ν, r, f per population (plain: one (X, Y, Z, 6) NIfTI; {"bundle": true}: maps, CSD peaks, NNLS
sparsity/residual, chosen fingerprints, previews). Options: method (fingerprinting | mlp | hybrid), bvals, bvecs,
mask (true: <id>_mask.nii.gz sidecar or b=0 threshold; false: every voxel), big_delta / small_delta (ms).
Train: simulated voxels for the protocol of a datastore image (`image`), of `bvals`/`bvecs`, of the current
checkpoint, or the HCP MGH protocol; no labels needed.
"""
from __future__ import annotations

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType

from sparsesight.models import microstructure as ms
from sparsesight.runners import microstructure as runner

from lib.http_errors import BAD_REQUEST, RequestRunner, http_errors, refuse
from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_config import ModelConfig
from lib.trainers.microstructure_train import MicrostructureTrain

Runner = RequestRunner(runner)  # its InvalidInput is about the request: 400


class MicrostructureInfer(SparseSightInfer):
    """The generic infer task; bad options are refused (400) before anything is loaded."""

    def __call__(self, request):
        with http_errors():
            method = request.get("method")
            if method is not None and method not in ms.METHODS:
                raise refuse(BAD_REQUEST, f"'method' must be one of {', '.join(ms.METHODS)}; got {method!r}")
            for key in ("bvals", "bvecs"):
                v = request.get(key)
                if v is not None:
                    try:
                        np.asarray(v, dtype=np.float64)
                    except (TypeError, ValueError):
                        raise refuse(BAD_REQUEST, f"'{key}' must be a list of numbers") from None
        return super().__call__(request)


class Microstructure(ModelConfig):
    segmentation = False

    def infer(self):
        return MicrostructureInfer(
            self.name, self.model_file, self.labels, device=self.device, runner=Runner,
            options=dict(runner.OPTIONS), infer_type=InferType.OTHERS,
            description="White-matter microstructure from a 4D DWI (bval/bvec sidecars or options): volume "
                        "fraction, axon radius index and density of two crossing populations by 'method' "
                        "fingerprinting | mlp | hybrid; plain: (X, Y, Z, 6) maps nu1 r1 f1 nu2 r2 f2; "
                        "{'bundle': true}: maps, CSD peaks, NNLS sparsity and residual, chosen fingerprints",
        )

    def trainer(self):
        return MicrostructureTrain(
            self.name, self.model_file, self.model_config, device=self.device, default_epochs=self.epochs,
            description="Train the fully-learned MLP and the hybrid's split/joint MLPs on simulated voxels for "
                        "a protocol ('image': a datastore DWI with sidecars, or 'bvals'/'bvecs'); no labels needed",
        )
