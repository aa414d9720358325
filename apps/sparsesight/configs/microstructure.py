"""DW-MRI microstructure (seed 002): infer + train `microstructure`.

Infer: a 4D DWI (datastore image with FSL sidecars <id>.bval/<id>.bvec, or an upload with `bvals`/`bvecs`
options) -> ν, r, f per population (plain: one (X, Y, Z, 6) NIfTI; {"bundle": true}: maps, CSD peaks, NNLS
sparsity/residual, chosen fingerprints, previews). Options: method (fingerprinting | mlp | hybrid), bvals, bvecs,
mask (true: <id>_mask.nii.gz sidecar or b=0 threshold; false: every voxel), big_delta / small_delta (ms).
Train: simulated voxels for the protocol of a datastore image (`image`), of `bvals`/`bvecs`, of the current
checkpoint, or the HCP MGH protocol; no labels needed.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict

import numpy as np
import torch
from lib.http_errors import BAD_REQUEST, NOT_FOUND, RequestRunner, bad_request, check_id, http_errors, refuse
from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_config import ModelConfig
from lib.model_file import pick_device
from lib.trainers.sparsesight_train import SparseSightTrain, train_params, whole_number
from monailabel.interfaces.tasks.infer_v2 import InferType

from sparsesight import checkpoint, microstructure_run, models
from sparsesight.data import diffusion as dif
from sparsesight.models import microstructure as ms

INFER_OPTIONS = {"method": "hybrid", "bvals": None, "bvecs": None, "mask": True, "big_delta": None,
                 "small_delta": None}
TRAIN_KEYS = {"n_train", "snr", "lr", "batch_size", "seed", "grid", "mlp_hidden", "split_hidden", "joint_hidden",
              "threads"}


Runner = RequestRunner(microstructure_run)  # its InvalidInput is about the request: 400


class MicrostructureTrain(SparseSightTrain):
    """Trains the MLP and the hybrid's networks on simulated voxels of a protocol (no labels needed)."""

    def config(self):
        return {"epochs": self.default_epochs, "max_minutes": None, "image": None,
                "train_config": {"n_train": 20000, "snr": [25, 50, 100], "grid": "paper"}}

    def _protocol(self, request, datastore):
        image = request.get("image")
        if image:
            check_id(image)
            if image not in datastore.list_images():
                raise refuse(NOT_FOUND, f"image {image!r} is not in the datastore")
            with bad_request():
                return microstructure_run.gradient_table(datastore.get_image_uri(image))
        if request.get("bvals") is not None or request.get("bvecs") is not None:
            with bad_request():
                return microstructure_run.gradient_table(None, request.get("bvals"), request.get("bvecs"))
        meta = self.model_file.meta()
        if meta:
            return dif.Protocol.from_config(meta["config"]["protocol"])
        return dif.hcp_mgh_protocol()

    def check(self, request: Dict[str, Any], datastore) -> Dict[str, Any]:
        p = train_params(request, self.default_epochs)
        tc = dict(p["train_config"] or {})
        unknown = sorted(set(tc) - TRAIN_KEYS)
        if unknown:
            raise refuse(BAD_REQUEST, f"unknown train_config keys {unknown}; known: {sorted(TRAIN_KEYS)}")
        tc["n_train"] = whole_number(tc.get("n_train", 20000), "n_train", 200, 2_000_000)
        snr = tc.get("snr", [25, 50, 100])
        snr = snr if isinstance(snr, list) else [snr]
        try:
            snr = [float(s) for s in snr]
        except (TypeError, ValueError):
            raise refuse(BAD_REQUEST, "'snr' must be a number or a list of numbers") from None
        if not snr or min(snr) <= 0:
            raise refuse(BAD_REQUEST, "'snr' values must be positive")
        tc["snr"] = snr
        grid = tc.get("grid", "paper")
        if grid != "paper":
            if not isinstance(grid, dict) or set(grid) != {"n_r", "n_f"}:
                raise refuse(BAD_REQUEST, "'grid' is \"paper\" (34 x 23) or {\"n_r\": .., \"n_f\": ..}")
            grid = {"n_r": whole_number(grid["n_r"], "grid.n_r", 2, 100),
                    "n_f": whole_number(grid["n_f"], "grid.n_f", 2, 100)}
        tc["grid"] = grid
        for key in ("mlp_hidden", "split_hidden", "joint_hidden"):
            if key in tc and (not isinstance(tc[key], list) or not tc[key]
                              or not all(isinstance(h, int) and 1 <= h <= 8192 for h in tc[key])):
                raise refuse(BAD_REQUEST, f"'{key}' must be a list of layer widths, e.g. [256, 128]")
        p["train_config"] = tc
        p["protocol"] = self._protocol(request, datastore)
        return p

    def __call__(self, request, datastore):
        with http_errors():
            p = self.check(request, datastore)
        tc, protocol = p["train_config"], p["protocol"]
        device = pick_device(request.get("device"), self.device)
        # small MLPs and per-voxel NNLS on a CPU: one thread by default (on the shared 2-core test machine two
        # threads made training ~25x slower through OpenMP oversubscription); this is the training process only
        torch.set_num_threads(max(1, int(tc.get("threads", 1))))
        grid = dif.paper_grid() if tc["grid"] == "paper" else dif.small_grid(tc["grid"]["n_r"], tc["grid"]["n_f"])
        config = {**models.default_config(self.name), "protocol": protocol.to_config(), "grid": grid.to_config(),
                  **{k: tc[k] for k in ("mlp_hidden", "split_hidden", "joint_hidden") if k in tc}}
        model, meta = self.model_file.load("cpu")
        same = meta is not None and all(
            json.dumps(meta["config"].get(k), sort_keys=True) == json.dumps(config[k], sort_keys=True) for k in config)
        previous = meta["version"] if same else None
        if not same:
            model = models.build(self.name, config)
        print(f"train {self.name}: protocol {protocol.name} (M = {protocol.m}, shells "
              f"{protocol.shells().tolist()}), grid {len(grid.radii_um)} x {len(grid.fractions)}, "
              f"{tc['n_train']} simulated voxels at SNR {tc['snr']}, {p['epochs']} epoch(s), device {device}, "
              f"starting from {previous or 'fresh weights'}", flush=True)
        start = time.time()
        data = ms.simulate_training_set(model, tc["n_train"], tc["snr"], seed=int(tc.get("seed", 0)),
                                        progress=lambda s: print(f"train {self.name}: {s}", flush=True))

        def progress(d):
            fields = " ".join(f"{k} {v:.4g}" for k, v in d.items() if isinstance(v, float))
            print(f"train {self.name}: epoch {d['epoch']}/{d['epochs']} {fields}", flush=True)

        hist = ms.fit_networks(model, data, epochs=p["epochs"], batch_size=int(tc.get("batch_size", 256)),
                               lr=float(tc.get("lr", 1e-3)), device=device, seed=int(tc.get("seed", 0)),
                               max_minutes=p["max_minutes"], progress=progress)
        model.to("cpu").eval()
        train_meta = {"epochs": hist["epochs"], "n_train": tc["n_train"], "snr": tc["snr"],
                      "previous_version": previous, "seconds": round(time.time() - start, 1), "device": device,
                      "mlp_val": hist["mlp_val"][-1], "hybrid_val": hist["hybrid_val"][-1]}
        version = checkpoint.save(self.model_file.path, model, self.name, model.config, meta={"train": train_meta})
        print(f"train {self.name}: saved version {version} in {train_meta['seconds']} s", flush=True)
        result = {"model": self.name, "version": version, **train_meta}
        print("train result " + json.dumps(result, default=str), flush=True)
        return result


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
            options=dict(INFER_OPTIONS), infer_type=InferType.OTHERS,
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
