"""Train task for any SparseSight model on the datastore's final labels.

MONAI Label runs it in a child process (`python -m monailabel.interfaces.utils.app -m train`) and shows that
process' last stdout lines in GET /train/, so progress is printed one line per epoch. Training continues from
the current checkpoint when there is one; the new checkpoint is written atomically by
`sparsesight.checkpoint.save` and the server's infer task picks it up on its next call (see model_file.py).

Request keys: `epochs` (default from the app config), `max_minutes` (stop after the epoch that passes it; one
process only), `device`, `train_config` (dict handed to sparsesight.training.train), `val_split` (share of the
labelled images held out for validation, early stopping on the best epoch and the card's Dice; default
VAL_SPLIT, rounded down: fewer than 5 labelled images hold out none), `processes` (N > 1: N data-parallel CPU
processes) or MONAI Label's `multi_gpu` + `gpus` ("all" or "0,1": one process per GPU).

The new weights carry a model card (model_card.retrained: data, recipe, the run it continued from, held-out Dice,
limits) inside the checkpoint, so card and weights cannot disagree; <name>.card.json / .card.md beside it are
copies for people and programs. GET /info shows its summary.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any, Dict, Tuple

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from sparsesight import checkpoint, model_card, models, training
from sparsesight.data import io as sio
from sparsesight.errors import InvalidInput
from sparsesight.training.distributed import launch
from sparsesight.training.evaluation import evaluate
from sparsesight.training.segmentation import train_worker

from ..http_errors import BAD_REQUEST, CONFLICT, bad_request, flag, refuse
from ..model_file import ModelFile, check_device, pick_device

logger = logging.getLogger(__name__)

MAX_EPOCHS = 10_000
CHANNELS = 4
VAL_SPLIT = 0.2  # MONAI Label's convention
MAX_VAL_SPLIT = 0.5


def whole_number(value, what: str, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi] (HTTP 400 naming `what` when it is not a whole number or out of range)."""
    try:
        v = int(value)
        if v != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise refuse(BAD_REQUEST, f"'{what}' must be a whole number, got {value!r}") from None
    if not lo <= v <= hi:
        raise refuse(BAD_REQUEST, f"'{what}' must be between {lo} and {hi}, got {v}")
    return v


def train_params(request: Dict[str, Any], default_epochs: int) -> Dict[str, Any]:
    """Validated `epochs`, `max_minutes` and `train_config` of a train request (HTTP 400 with the reason)."""
    out: Dict[str, Any] = {}
    out["epochs"] = whole_number(request.get("epochs", request.get("max_epochs", default_epochs)), "epochs",
                                 1, MAX_EPOCHS)
    minutes = request.get("max_minutes")
    if minutes is not None:
        try:
            minutes_f = float(minutes)
        except (TypeError, ValueError):
            raise refuse(BAD_REQUEST, f"'max_minutes' must be a number of minutes, got {minutes!r}") from None
        if not minutes_f > 0:
            raise refuse(BAD_REQUEST, f"'max_minutes' must be positive, got {minutes_f}")
        out["max_minutes"] = minutes_f
    else:
        out["max_minutes"] = None
    config = request.get("train_config")
    if config is not None and not isinstance(config, dict):
        raise refuse(BAD_REQUEST, "'train_config' must be a JSON object")
    out["train_config"] = config
    out["val_split"] = fraction(request.get("val_split", VAL_SPLIT), "val_split", MAX_VAL_SPLIT)
    if request.get("device") not in (None, ""):  # refused here, not in the training process after a 200
        with bad_request():
            check_device(request["device"])
    out["processes"], out["gpus"] = parallelism(request)
    return out


def fraction(value, what: str, hi: float) -> float:
    """`value` as a float in [0, hi] (HTTP 400 naming `what` otherwise)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise refuse(BAD_REQUEST, f"'{what}' must be a number between 0 and {hi}, got {value!r}") from None
    if not 0 <= v <= hi:
        raise refuse(BAD_REQUEST, f"'{what}' must be between 0 and {hi}, got {v}")
    return v


def training_seed(p: Dict[str, Any]) -> int:
    """The request's train_config seed, else the recipe's default: it draws the held-out images and the card
    records it."""
    return int((p.get("train_config") or {}).get("seed", training.default_train_config()["seed"]))


def held_out(items: list, share: float, seed: int) -> tuple[list, list]:
    """(training, held-out) items: floor(share * n) images drawn with `seed`, the same for the same datastore."""
    ordered = sorted(items, key=lambda it: str(it["image"]))
    chosen = set(random.Random(seed).sample(range(len(ordered)), int(share * len(ordered))))
    return ([it for i, it in enumerate(ordered) if i not in chosen], [it for i, it in enumerate(ordered) if i in chosen])


def image_id(item: dict) -> str:
    """The datastore id of a datalist item (its image file's name without extension; never a server path)."""
    return os.path.basename(str(item["image"])).split(".")[0]


def single_process_params(request: Dict[str, Any], default_epochs: int, name: str) -> Dict[str, Any]:
    """train_params of a model that trains in one process: 'processes' > 1 or 'multi_gpu' is a 400."""
    p = train_params(request, default_epochs)
    if p["processes"] > 1:
        raise refuse(BAD_REQUEST, f"{name} trains in one process; 'processes' and 'multi_gpu' are for the "
                                  f"segmentation models")
    return p


def parallelism(request: Dict[str, Any]) -> Tuple[int, Any]:
    """(processes, GPU indices or None) of a train request: MONAI Label's {"multi_gpu": true, "gpus": "all" or
    "0,1"} -> one NCCL process per GPU; {"processes": N} -> N gloo processes on the CPU (DDP, distributed.py)."""
    import torch

    if flag(request.get("multi_gpu", False)):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise refuse(BAD_REQUEST, "'multi_gpu' needs GPUs and this server has none; use 'processes' for "
                                      "several CPU processes")
        gpus = request.get("gpus", "all")
        ids = list(range(n)) if str(gpus).strip() in ("", "all") else [whole_number(g, "gpus", 0, n - 1)
                                                                        for g in str(gpus).split(",")]
        return len(ids), ids
    procs = whole_number(request.get("processes", 1), "processes", 1, max(1, os.cpu_count() or 1))
    return procs, None


def require_final_labels(name: str, datastore: Datastore) -> list:
    items = datastore.datalist()
    if not items:
        raise refuse(
            CONFLICT,
            f"cannot train {name}: no image in the datastore has a final label yet; save one with "
            f"PUT /datastore/label?image=ID&tag=final",
        )
    return items


class SparseSightTrain(TrainTask):
    """The train task every model uses: validate, gather the data, continue from the checkpoint (or build a fresh
    model), train with the library, save atomically, report. A model with other data (cdl, microstructure)
    overrides `check`, `prepare`, `starting_model`, `describe` and `fit`; the default trains a segmentation
    model on the datastore's final labels (sparsesight.training.train)."""

    #: the card's first known limit: what the training data was
    DATA_LIMIT = ("retrained on the annotators' final labels in the datastore; its Dice is measured on labelled images "
                  "held out from this training (val_split), not on the shipped card's phantom split")

    def __init__(self, name: str, model_file: ModelFile, model_config: dict, description: str,
                 default_epochs: int = 2, device=None):
        """model_config: hyperparameters of a fresh model (sparsesight.models.build), used without a checkpoint."""
        super().__init__(description)
        self.name = name
        self.model_file = model_file
        self.model_config = model_config
        self.default_epochs = default_epochs
        self.device = device

    def config(self):
        return {"epochs": self.default_epochs, "max_minutes": None}

    def stats(self):
        meta = self.model_file.meta()
        if not meta:
            return {"version": None}
        return {"version": meta.get("version"), "created": meta.get("created"), "train": meta.get("train", {})}

    def say(self, line: str) -> None:
        """One line of the training process' stdout: MONAI Label shows the last ones in GET /train/."""
        print(f"train {self.name}: {line}", flush=True)

    def progress(self, d: dict) -> None:
        """An epoch's line: "epoch 3/10 loss 0.1234 seconds 12.5" (any float or other field of `d`)."""
        d = dict(d)
        head = f"epoch {d.pop('epoch', '?')}/{d.pop('epochs', '?')}"
        fields = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())
        self.say(f"{head} {fields}")

    # ---------------------------------------------------------------- what a model overrides
    def check(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        """Everything that can be refused before a training process is started (the server's pre-flight)."""
        params = train_params(request, self.default_epochs)
        with bad_request():  # unknown keys, optimizer, augment, range_noise: a 400 before any process starts
            training.check_train_config(params["train_config"] or {})
        require_final_labels(self.name, datastore)
        return params

    def prepare(self, request, datastore: Datastore) -> Tuple[Dict[str, Any], Any]:
        """The checked parameters and the training data (here: the labelled images that load, less the held-out
        ones in p["val_items"])."""
        p = self.check(request, datastore)
        data, p["val_items"] = held_out(self.usable(datastore.datalist()), p["val_split"], training_seed(p))
        return p, data

    def starting_model(self, p: Dict[str, Any], device: str):
        """(model, its config, the version it continues from or None): the served checkpoint (the trained one,
        else the shipped weights), else fresh weights. The result is always written to model_dir."""
        model, meta = self.model_file.load(device, fresh_if_broken=True)
        if model is None:
            return models.build(self.name, dict(self.model_config)).to(device), dict(self.model_config), None
        if meta.get("source") == "shipped":
            self.say(f"continuing from the shipped weights {meta['version']} (model card: {self.name}.card.md)")
        return model, meta["config"], meta["version"]

    def describe(self, p: Dict[str, Any], data, config: dict) -> str:
        val = p.get("val_items") or []
        return (f"{len(data)} labelled image(s)" + (f" ({', '.join(map(image_id, data[:20]))}"
                                                    f"{', ...' if len(data) > 20 else ''})" if data else "")
                + (f", {len(val)} held out for validation" if val else ""))

    def evaluate(self, model, p: Dict[str, Any]) -> Dict[str, Any]:
        """The card's evaluation: Dice per region on the held-out images, as served (whole image)."""
        val = p.get("val_items")
        if val is None:
            return {"data": "this model's training has no held-out evaluation", "dice": {}}
        if not val:
            return {"data": f"no labelled image held out (val_split {p['val_split']} of the labelled images "
                            f"rounds down to 0; hold out one with 5 or more)", "dice": {}}
        self.say(f"evaluating on {len(val)} held-out image(s)")
        dice, per_case = evaluate(model, [{**it, "id": image_id(it)} for it in val])
        return {"data": f"{len(val)} labelled datastore image(s) held out from this training: "
                        f"{', '.join(image_id(it) for it in val)}", "dice": {"held-out (datastore)": dice},
                "per_case": per_case}

    def fit(self, model, data, p: Dict[str, Any], device: str) -> Dict[str, Any]:
        """Train `model` in place on `data`; returns the fields of the checkpoint's train metadata."""
        if p.get("processes", 1) > 1:  # data-parallel in several processes (DDP, training/distributed.py)
            self.say(f"{p['processes']} training processes ({'GPUs ' + str(p['gpus']) if p['gpus'] else 'CPU, gloo'})")
            out = launch(train_worker, p["processes"], self.name, dict(model.config), model.state_dict(), data,
                         p["epochs"], p["train_config"], p.get("val_items") or None, p["gpus"])
            model.load_state_dict(out["state_dict"])
            stats = out["stats"]
        else:
            stats = training.train(model, data, epochs=p["epochs"], device=device, config=p["train_config"],
                                   progress=self.progress, max_minutes=p["max_minutes"], show_progress=False,
                                   val_items=p.get("val_items") or None)
        return {"epochs": p["epochs"], "images": len(data), "spacing_mm": stats.get("spacing_mm"),
                "final_loss": stats["loss"][-1] if stats.get("loss") else None,
                **{k: v for k, v in stats.items() if k != "seconds" and isinstance(v, (int, float, str, bool))}}

    def card(self, model, config: dict, p: Dict[str, Any], data, train_meta: dict, previous) -> dict:
        """The new weights' model card: what they were trained on and how, what they score on held-out images."""
        meta = self.model_file.meta() if previous else None
        earlier = meta.get("card_record") if meta and meta.get("version") == previous else None
        request = {k: p.get(k) for k in ("epochs", "max_minutes", "val_split", "processes", "train_config")
                   if p.get(k) is not None}
        record = {**train_meta, "command": f"POST /train/{self.name} {json.dumps(request, sort_keys=True)}",
                  "commit": model_card.commit(), "data": self.describe(p, data, config),
                  "seed": training_seed(p)}
        return model_card.retrained(self.name, model, config, record, self.evaluate(model, p), earlier,
                                    self.DATA_LIMIT)

    def usable(self, items: list) -> list:
        """The pairs that load cleanly; files put into the datastore folder by hand were never checked."""
        good = []
        for item in items:
            try:
                image, _ = sio.load_image(item["image"], channels=CHANNELS)
                sio.load_label(item["label"], spatial_shape=image.shape[1:])
                good.append(item)
            except InvalidInput as e:
                self.say(f"skipping {os.path.basename(item['image'])}: {e}")
        if not good:
            raise InvalidInput("none of the labelled images can be used for training (see the lines above)")
        return good

    # ---------------------------------------------------------------- the task
    def __call__(self, request, datastore: Datastore):
        p, data = self.prepare(request, datastore)
        device = pick_device(request.get("device"), self.device)
        model, config, previous = self.starting_model(p, device)
        self.say(f"{self.describe(p, data, config)}, {p['epochs']} epoch(s), device {device}, "
                 f"starting from {previous or 'fresh weights'}")
        start = time.time()
        fields = self.fit(model, data, p, device)
        model.eval()
        train_meta = {**fields, "previous_version": previous, "seconds": round(time.time() - start, 1),
                      "device": device}
        card = self.card(model, config, p, data, train_meta, previous)
        version = checkpoint.save(self.model_file.path, model, self.name, config,
                                  meta={"train": train_meta, "card": card})
        try:  # copies for people and programs; the checkpoint holds the card itself
            model_card.write(self.model_file.path, {**card, "version": version})
        except (OSError, ValueError) as e:
            logger.warning(f"model {self.name}: card files not written: {e}")
        self.say(f"saved version {version} (was {previous or 'none'}) in {train_meta['seconds']} s; model card "
                 f"{self.name}.card.md")
        result = {"model": self.name, "version": version, **train_meta}
        print("train result " + json.dumps(result, default=str), flush=True)
        return result
