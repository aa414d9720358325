"""One runner per served model: how a checkpoint becomes the infer task's answer.

A runner is a module (`runners/<model>.py`, named like the model: mlcsc, sum, cdl, microstructure) that satisfies
`Runner`. The app's infer task (apps/sparsesight/lib/infers/sparsesight_infer.py) calls `predict_file` for the
plain answer and `run_bundle` for the result bundle (bundle.py); its trainer starts from `default_train_config()`.
Bad inputs or options raise sparsesight.errors.InvalidInput naming the option and what is allowed.
See docs/ARCHITECTURE.md ("Add a model").
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..checkpoint import load
from ..errors import UnknownModel
from ..models import NAMES

__all__ = ["NAMES", "Runner", "get", "load"]


@runtime_checkable
class Runner(Protocol):
    """What the server needs of a model's runner (checkpoints load with `runners.load`, the same for every model)."""

    #: the model's own infer options and their defaults (shown in GET /info, passed only when a request sets them)
    OPTIONS: dict[str, Any]
    #: every output name the model's bundle can hold (`outputs=None` in run_bundle: the default set)
    BUNDLE_OUTPUTS: tuple[str, ...]

    def predict_file(self, model, image_path, device="cpu", **options) -> tuple[np.ndarray, np.ndarray]:
        """The plain answer (label map or the model's main map) and the affine of an image file. A runner with
        `INPUT_CHECKS = True` also takes `checks_for=(name, version)` and then returns the label's input checks as
        a third item (segmentation.input_checks; None for an attribution map)."""

    def run_bundle(self, model, name: str, version: str, image_path, image_id: str, out_path, outputs=None,
                   device="cpu", **options) -> Path:
        """Write the result bundle of `image_path` to `out_path` and return its path."""

    def default_train_config(self) -> dict:
        """The training defaults a train request's `train_config` overrides."""


def get(name: str) -> Runner:
    """The runner module of model `name` (UnknownModel for a name that is not in models.NAMES)."""
    if name not in NAMES:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(NAMES)}")
    return import_module(f"{__name__}.{name}")  # type: ignore[return-value]
