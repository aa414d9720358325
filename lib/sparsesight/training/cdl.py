"""Training of CDL-Lambda's sparsity-map estimator (models/cdl.py) on reference slices: eq. 4's MSE over random
slices, random simulated acquisitions (data/lfmri.py) and a set of dictionaries, in the skeleton of loop.py."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..data import convdict, lfmri
from ..errors import InvalidInput
from ..models.cdl import CDL
from ..options import check_known
from .loop import Objective, check_epochs, fit


def default_train_config() -> dict:
    """Defaults of `train`: acquisitions drawn per sample (paper: sigma 0.075-0.30, 120/160/200 of 320 lines)."""
    return {"lr": 1e-3, "batch_size": 2, "steps_per_epoch": 16, "keep": [0.375, 0.5, 0.625],
            "sigma": [0.075, 0.30], "mask": "lowres", "acceleration": [2.0, 4.0], "grad_clip": 1.0, "seed": 0,
            "dictionaries": None, "crop": None}


def training_dictionaries(model: CDL, names=None) -> list[tuple[str, torch.Tensor]]:
    """The dictionaries to train over (eq. 4): `names`, else the model's own for V1/V2 and every stored
    dictionary for V3 (V1/V2 can only use dictionaries with the model's K)."""
    if names is None:
        names = convdict.available() if model.variant == "v3" else [model.config["dictionary"]]
    out = []
    for n in names:
        d = torch.as_tensor(convdict.load(n))
        if model.variant != "v3" and d.shape[0] != model.num_filters:
            continue
        out.append((n, d))
    if not out:
        raise InvalidInput(f"no training dictionary fits CDL {model.variant} with K = {model.num_filters}")
    return out


def sample_batch(refs: np.ndarray, rng: np.random.Generator, cfg: dict) -> tuple[torch.Tensor, ...]:
    """A batch of (y, mask, target) from reference slices (N, H, W): random slice, random acquisition."""
    idx = rng.integers(0, len(refs), size=int(cfg["batch_size"]))
    ys, ms, ts = [], [], []
    for i in idx:
        x = refs[i]
        if cfg.get("crop"):
            c = int(cfg["crop"])
            if min(x.shape) > c:
                r0, c0 = rng.integers(0, x.shape[0] - c + 1), rng.integers(0, x.shape[1] - c + 1)
                x = x[r0:r0 + c, c0:c0 + c]
        if cfg["mask"] == "random":
            m = lfmri.random_mask(x.shape, float(rng.uniform(*cfg["acceleration"])), seed=int(rng.integers(1 << 30)))
        else:
            m = lfmri.lowres_mask(x.shape, float(rng.choice(cfg["keep"])))
        y, scale = lfmri.simulate(x, m, float(rng.uniform(*cfg["sigma"])), rng)
        ys.append(y)
        ms.append(m)
        ts.append(x / scale)
    return (torch.as_tensor(np.stack(ys)), torch.as_tensor(np.stack(ms)),
            torch.as_tensor(np.stack(ts).astype(np.complex64)))


def train(model: CDL, references: np.ndarray, *, epochs: int, device="cpu", config: dict | None = None,
          progress: Callable[[dict], None] | None = None, max_minutes: float | None = None,
          show_progress: bool = True) -> dict:
    """Train the Lambda estimator in place: MSE (eq. 4) between x* and the reference over random slices of
    `references` (N, H, W) (all the same size), random acquisitions and the training dictionaries; Adam;
    truncated back-propagation through the last T_bp FISTA iterations. progress(dict) after every epoch."""
    refs = np.asarray(references, dtype=np.float32)
    if refs.ndim != 3 or len(refs) == 0:
        raise InvalidInput("training needs reference slices (N, H, W); none were found")
    check_epochs(epochs)
    cfg = default_train_config()
    check_known(config or {}, cfg, "CDL train_config keys")
    cfg.update(config or {})
    rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    device = torch.device(device)
    dicts = [(n, d.to(device)) for n, d in training_dictionaries(model, cfg["dictionaries"])]
    model.to(device).train()

    def batches(epoch: int):
        for _ in range(int(cfg["steps_per_epoch"])):
            y, m, target = (t.to(device) for t in sample_batch(refs, rng, cfg))
            _, d = dicts[int(rng.integers(len(dicts)))]
            yield y, m, target, d

    def loss(batch):
        y, m, target, d = batch
        return torch.mean(torch.abs(model(y, m, d) - target) ** 2)

    objective = Objective(model, torch.optim.Adam(model.parameters(), lr=cfg["lr"]), batches, loss,
                          grad_clip=cfg["grad_clip"])
    return fit([objective], epochs, progress=progress, max_minutes=max_minutes, show_progress=show_progress,
               desc="train cdl", digits=5, stats={"epochs": 0, "loss": [], "seconds": 0.0, "slices": len(refs),
                                                  "dictionaries": [n for n, _ in dicts]})
