"""Training of the microstructure networks (models/microstructure.py): voxels simulated with eq. 2 in the
model's protocol and their NNLS weights, then the fully-learned MLP and the hybrid's networks fitted in the
skeleton of loop.py (one objective per network, validated on a held-out share)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data import diffusion as dif
from ..models.microstructure import Microstructure, nnls_weights, targets
from .loop import Objective, fit


def simulate_training_set(model: Microstructure, n: int, snrs=(25, 50, 100), seed: int = 0,
                          ranges: dif.SimulationRanges | None = None, with_weights: bool = True,
                          progress: Callable[[str], None] | None = None) -> dict:
    """n voxels of eq. 2 in the model's protocol, SNR drawn from `snrs` per voxel, ground-truth orientations
    (as the paper's training), plus their NNLS weights (eq. 5) for the hybrid."""
    rng = np.random.default_rng(seed)
    snr_of = rng.choice(np.asarray(snrs, dtype=np.float64), n)
    parts = []
    for snr in np.unique(snr_of):
        m = int((snr_of == snr).sum())
        parts.append(dif.simulate(model.protocol, m, float(snr), rng, ranges, law=model.extra_law))
    sim = {k: np.concatenate([p[k] for p in parts]) for k in ("signal", "nu", "r", "f", "nu_fw", "u", "angle")}
    sim["snr"] = np.concatenate([np.full(len(p["signal"]), p["snr"]) for p in parts])
    perm = rng.permutation(n)
    sim = {k: v[perm] for k, v in sim.items()}
    if with_weights:
        t0 = time.time()

        def tell(done, total):
            if progress is not None:
                progress(f"NNLS weights {done}/{total} ({time.time() - t0:.0f} s)")

        sim["w"] = nnls_weights(model, sim["signal"], sim["u"], progress=tell)["w"]
    return sim


def fit_networks(model: Microstructure, data: dict, epochs: int = 20, batch_size: int = 256, lr: float = 1e-3,
                 which=("mlp", "hybrid"), device="cpu", seed: int = 0, val_fraction: float = 0.1,
                 max_minutes: float | None = None, progress: Callable[[dict], None] | None = None) -> dict:
    """Train the fully-learned MLP on y and the hybrid's networks on ŵ with the MSE of eqs. 3-4's parameters
    (ν, r / 7 µm, f), Adam (the paper uses Adagrad; Adam converges in fewer CPU epochs), dropout as Table 1.
    `progress(dict)` after each epoch: {"epoch", "epochs", "<net>_loss", "<net>_val"}. Returns the history."""
    torch.manual_seed(seed)
    y_t = targets(data["nu"], data["r"], data["f"])
    n = len(y_t)
    n_val = max(1, int(round(val_fraction * n)))
    idx = np.random.default_rng(seed).permutation(n)
    tr, va = idx[n_val:], idx[:n_val]
    inputs = {"mlp": data["signal"].astype(np.float32)}
    if "hybrid" in which:
        inputs["hybrid"] = data["w"].astype(np.float32)
    yt = torch.as_tensor(y_t, device=device)
    xs = {k: torch.as_tensor(v, device=device) for k, v in inputs.items()}

    def objective(name: str) -> Objective:
        net = getattr(model, name).to(device)

        def batches(epoch: int):
            perm = torch.as_tensor(np.random.default_rng(seed + epoch).permutation(tr))
            for s in range(0, len(perm), batch_size):
                yield perm[s:s + batch_size]

        return Objective(net, torch.optim.Adam(net.parameters(), lr=lr), batches, name=name,
                         loss=lambda b: nn.functional.mse_loss(net(xs[name][b]), yt[b]),
                         validate=lambda: float(nn.functional.mse_loss(net(xs[name][va]), yt[va])))

    hist = fit([objective(name) for name in which], epochs, progress=progress, max_minutes=max_minutes)
    model.eval()
    return hist
