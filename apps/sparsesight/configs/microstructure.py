"""DW-MRI microstructure (seed 002): infer + train `microstructure`.

Infer: a 4D DWI (datastore image with its protocol sidecars <id>.bval/<id>.bvec or <id>.b and the timing in
<id>.json, or an upload with `bvals`/`bvecs` (or `grad`) and `big_delta`/`small_delta` options) -> ν, r, f per
population (plain: one (X, Y, Z, 6) NIfTI, r = 0 where the protocol cannot resolve radius; {"bundle": true}:
maps, CSD peaks, NNLS sparsity/residual, chosen fingerprints, previews, the protocol and its radius
sensitivity). Options: method (fingerprinting | mlp | hybrid), bvals, bvecs, grad, mask (true:
<id>_mask.nii.gz sidecar or b=0 threshold; false: every voxel), big_delta / small_delta (Δ, δ: s or ms, a
number or per shell with `shells`), b_unit, timing_unit. Timing is required: never defaulted.
Train: simulated voxels for the protocol of a datastore image (`image`), of `bvals`/`bvecs` with timing, of the
current checkpoint, or the HCP MGH protocol; no labels needed.
"""
from __future__ import annotations

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType

from sparsesight.data import diffusion as dif
from sparsesight.errors import InvalidInput
from sparsesight.models import microstructure as ms
from sparsesight.runners import microstructure as runner

from lib.http_errors import BAD_REQUEST, RequestRunner, http_errors, refuse
from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_config import ModelConfig
from lib.trainers.microstructure_train import MicrostructureTrain

Runner = RequestRunner(runner)  # its InvalidInput is about the request: 400


class MicrostructureInfer(SparseSightInfer):
    """The generic infer task; bad options are refused (400) before anything is loaded. /info shows the protocol
    the served networks were trained for (its hash, shells with Δ/δ, radius sensitivity): they refuse another."""

    def info(self):
        info = super().info()
        meta = self.model_file.meta()
        if meta:
            try:
                p = dif.Protocol.from_config(meta["config"]["protocol"])
            except (InvalidInput, KeyError, TypeError) as e:
                info["protocol"] = {"error": f"the checkpoint's protocol cannot be read: {e}"}
            else:
                info["protocol"] = {"hash": p.hash, "volumes": p.m, "shells": p.shell_table(),
                                    "radius": dif.radius_sensitivity(p)["reason"]}
        return info

    def __call__(self, request):
        with http_errors():
            method = request.get("method")
            if method is not None and method not in ms.METHODS:
                raise refuse(BAD_REQUEST, f"'method' must be one of {', '.join(ms.METHODS)}; got {method!r}")
            for key in ("bvals", "bvecs", "grad"):
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
            description="White-matter microstructure from a 4D DWI (bval/bvec + JSON timing sidecars, or options "
                        "with big_delta/small_delta): volume "
                        "fraction, axon radius index and density of two crossing populations by 'method' "
                        "fingerprinting | mlp | hybrid; plain: (X, Y, Z, 6) maps nu1 r1 f1 nu2 r2 f2; "
                        "{'bundle': true}: maps, CSD peaks, NNLS sparsity and residual, chosen fingerprints",
        )

    def trainer(self):
        return MicrostructureTrain(
            self.name, self.model_file, self.model_config, device=self.device, default_epochs=self.epochs,
            description="Train the fully-learned MLP and the hybrid's split/joint MLPs on simulated voxels for "
                        "a protocol ('image': a datastore DWI with sidecars, or 'bvals'/'bvecs' with 'big_delta'/"
                        "'small_delta'); no labels needed; the checkpoint records the protocol and its hash",
        )
