"""Checkpoints with a content-derived model version.

The version is "sha256:<first 16 hex>" of the serialised weights and config, so it changes exactly when
the model changes. Files are written atomically (temp file + os.replace) so a reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import models


def model_version(state_dict: dict, name: str, config: dict) -> str:
    """sha256 over the model name, its config and every tensor's bytes in key order."""
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def save(path, model, name: str, config: dict, meta: dict | None = None) -> str:
    """Write {model, config, state_dict, meta} atomically; returns the model version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    version = model_version(state, name, config)
    payload = {"model": name, "config": config, "state_dict": state, "version": version,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "meta": meta or {}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return version


def load(path, map_location="cpu"):
    """Returns (model in eval mode, meta) where meta has model, version, config, created, train."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=False)
    model = models.build(payload["model"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    meta = {"model": payload["model"], "version": payload["version"], "config": payload["config"],
            "created": payload["created"], "train": payload.get("meta", {}).get("train", {}),
            **{k: v for k, v in payload.get("meta", {}).items() if k != "train"}}
    return model, meta


def version_of(path) -> str | None:
    """The stored version of a checkpoint, None if there is no file."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)["version"]
