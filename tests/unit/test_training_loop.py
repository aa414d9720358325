"""The training skeleton (training/loop.py) every model's training configures."""
from __future__ import annotations

import pytest
import torch

from sparsesight import checkpoint
from sparsesight.errors import InvalidInput
from sparsesight.training import Objective, fit


def linear_objective(name=None, validate=False):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    batches = lambda epoch: [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]  # noqa: E731
    loss = lambda b: torch.nn.functional.mse_loss(net(b[0]), b[1])  # noqa: E731
    return Objective(net, torch.optim.SGD(net.parameters(), lr=0.1), batches, loss, name=name, grad_clip=10.0,
                     validate=(lambda: float(loss((x, y)))) if validate else None)


def test_fit_lowers_the_loss_reports_progress_and_calls_the_epoch_hook(tmp_path):
    o = linear_objective("net", validate=True)
    seen, saved = [], []

    def save(stats):  # the checkpoint hook: one checkpoint per epoch
        saved.append(checkpoint.model_version({k: v for k, v in o.module.state_dict().items()}, "linear", {}))

    stats = fit([o], 5, progress=seen.append, on_epoch_end=save)
    assert stats["epochs"] == 5 and len(stats["net_loss"]) == 5 and stats["net_val"][-1] < stats["net_val"][0]
    assert [s["epoch"] for s in seen] == [1, 2, 3, 4, 5] and {"net_loss", "net_val", "seconds"} <= set(seen[0])
    assert len(set(saved)) == 5  # the weights changed every epoch
    assert not o.module.training  # evaluation mode afterwards


def test_fit_stops_after_the_time_budget_and_refuses_no_epochs():
    o = linear_objective()
    stats = fit([o], 50, max_minutes=0.0)
    assert stats["epochs"] == 1 and len(stats["loss"]) == 1
    with pytest.raises(InvalidInput, match="epochs"):
        fit([o], 0)
