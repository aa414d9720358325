"""Train task of `cdl`: the Lambda estimator on the datastore's images as references (reconstruction needs no
labels); k-space is simulated per sample with random acquisitions; continues from the current checkpoint."""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

from sparsesight.data import io as sio
from sparsesight.data import lfmri
from sparsesight.errors import InvalidInput
from sparsesight.training import cdl as cdl_training

from ..http_errors import BAD_REQUEST, CONFLICT, bad_request, http_errors, refuse
from .sparsesight_train import SparseSightTrain, single_process_params


class CDLTrain(SparseSightTrain):
    DATA_LIMIT = ("trained on the datastore's images as references, with k-space simulated per sample (random "
                  "acquisitions); its reconstruction error is in the training record, not on held-out images")

    def config(self):
        return {"epochs": self.default_epochs, "max_minutes": None, "channel": "T2",
                "train_config": {k: v for k, v in cdl_training.default_train_config().items() if k != "dictionaries"}}

    def check(self, request: Dict[str, Any], datastore) -> Dict[str, Any]:
        p = single_process_params(request, self.default_epochs, self.name)
        tc = dict(p["train_config"] or {})
        known = cdl_training.default_train_config()
        unknown = sorted(set(tc) - set(known))
        if unknown:
            raise refuse(BAD_REQUEST, f"unknown train_config keys {unknown}; known: {sorted(known)}")
        for key in ("steps_per_epoch", "batch_size"):
            if key in tc and (not isinstance(tc[key], int) or not 1 <= tc[key] <= 10_000):
                raise refuse(BAD_REQUEST, f"'{key}' must be a whole number between 1 and 10000")
        with bad_request():
            p["channel"] = lfmri.channel_index(request.get("channel", "T2"))
            for s in tc.get("sigma", ()):
                lfmri.check_sigma(s)
        p["train_config"] = tc
        if not datastore.list_images():
            raise refuse(CONFLICT, f"cannot train {self.name}: the datastore has no image; upload one with "
                                   f"PUT /datastore/image?image=ID")
        return p

    def prepare(self, request, datastore):
        with http_errors():
            p = self.check(request, datastore)
            with bad_request():
                images = [datastore.get_image_uri(i) for i in datastore.list_images()]
                refs = self.reference_slices(images, p["channel"])
        p["images"] = len(images)
        return p, refs

    def reference_slices(self, paths, channel) -> np.ndarray:
        """Axial brain slices (N, H, W) of the chosen channel of every readable image, each volume scaled to
        max 1, zero-padded (centred) to the largest in-plane size."""
        c = lfmri.channel_index(channel)
        slices = []
        for path in paths:
            try:
                image, _ = sio.load_image(path, channels=4)
            except InvalidInput as e:
                self.say(f"skipping {os.path.basename(path)}: {e}")
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

    def starting_model(self, p, device):
        return super().starting_model(p, "cpu")

    def describe(self, p, refs, config) -> str:
        return (f"{len(refs)} reference slices {refs.shape[1:]} of {p['images']} image(s), "
                f"variant {config['variant']}")

    def fit(self, model, refs, p, device) -> Dict[str, Any]:
        with http_errors(), bad_request():
            stats = cdl_training.train(model, refs, epochs=p["epochs"], device=device, config=p["train_config"],
                                       progress=self.progress, max_minutes=p["max_minutes"], show_progress=False)
        model.to("cpu")
        return {"epochs": stats["epochs"], "slices": len(refs), "final_loss": stats["loss"][-1],
                "dictionaries": stats["dictionaries"]}
