"""Supervised training of the segmentation models (any of them, our own or a MONAI baseline).

One loop serves the MONAI Label train task, the demo and the benchmarks, so that every model gets the same
budget. It runs on the CPU or the GPU; under `torchrun` (torch.distributed initialised) it wraps the model in
DistributedDataParallel and shards the cases with a DistributedSampler, with no other change (training/loop.py).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss

from ..errors import InvalidInput
from ..models.dictionary import settle_norms
from ..options import check_known
from ..transforms import AUGMENT_LEVELS, train_transforms
from .distributed import rank
from .loop import Objective, check_epochs, ddp, fit, sampler


def default_train_config() -> dict:
    """Defaults that train the sample-data phantoms to a useful model on 2 CPU cores in minutes."""
    return {"patch_size": [64, 64, 64], "samples_per_image": 2, "batch_size": 2, "lr": 2e-3, "grad_clip": 1.0,
            "optimizer": "adam", "weight_decay": 1e-5, "iterations_per_epoch": None, "seed": 0, "num_workers": 0,
            "warmup_epochs": 0, "patience": None, "val_size": [96, 96, 96], "augment": "full",
            "range_noise": None}


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class ModelLoss(torch.nn.Module):
    """The training objective as a module, forward(x, y) -> loss: the model's own `loss(net, x, y)` (SUM's eq. 13,
    ML-CSC design 2's Dice + CE + reconstruction terms), else Dice + CE of its logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        own = getattr(self.model, "loss", None)
        return own(self.model, x, y) if own is not None else self.dice_ce(self.model(x), y)


def training_spacing(items: list[dict]) -> list[float]:
    """The median voxel size (mm, per axis) of the training images: the grid the model learns its scales on,
    kept in the checkpoint so that inference resamples other grids to it (runners/segmentation.py)."""
    import nibabel as nib

    zooms = [nib.load(str(it["image"])).header.get_zooms()[:3] for it in items]
    return [round(float(v), 4) for v in np.median(np.asarray(zooms, dtype=float), axis=0)]


def no_decay(model) -> set[str]:
    """Names of the parameters that weight decay must not pull to 0: every bias and vector (ndim <= 1) and what
    the model lists in `no_weight_decay()` (thresholds lambda, step sizes mu, read-out biases)."""
    listed = set(getattr(model, "no_weight_decay", lambda: ())())
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n in listed}


def parameter_groups(model, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Optimiser groups: decayed weights and the no_decay() parameters (weight_decay 0), each split again by the
    learning-rate factor the model asks for in `lr_multipliers()` (name -> factor; e.g. SUM's read-out Omega,
    whose right scale Adam's per-step movement of about lr could not reach in a short CPU budget)."""
    skip = no_decay(model)
    factors = getattr(model, "lr_multipliers", dict)()
    groups: dict[tuple[bool, float], list] = {}
    for n, p in model.named_parameters():
        groups.setdefault((n in skip, float(factors.get(n, 1.0))), []).append(p)
    out = []
    for (skipped, factor), params in sorted(groups.items()):
        g = {"params": params, "weight_decay": 0.0 if skipped else weight_decay}
        if factor != 1.0:
            if lr is None:
                raise ValueError("parameter_groups needs the base lr for a model with lr_multipliers()")
            g["lr"] = lr * factor
        out.append(g)
    return out


def warmup_cosine(optimizer, epochs: int, warmup: int):
    """Learning rate factor: linear warm-up over `warmup` epochs, then cosine decay to 0 at `epochs`."""
    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def validation_crops(items: list[dict], size, channels: int = 4) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(normalised image, label) of each case, cropped to `size` around its tumour: read once per training, not
    once per epoch (reading and normalising one 1 mm volume takes about 1.8 s, the bulk of a GPU epoch)."""
    from ..data.io import load_image, load_label
    from ..runners.segmentation import normalise

    crops = []
    for it in items:
        image, _ = load_image(it["image"], channels=channels)
        label, _ = load_label(it["label"], spatial_shape=image.shape[1:])
        centre = np.argwhere(label > 0).mean(0).round().astype(int) if label.any() else np.array(label.shape) // 2
        box = tuple(slice(max(0, min(int(c) - k // 2, n - k)), max(0, min(int(c) - k // 2, n - k)) + k)
                    for c, k, n in zip(centre, size, label.shape))
        crops.append((normalise(image)[(slice(None), slice(None), *box)].clone(), label[box].copy()))
    return crops


def validation_dice(model, crops: list[tuple[torch.Tensor, np.ndarray]], device) -> float:
    """Mean Dice over the BraTS regions of the validation_crops() (one forward pass per case: cheap enough to
    run after every epoch)."""
    from ..metrics import region_dice

    scores = []
    for x, label in crops:
        pred = model(x.to(device)).argmax(1)[0].cpu().numpy()
        scores.append(np.mean(list(region_dice(pred, label).values())))
    return float(np.mean(scores))


def check_train_config(config: dict) -> None:
    """InvalidInput with the reason for a `config` train() would refuse: keys default_train_config() does not
    know, an unknown optimizer or augment, a malformed range_noise (the train task's pre-flight asks this too, so
    that a bad request is a 400, not a failed job)."""
    check_known(config, default_train_config(), "train_config keys")
    if "optimizer" in config and config["optimizer"] not in OPTIMIZERS:
        raise InvalidInput(f"unknown optimizer {config['optimizer']!r}; choose from {sorted(OPTIMIZERS)}")
    if "augment" in config and config["augment"] not in AUGMENT_LEVELS:
        raise InvalidInput(f"unknown augment {config['augment']!r}; choose from {list(AUGMENT_LEVELS)}")
    check_range_noise(config.get("range_noise"))


def check_range_noise(value) -> None:
    """`range_noise` is None (off) or [probability in [0, 1], largest fraction of the dynamic range in (0, 1]]."""
    if value is None:
        return
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or not (0 <= value[0] <= 1 and 0 < value[1] <= 1):
        raise InvalidInput(f"range_noise must be null or [probability in [0, 1], largest fraction of the dynamic "
                           f"range in (0, 1]]; got {value!r}")


def training_dataset(items: list[dict], cfg: dict) -> CacheDataset:
    """The cases, loaded, normalised and indexed once (cached), then cropped and augmented per draw by the
    recipe's transforms, seeded per DDP process so that each draws its own patches."""
    transforms = train_transforms(cfg["patch_size"], cfg["samples_per_image"], cfg["augment"],
                                  cfg["range_noise"])
    transforms.set_random_state(seed=cfg["seed"] + rank())
    # copy_cache=False: the random steps start from owned crops (train_transforms), never writing to the cache
    return CacheDataset(items, transform=transforms, progress=False, num_workers=cfg["num_workers"],
                        copy_cache=False)


def train(model, items: list[dict], *, epochs: int, device="cpu", config: dict | None = None,
          progress: Callable[[dict], None] | None = None, max_minutes: float | None = None,
          show_progress: bool = True, val_items: list[dict] | None = None) -> dict:
    """Train `model` in place on `items` = [{"image": path, "label": path}] with DiceCE loss and Adam, or the
    model's own `loss(net, x, y)` and `train_defaults()` (e.g. SUM: soft IoU + reconstruction, AdamW).

    An epoch visits every case once and draws `samples_per_image` patches of `patch_size` per case
    (2:1 tumour-centred : random). `progress(dict)` is called after each epoch with
    {"epoch", "epochs", "loss", "seconds"}. Stops early after `max_minutes`. Returns the statistics.
    `config` keys other than default_train_config()'s are refused (InvalidInput naming the known ones).

    The recipe: `augment` "full" (transforms.full_augmentation: rotation, scaling, elastic deformation, noise, blur,
    bias field, gamma, coarser grids, flips) or "light" (flip, intensity scale/shift); no weight decay on thresholds, step sizes and biases (no_decay), `warmup_epochs` of linear
    warm-up then cosine decay; with `val_items`, the mean region Dice on them after every epoch ("val"), the
    best epoch's weights restored at the end ("best_epoch", "best_val") and, with `patience`, a stop after that
    many epochs without a better one.
    """
    if not items:
        raise InvalidInput("no labelled images to train on: save at least one final label first")
    check_epochs(epochs)
    cfg = default_train_config()
    cfg.update(getattr(model, "train_defaults", dict)())  # a model's own optimiser settings (SUM: AdamW)
    check_train_config(config or {})
    cfg.update(config or {})
    torch.manual_seed(cfg["seed"])
    device = torch.device(device)
    ds = training_dataset(items, cfg)
    shards = sampler(ds)
    loader = DataLoader(ds, batch_size=cfg["batch_size"], shuffle=shards is None, sampler=shards,
                        num_workers=cfg["num_workers"])
    model.to(device).train()
    # one forward per step computes the whole objective, so that DDP sees one (SUM's eq. 13 runs the network twice)
    net = ddp(ModelLoss(model))

    def batches(epoch: int):
        if shards is not None:
            shards.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if cfg["iterations_per_epoch"] and i >= cfg["iterations_per_epoch"]:
                break
            yield batch["image"].to(device), batch["label"].to(device)

    def loss(batch):
        return net(*batch)

    opt = OPTIMIZERS[cfg["optimizer"]](parameter_groups(model, cfg["weight_decay"], cfg["lr"]), lr=cfg["lr"])
    best: dict = {"val": -1.0, "epoch": 0, "state": None}

    crops = validation_crops(val_items or [], cfg["val_size"], getattr(model, "n", 4))

    def validate() -> float:
        settle_norms(model)  # validate (and keep as best) the model as it will be saved
        return validation_dice(model, crops, device)

    def keep_best(stats: dict) -> None:
        if not stats.get("val"):
            return
        if stats["val"][-1] > best["val"]:
            best.update(val=stats["val"][-1], epoch=stats["epochs"],
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})
        elif cfg["patience"] and stats["epochs"] - best["epoch"] >= cfg["patience"]:
            stats["stop"] = f"no better validation Dice for {cfg['patience']} epochs"

    # unrolled sparse coding diverges if one update makes ||D|| too large for the step sizes mu: clip
    objective = Objective(model, opt, batches, loss, grad_clip=cfg["grad_clip"],
                          scheduler=warmup_cosine(opt, epochs, cfg["warmup_epochs"]),
                          validate=validate if val_items else None)
    stats = fit([objective], epochs, progress=progress, max_minutes=max_minutes, show_progress=show_progress,
                on_epoch_end=keep_best,
                stats={"epochs": 0, "loss": [], "seconds": 0.0, "cases": len(items), "config": cfg,
                       "spacing_mm": training_spacing(items)})
    if best["state"] is not None:  # kept right after validate(), which settled it
        model.load_state_dict(best["state"])
        stats.update(best_epoch=best["epoch"], best_val=best["val"])
    else:
        settle_norms(model)
    return stats


def train_worker(rank_: int, world: int, name: str, config: dict, state: dict, items: list[dict], epochs: int,
                 train_config: dict | None, val_items: list[dict] | None, gpus: list | None) -> dict:
    """One process of a multi-process training (distributed.launch): model `name` built from `config` and
    `state`, trained on its shard of `items`; returns {"state_dict", "stats"} (used from rank 0)."""
    from .. import models

    device = f"cuda:{gpus[rank_]}" if gpus else "cpu"
    model = models.build(name, config)
    model.load_state_dict(state)
    progress = (lambda d: print(f"epoch {d['epoch']}/{d['epochs']} " + " ".join(  # noqa: E731
        f"{k} {v:.4g}" for k, v in d.items() if isinstance(v, float)), flush=True)) if rank_ == 0 else None
    stats = train(model, items, epochs=epochs, device=device, config=train_config, val_items=val_items,
                  progress=progress, show_progress=False)
    plain = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, list))}
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "stats": plain}
