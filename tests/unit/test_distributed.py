"""Multi-process training (training/distributed.py) on the CPU with the gloo backend: 2 processes give the loss
curve of 1 process (exactly for a full-batch objective; within tolerance for the real segmentation training)."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparsesight import models
from sparsesight.training import Objective, fit
from sparsesight.training.distributed import launch
from sparsesight.training.loop import ddp, sampler
from sparsesight.training.segmentation import train, train_worker

pytestmark = pytest.mark.slow


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(16, 1, generator=g)


def linear_fit(rank: int, world: int, epochs: int) -> list:
    """Full-batch least squares: each of `world` processes holds 16 / world samples (DistributedSampler)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    model = ddp(net)
    ds = TensorDataset(*_data())
    shards = sampler(ds)
    loader = DataLoader(ds, batch_size=16 // world, sampler=shards, shuffle=False)

    def batches(epoch):
        if shards is not None:
            shards.set_epoch(epoch)
        return loader

    o = Objective(net, torch.optim.SGD(net.parameters(), lr=0.1), batches,
                  lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1]))
    return fit([o], epochs)["loss"]


def test_two_gloo_processes_give_the_single_process_loss_curve():
    one = linear_fit(0, 1, 6)
    two = launch(linear_fit, 2, 6)
    assert one[-1] < 0.5 * one[0]  # it learns
    assert two == pytest.approx(one, rel=1e-5, abs=1e-7)


def test_segmentation_training_in_two_processes(tmp_path):
    """ML-CSC on 4 mm phantoms: 2 gloo processes (each half the cases) against 1, same start and recipe."""
    from sparsesight.data.phantom import write_dataset

    meta = json.loads(write_dataset(tmp_path / "ph", n_cases=4, seed=5, downsample=4, n_test=0,
                                    progress=False).read_text())
    items = [{"image": str(tmp_path / "ph" / t["image"]), "label": str(tmp_path / "ph" / t["label"])}
             for t in meta["training"]]
    torch.manual_seed(0)
    config = {"roi_size": [32, 32, 32]}
    start = models.build("mlcsc", config).state_dict()
    cfg = {"patch_size": [32, 32, 32], "samples_per_image": 2, "batch_size": 2}
    single = models.build("mlcsc", config)
    single.load_state_dict(start)
    one = train(single, items, epochs=4, config={**cfg, "batch_size": 4}, show_progress=False)["loss"]
    out = launch(train_worker, 2, "mlcsc", config, start, items, 4, cfg, None, None)
    two = out["stats"]["loss"]
    assert len(two) == 4 and out["stats"]["cases"] == 4
    assert two[-1] < two[0] and one[-1] < one[0]
    # other random patches per process: the curves agree to within 10 % per epoch, not bit for bit
    assert max(abs(a - b) / a for a, b in zip(one, two)) < 0.10, (one, two)
    ddp_model = models.build("mlcsc", config)
    ddp_model.load_state_dict(out["state_dict"])  # the trained weights come back whole
    assert any(not torch.equal(ddp_model.state_dict()[k], start[k]) for k in start)
