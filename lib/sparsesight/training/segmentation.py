"""Supervised training of the segmentation models (any of them, our own or a MONAI baseline).

One loop serves the MONAI Label train task, the demo and the benchmarks, so that every model gets the same
budget. It runs on the CPU or the GPU; under `torchrun` (torch.distributed initialised) it wraps the model in
DistributedDataParallel and shards the cases with a DistributedSampler, with no other change (training/loop.py).
"""
from __future__ import annotations

from typing import Callable

import torch
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss

from ..errors import InvalidInput
from ..options import check_known
from ..transforms import train_transforms
from .loop import Objective, check_epochs, ddp, fit, sampler


def default_train_config() -> dict:
    """Defaults that train the sample-data phantoms to a useful model on 2 CPU cores in minutes."""
    return {"patch_size": [64, 64, 64], "samples_per_image": 2, "batch_size": 2, "lr": 2e-3, "grad_clip": 1.0,
            "optimizer": "adam", "weight_decay": 1e-5, "iterations_per_epoch": None, "seed": 0, "num_workers": 0}


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def train(model, items: list[dict], *, epochs: int, device="cpu", config: dict | None = None,
          progress: Callable[[dict], None] | None = None, max_minutes: float | None = None,
          show_progress: bool = True) -> dict:
    """Train `model` in place on `items` = [{"image": path, "label": path}] with DiceCE loss and Adam, or the
    model's own `loss(net, x, y)` and `train_defaults()` (e.g. SUM: soft IoU + reconstruction, AdamW).

    An epoch visits every case once and draws `samples_per_image` patches of `patch_size` per case
    (2:1 tumour-centred : random). `progress(dict)` is called after each epoch with
    {"epoch", "epochs", "loss", "seconds"}. Stops early after `max_minutes`. Returns the statistics.
    `config` keys other than default_train_config()'s are refused (InvalidInput naming the known ones).
    """
    if not items:
        raise InvalidInput("no labelled images to train on: save at least one final label first")
    check_epochs(epochs)
    cfg = default_train_config()
    cfg.update(getattr(model, "train_defaults", dict)())  # a model's own optimiser settings (SUM: AdamW)
    check_known(config or {}, cfg, "train_config keys")
    cfg.update(config or {})
    if cfg["optimizer"] not in OPTIMIZERS:
        raise InvalidInput(f"unknown optimizer {cfg['optimizer']!r}; choose from {sorted(OPTIMIZERS)}")
    torch.manual_seed(cfg["seed"])
    device = torch.device(device)
    transforms = train_transforms(cfg["patch_size"], cfg["samples_per_image"])
    transforms.set_random_state(seed=cfg["seed"])
    ds = CacheDataset(items, transform=transforms, progress=False, num_workers=0)
    shards = sampler(ds)
    loader = DataLoader(ds, batch_size=cfg["batch_size"], shuffle=shards is None, sampler=shards,
                        num_workers=cfg["num_workers"])
    model.to(device).train()
    net = ddp(model)
    # a model with its own objective (SUM's eq. 13) provides loss(net, x, y); the others get DiceCE
    model_loss = getattr(model, "loss", None)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def batches(epoch: int):
        if shards is not None:
            shards.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if cfg["iterations_per_epoch"] and i >= cfg["iterations_per_epoch"]:
                break
            yield batch["image"].to(device), batch["label"].to(device)

    def loss(batch):
        x, y = batch
        return model_loss(net, x, y) if model_loss is not None else dice_ce(net(x), y)

    opt = OPTIMIZERS[cfg["optimizer"]](model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    # unrolled sparse coding diverges if one update makes ||D|| too large for the step sizes mu: clip
    objective = Objective(model, opt, batches, loss, grad_clip=cfg["grad_clip"],
                          scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs))
    return fit([objective], epochs, progress=progress, max_minutes=max_minutes, show_progress=show_progress,
               stats={"epochs": 0, "loss": [], "seconds": 0.0, "cases": len(items), "config": cfg})
