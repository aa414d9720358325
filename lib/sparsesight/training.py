"""Supervised training of the segmentation models (any of them, our own or a MONAI baseline).

One loop serves the MONAI Label train task, the demo and the benchmarks, so that every model gets the same
budget. It runs on the CPU or the GPU; under `torchrun` (torch.distributed initialised) it wraps the model in
DistributedDataParallel and shards the cases with a DistributedSampler, with no other change.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .errors import InvalidInput
from .transforms import train_transforms


def default_train_config() -> dict:
    """Defaults that train the sample-data phantoms to a useful model on 2 CPU cores in minutes."""
    return {"patch_size": [64, 64, 64], "samples_per_image": 2, "batch_size": 2, "lr": 2e-3, "grad_clip": 1.0,
            "optimizer": "adam", "weight_decay": 1e-5, "iterations_per_epoch": None, "seed": 0, "num_workers": 0}


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def train(model, items: list[dict], *, epochs: int, device="cpu", config: dict | None = None,
          progress: Callable[[dict], None] | None = None, max_minutes: float | None = None,
          show_progress: bool = True) -> dict:
    """Train `model` in place on `items` = [{"image": path, "label": path}] with DiceCE loss and Adam, or the
    model's own `loss(net, x, y)` and `train_defaults()` (e.g. SUM: soft IoU + reconstruction, AdamW).

    An epoch visits every case once and draws `samples_per_image` patches of `patch_size` per case
    (2:1 tumour-centred : random). `progress(dict)` is called after each epoch with
    {"epoch", "epochs", "loss", "seconds"}. Stops early after `max_minutes`. Returns the statistics.
    """
    if not items:
        raise InvalidInput("no labelled images to train on: save at least one final label first")
    if epochs < 1:
        raise InvalidInput(f"epochs must be at least 1; got {epochs}")
    cfg = default_train_config()
    cfg.update(getattr(model, "train_defaults", dict)())  # a model's own optimiser settings (SUM: AdamW)
    cfg.update(config or {})
    torch.manual_seed(cfg["seed"])
    device = torch.device(device)
    transforms = train_transforms(cfg["patch_size"], cfg["samples_per_image"])
    transforms.set_random_state(seed=cfg["seed"])
    ds = CacheDataset(items, transform=transforms, progress=False, num_workers=0)
    sampler = DistributedSampler(ds, shuffle=True) if _distributed() else None
    loader = DataLoader(ds, batch_size=cfg["batch_size"], shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg["num_workers"])
    model.to(device).train()
    net = torch.nn.parallel.DistributedDataParallel(model) if _distributed() else model
    # a model with its own objective (SUM's eq. 13) provides loss(net, x, y); the others get DiceCE
    model_loss = getattr(model, "loss", None)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if cfg.get("optimizer", "adam") not in optimizers:
        raise InvalidInput(f"unknown optimizer {cfg['optimizer']!r}; choose from {sorted(optimizers)}")
    opt = optimizers[cfg.get("optimizer", "adam")](model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    stats = {"epochs": 0, "loss": [], "seconds": 0.0, "cases": len(items), "config": cfg}
    t0 = time.time()
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not show_progress)
    for epoch in bar:
        if sampler is not None:
            sampler.set_epoch(epoch)
        losses = []
        for i, batch in enumerate(loader):
            if cfg["iterations_per_epoch"] and i >= cfg["iterations_per_epoch"]:
                break
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = model_loss(net, x, y) if model_loss is not None else loss_fn(net(x), y)
            loss.backward()
            # unrolled sparse coding diverges if one update makes ||D|| too large for the step sizes mu
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        if end_epoch(stats, losses, epoch, epochs, t0, bar, progress, max_minutes):
            break
    model.eval()
    return stats


def end_epoch(stats: dict, losses: list, epoch: int, epochs: int, t0: float, bar, progress=None,
              max_minutes=None, digits: int = 4) -> bool:
    """Record an epoch's mean loss and elapsed seconds in `stats`, show them on the tqdm `bar` and hand
    {"epoch", "epochs", "loss", "seconds"} to `progress`; True when `max_minutes` has passed (stop training)."""
    stats["loss"].append(float(np.mean(losses)))
    stats["epochs"] = epoch + 1
    stats["seconds"] = time.time() - t0
    bar.set_postfix(loss=f"{stats['loss'][-1]:.{digits}f}")
    if progress is not None:
        progress({"epoch": epoch + 1, "epochs": epochs, "loss": stats["loss"][-1], "seconds": stats["seconds"]})
    return max_minutes is not None and stats["seconds"] > 60 * max_minutes
