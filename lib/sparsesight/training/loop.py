"""The one training skeleton every model configures: epochs of mini-batch steps per objective, gradient clipping,
an optional scheduler and validation, progress, a per-epoch hook (checkpoints) and a time budget.

A model's training (training/segmentation.py, cdl.py, microstructure.py) builds its data and `Objective`s and
calls `fit`. Data-parallel training needs no other change: `ddp` wraps a module in DistributedDataParallel and
`sampler` shards a dataset when torch.distributed is initialised (`torchrun`); otherwise both are no-ops.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..errors import InvalidInput
from .distributed import mean_over_processes, rank

logger = logging.getLogger(__name__)


def distributed() -> bool:
    """True under `torchrun` (torch.distributed initialised)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def ddp(model: torch.nn.Module) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel when training is distributed, else `model` itself."""
    return torch.nn.parallel.DistributedDataParallel(model) if distributed() else model


def sampler(dataset) -> DistributedSampler | None:
    """A shuffling DistributedSampler of `dataset` when training is distributed, else None (shuffle locally)."""
    return DistributedSampler(dataset, shuffle=True) if distributed() else None


def check_epochs(epochs: int) -> None:
    if epochs < 1:
        raise InvalidInput(f"epochs must be at least 1; got {epochs}")


@dataclass
class Objective:
    """One network's training: `loss(batch)` over the batches of `batches(epoch)`, stepped by `optimizer`.

    name: prefix of its statistics ("mlp" -> "mlp_loss", "mlp_val"); None -> "loss", "val".
    grad_clip: max gradient norm of `module`'s parameters (None: no clipping).
    scheduler: stepped once after every epoch.
    validate: a number measured after every epoch (the module in eval mode, no gradients).
    """

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: Callable[[int], Iterable[Any]]
    loss: Callable[[Any], torch.Tensor]
    name: str | None = None
    grad_clip: float | None = None
    scheduler: Any = None
    validate: Callable[[], float] | None = None

    def key(self, what: str) -> str:
        return what if self.name is None else f"{self.name}_{what}"


def fit(objectives: list[Objective], epochs: int, *, progress: Callable[[dict], None] | None = None,
        max_minutes: float | None = None, on_epoch_end: Callable[[dict], None] | None = None,
        show_progress: bool = False, desc: str = "train", digits: int = 4, stats: dict | None = None) -> dict:
    """Train every objective in turn for each of `epochs` epochs; returns `stats` with "epochs", "seconds" and
    per objective the lists "<name>_loss" (epoch means) and "<name>_val" (when it validates).

    After each epoch: `progress({"epoch", "epochs", <losses and validations of this epoch>, "seconds", "eta_s"})`,
    then `on_epoch_end(stats)` (e.g. write a checkpoint, or set stats["stop"] to a reason to stop early); training
    also stops after the epoch that passes `max_minutes`.
    """
    check_epochs(epochs)
    stats = {"epochs": 0, "seconds": 0.0, **(stats or {})}
    for o in objectives:
        stats.setdefault(o.key("loss"), [])
        if o.validate is not None:
            stats.setdefault(o.key("val"), [])
    t0 = time.time()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not show_progress)
    for epoch in bar:
        record: dict[str, Any] = {"epoch": epoch + 1, "epochs": epochs}
        for o in objectives:
            o.module.train()
            losses = []
            for batch in o.batches(epoch):
                loss = o.loss(batch)
                o.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if o.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(o.module.parameters(), o.grad_clip)
                o.optimizer.step()
                losses.append(float(loss.detach()))
            if o.scheduler is not None:
                o.scheduler.step()
            stats[o.key("loss")].append(mean_over_processes(float(np.mean(losses))))  # DDP: over the ranks
            record[o.key("loss")] = stats[o.key("loss")][-1]
            if o.validate is not None:
                o.module.eval()
                with torch.no_grad():
                    stats[o.key("val")].append(float(o.validate()))
                record[o.key("val")] = stats[o.key("val")][-1]
        stats["epochs"] = epoch + 1
        stats["seconds"] = record["seconds"] = time.time() - t0
        record["eta_s"] = stats["seconds"] / (epoch + 1) * (epochs - epoch - 1)  # at the mean epoch time so far
        bar.set_postfix({k: f"{v:.{digits}f}" for k, v in record.items() if k.endswith("loss")})
        if progress is not None and rank() == 0:
            progress(record)
        if on_epoch_end is not None:
            on_epoch_end(stats)  # may set stats["stop"] (a reason) to end training early
        if max_minutes is not None and stats["seconds"] > 60 * max_minutes:
            break
        if stats.get("stop"):
            logger.info("training stopped after epoch %d: %s", epoch + 1, stats["stop"])
            break
    for o in objectives:
        o.module.eval()
    return stats
