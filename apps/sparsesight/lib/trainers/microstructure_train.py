"""Train task of `microstructure`: the fully-learned MLP and the hybrid's networks on voxels simulated for a
protocol (a datastore image's gradient table, `bvals`/`bvecs`, the current checkpoint's, or HCP MGH's); no labels
are needed. Continues from the checkpoint when its protocol, grid and layer widths are the ones asked for."""
from __future__ import annotations

import json
from typing import Any, Dict

import torch

from sparsesight import models
from sparsesight.data import diffusion as dif
from sparsesight.runners import microstructure as runner
from sparsesight.training import microstructure as ms_training

from ..http_errors import BAD_REQUEST, NOT_FOUND, bad_request, check_id, http_errors, refuse
from .sparsesight_train import SparseSightTrain, single_process_params, whole_number

HIDDEN = ("mlp_hidden", "split_hidden", "joint_hidden")
TIMING = ("big_delta", "small_delta", "shells", "b_unit", "timing_unit")  # request or train_config keys


class MicrostructureTrain(SparseSightTrain):
    DATA_LIMIT = ("trained on voxels simulated with the model's own forward model for one protocol (the card's "
                  "config); its validation error on simulated voxels is in the training record; other protocols are "
                  "refused")
    def config(self):
        return {"epochs": self.default_epochs, "max_minutes": None, "image": None,
                "train_config": runner.default_train_config()}

    def _protocol(self, request, datastore, tc: dict):
        """The protocol to train for: a datastore image's (its sidecars; timing from its JSON sidecar or the
        request), the request's (`bvals`+`bvecs` or `grad`, with `big_delta`/`small_delta`), else the current
        checkpoint's or HCP MGH's. Timing may sit in the request or in `train_config`; it is never defaulted."""
        opts = {k: request.get(k, tc.get(k)) for k in TIMING}
        given = {k: v for k, v in opts.items() if v is not None}
        image = request.get("image")
        if image:
            check_id(image)
            if image not in datastore.list_images():
                raise refuse(NOT_FOUND, f"image {image!r} is not in the datastore")
            with bad_request():
                return runner.gradient_table(datastore.get_image_uri(image), **opts)
        if any(request.get(k) is not None for k in ("bvals", "bvecs", "grad")):
            with bad_request():
                return runner.gradient_table(None, request.get("bvals"), request.get("bvecs"), grad=request.get("grad"),
                                             **opts)
        if given:
            raise refuse(BAD_REQUEST, f"{sorted(given)} given without a gradient table: give 'image' (a datastore "
                                      f"DWI) or 'bvals'/'bvecs' (or 'grad') with them")
        meta = self.model_file.meta()
        if meta:
            with bad_request():
                return dif.Protocol.from_config(meta["config"]["protocol"])
        return dif.hcp_mgh_protocol()

    def check(self, request: Dict[str, Any], datastore) -> Dict[str, Any]:
        p = single_process_params(request, self.default_epochs, self.name)
        tc = dict(p["train_config"] or {})
        unknown = sorted(set(tc) - set(runner.TRAIN_CONFIG_KEYS))
        if unknown:
            raise refuse(BAD_REQUEST, f"unknown train_config keys {unknown}; known: {sorted(runner.TRAIN_CONFIG_KEYS)}")
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
        with bad_request():  # the dictionary's extra-axonal law: one of dif.EXTRA_AXONAL_LAWS
            tc["extra_axonal"] = dif.ExtraAxonalLaw(tc.get("extra_axonal", runner.DEFAULT_EXTRA_AXONAL)).name
        for key in HIDDEN:
            if key in tc and (not isinstance(tc[key], list) or not tc[key]
                              or not all(isinstance(h, int) and 1 <= h <= 8192 for h in tc[key])):
                raise refuse(BAD_REQUEST, f"'{key}' must be a list of layer widths, e.g. [256, 128]")
        p["train_config"] = tc
        p["protocol"] = self._protocol(request, datastore, tc)
        return p

    def prepare(self, request, datastore):
        with http_errors():
            p = self.check(request, datastore)
        tc = p["train_config"]
        # small MLPs and per-voxel NNLS on a CPU: one thread by default (on the shared 2-core test machine two
        # threads made training ~25x slower through OpenMP oversubscription); this is the training process only
        torch.set_num_threads(max(1, int(tc.get("threads", 1))))
        p["grid"] = dif.paper_grid() if tc["grid"] == "paper" else dif.small_grid(tc["grid"]["n_r"], tc["grid"]["n_f"])
        return p, None  # the voxels are simulated in `fit`, for the model's protocol

    def starting_model(self, p, device):
        """The checkpoint when it was trained for this protocol, grid and layer widths; else fresh weights."""
        tc, protocol = p["train_config"], p["protocol"]
        config = {**models.default_config(self.name), "protocol": protocol.to_config(), "grid": p["grid"].to_config(),
                  "extra_axonal": tc["extra_axonal"], **{k: tc[k] for k in HIDDEN if k in tc}}
        model, meta = self.model_file.load("cpu", fresh_if_broken=True)
        # a checkpoint made before the extra-axonal law was a choice has the tortuosity law
        saved = {"extra_axonal": "tortuosity", **meta["config"]} if meta is not None else {}
        same = meta is not None and all(
            json.dumps(saved.get(k), sort_keys=True) == json.dumps(config[k], sort_keys=True) for k in config)
        if not same:
            model = models.build(self.name, config)
        return model, model.config, meta["version"] if same else None

    def describe(self, p, data, config) -> str:
        protocol, grid, tc = p["protocol"], p["grid"], p["train_config"]
        timing = ", ".join(f"b {r['b']:g}: Δ/δ {r['big_delta_ms']:g}/{r['small_delta_ms']:g} ms"
                           for r in protocol.shell_table() if r["b"] > dif.B0_THRESHOLD)
        return (f"protocol {protocol.name} {protocol.hash} (M = {protocol.m}, shells {protocol.shells().tolist()}; "
                f"{timing}), grid "
                f"{len(grid.radii_um)} x {len(grid.fractions)}, extra-axonal law {tc['extra_axonal']}, "
                f"{tc['n_train']} simulated voxels at SNR {tc['snr']}")

    def fit(self, model, data, p, device) -> Dict[str, Any]:
        tc = p["train_config"]
        data = ms_training.simulate_training_set(model, tc["n_train"], tc["snr"], seed=int(tc.get("seed", 0)),
                                                 progress=self.say)
        hist = ms_training.fit_networks(model, data, epochs=p["epochs"], batch_size=int(tc.get("batch_size", 256)),
                                        lr=float(tc.get("lr", 1e-3)), device=device, seed=int(tc.get("seed", 0)),
                                        max_minutes=p["max_minutes"], progress=self.progress)
        model.to("cpu")
        protocol = model.protocol
        return {"epochs": hist["epochs"], "n_train": tc["n_train"], "snr": tc["snr"],
                "mlp_val": hist["mlp_val"][-1], "hybrid_val": hist["hybrid_val"][-1],
                # the model card: the protocol the networks fit (its full table is the config's "protocol")
                "protocol_hash": protocol.hash, "protocol_shells": protocol.shell_table(),
                "radius": dif.radius_sensitivity(protocol)}
