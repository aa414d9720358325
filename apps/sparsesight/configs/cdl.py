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

import json
import os
import time
from typing import Any, Dict

import numpy as np
from lib.http_errors import BAD_REQUEST, CONFLICT, RequestRunner, bad_request, http_errors, refuse
from lib.infers.sparsesight_infer import SparseSightInfer
from lib.model_config import ModelConfig
from lib.model_file import pick_device
from lib.trainers.sparsesight_train import SparseSightTrain, train_params
from monailabel.interfaces.tasks.infer_v2 import InferType

from sparsesight import checkpoint, models, reconstruct
from sparsesight.data import io as sio
from sparsesight.data import lfmri
from sparsesight.errors import InvalidInput
from sparsesight.models import cdl


Runner = RequestRunner(reconstruct)  # its InvalidInput is about the request: 400


def reference_slices(paths, channel) -> np.ndarray:
    """Axial brain slices (N, H, W) of the chosen channel of every readable image, each volume scaled to max 1,
    zero-padded (centred) to the largest in-plane size."""
    c = lfmri.channel_index(channel)
    slices = []
    for path in paths:
        try:
            image, _ = sio.load_image(path, channels=4)
        except InvalidInput as e:
            print(f"skipping {os.path.basename(path)}: {e}", flush=True)
            continue
        vol = image[c] / max(float(image[c].max()), 1e-6)
        slices += [vol[..., z] for z in lfmri.brain_slices(vol)]
    if not slices:
        raise InvalidInput("none of the datastore's images has a usable brain slice (see the lines above)")
    h, w = max(s.shape[0] for s in slices), max(s.shape[1] for s in slices)
    out = np.zeros((len(slices), h, w), np.float32)
    for i, s in enumerate(slices):
        r0, c0 = (h - s.shape[0]) // 2, (w - s.shape[1]) // 2
        out[i, r0:r0 + s.shape[0], c0:c0 + s.shape[1]] = s
    return out


class CDLTrain(SparseSightTrain):
    """Trains the Lambda estimator on the datastore's images as references (no labels needed)."""

    def config(self):
        return {"epochs": self.default_epochs, "max_minutes": None, "channel": "T2",
                "train_config": {k: v for k, v in cdl.default_train_config().items() if k != "dictionaries"}}

    def check(self, request: Dict[str, Any], datastore) -> Dict[str, Any]:
        p = train_params(request, self.default_epochs)
        tc = dict(p["train_config"] or {})
        unknown = sorted(set(tc) - set(cdl.default_train_config()))
        if unknown:
            raise refuse(BAD_REQUEST, f"unknown train_config keys {unknown}; known: {sorted(cdl.default_train_config())}")
        for key in ("steps_per_epoch", "batch_size"):
            if key in tc and (not isinstance(tc[key], int) or not 1 <= tc[key] <= 10_000):
                raise refuse(BAD_REQUEST, f"'{key}' must be a whole number between 1 and 10000")
        with bad_request():
            p["channel"] = lfmri.channel_index(request.get("channel", "T2"))
            if "sigma" in tc:
                for s in tc["sigma"]:
                    lfmri.check_sigma(s)
        p["train_config"] = tc
        if not datastore.list_images():
            raise refuse(CONFLICT, f"cannot train {self.name}: the datastore has no image; upload one with "
                                   f"PUT /datastore/image?image=ID")
        return p

    def __call__(self, request, datastore):
        with http_errors():
            p = self.check(request, datastore)
            with bad_request():
                refs = reference_slices([datastore.get_image_uri(i) for i in datastore.list_images()], p["channel"])
        device = pick_device(request.get("device"), self.device)
        model, meta = self.model_file.load("cpu")
        if model is None:
            config, previous = dict(self.model_config), None
            model = models.build(self.name, config)
        else:  # incremental: continue from the served weights with their hyperparameters
            config, previous = meta["config"], meta["version"]
        print(f"train {self.name}: {len(refs)} reference slices {refs.shape[1:]} of {len(datastore.list_images())} "
              f"image(s), variant {config['variant']}, {p['epochs']} epoch(s), device {device}, "
              f"starting from {previous or 'fresh weights'}", flush=True)
        start = time.time()

        def progress(d):
            print(f"train {self.name}: epoch {d['epoch']}/{d['epochs']} loss {d['loss']:.4g} "
                  f"seconds {d['seconds']:.1f}", flush=True)

        with http_errors(), bad_request():
            stats = cdl.train(model, refs, epochs=p["epochs"], device=device, config=p["train_config"],
                              progress=progress, max_minutes=p["max_minutes"], show_progress=False)
        model.to("cpu").eval()
        train_meta = {"epochs": stats["epochs"], "slices": len(refs), "previous_version": previous,
                      "seconds": round(time.time() - start, 1), "device": device,
                      "final_loss": stats["loss"][-1], "dictionaries": stats["dictionaries"]}
        version = checkpoint.save(self.model_file.path, model, self.name, config, meta={"train": train_meta})
        print(f"train {self.name}: saved version {version} (was {previous or 'none'}) in {train_meta['seconds']} s",
              flush=True)
        result = {"model": self.name, "version": version, **train_meta}
        print("train result " + json.dumps(result, default=str), flush=True)
        return result


class CDL(ModelConfig):
    segmentation = False

    def infer(self):
        return SparseSightInfer(
            self.name, self.model_file, self.labels, device=self.device, runner=Runner,
            options=dict(reconstruct.OPTIONS), infer_type=InferType.OTHERS,
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
