"""Checkpoints with a content-derived model version.

The version is "sha256:<first 16 hex>" of the serialised weights and config, so it changes exactly when
the model changes. Files are written atomically (temp file + fsync + os.replace) so a reader never sees half a
file.

A checkpoint is data, not code: it is read with torch.load(weights_only=True) (tensors and plain containers
only, nothing is executed), checked against the registered model it names, and its version is recomputed from
the loaded weights, never taken from the file. Anything else raises InvalidInput with the reason.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import models
from .atomic import replace_atomically
from .errors import InvalidInput, UnknownModel

MAX_REASON = 300  # characters of a library error quoted in a refusal


def model_version(state_dict: dict, name: str, config: dict) -> str:
    """sha256 over the model name, its config and every tensor's bytes in key order."""
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def _plain(value):
    """`value` as types torch.load(weights_only=True) accepts: dict/list/str/int/float/bool/None and tensors."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _plain(value.tolist())
    return str(value)


def save(path, model, name: str, config: dict, meta: dict | None = None) -> str:
    """Write {model, config, state_dict, meta} atomically; returns the model version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = _plain(config)  # as stored, so that load() recomputes the same version
    version = model_version(state, name, config)
    payload = {"model": name, "config": config, "state_dict": state, "version": version,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "meta": _plain(meta or {})}
    buf = io.BytesIO()
    torch.save(payload, buf)
    replace_atomically(path, buf.getvalue())
    return version


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:MAX_REASON]


def _check_shapes(name: str, shapes: dict, state: dict) -> None:
    given = {k: tuple(v.shape) for k, v in state.items()}
    if given != shapes:
        wrong = sorted(set(shapes) ^ set(given)) or sorted(k for k in shapes if shapes[k] != given[k])
        raise InvalidInput(f"the checkpoint's weights do not fit a {name} model with its config: "
                           f"{', '.join(wrong[:5])} missing, unexpected or of another shape")


def read_payload(source) -> dict:
    """The checkpoint's dict, read weights-only from a path, bytes or a binary file; InvalidInput otherwise."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickle that asks for code or objects: refused, never run
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise InvalidInput(f"not a usable checkpoint: it holds objects other than tensors and plain values{what}; "
                           f"checkpoints are loaded as data only") from None
    except Exception as e:  # truncated, not a torch file
        raise InvalidInput(f"not a usable checkpoint: {_short(e)}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(f"not a SparseSight checkpoint: a {type(payload).__name__}, expected a dict with "
                           f"'model', 'config' and 'state_dict'")
    missing = [k for k in ("model", "config", "state_dict") if k not in payload]
    if missing:
        raise InvalidInput(f"not a SparseSight checkpoint: missing {', '.join(missing)}")
    state = payload["state_dict"]
    if not isinstance(payload["model"], str) or not isinstance(payload["config"], dict) or not isinstance(state, dict):
        raise InvalidInput("not a SparseSight checkpoint: 'model' must be a name, 'config' and 'state_dict' dicts")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidInput(f"state_dict entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return payload


def _build(name: str, config: dict, state: dict, expect: str | None = None):
    """The registered model `name` built from `config` and loaded with `state` (strict); InvalidInput otherwise."""
    if expect is not None and name != expect:
        raise InvalidInput(f"the checkpoint holds a {name!r} model, not {expect!r}")
    if name not in models.NAMES:
        raise InvalidInput(f"unknown model {name!r} in the checkpoint; known models: {', '.join(models.NAMES)}")
    config = models.stored_config(name, config)  # e.g. an ML-CSC config without "design" is design 1
    # shapes first on the meta device (no memory), so a config that asks for a huge network is refused unbuilt
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in models.build(name, config).state_dict().items()}
    except (UnknownModel, ValueError, TypeError, KeyError) as e:
        raise InvalidInput(f"the checkpoint's {name} config cannot be used: {_short(e)}") from None
    except (RuntimeError, NotImplementedError):
        shapes = None  # this model cannot be built on meta (it computes at init): checked after the build
    if shapes is not None:
        _check_shapes(name, shapes, state)
    try:
        model = models.build(name, config)
        if shapes is None:
            _check_shapes(name, {k: tuple(v.shape) for k, v in model.state_dict().items()}, state)
        model.load_state_dict(state, strict=True)
    except MemoryError:
        raise InvalidInput(f"the checkpoint's {name} config asks for more memory than the server has") from None
    except (UnknownModel, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise InvalidInput(f"the checkpoint does not fit a {name} model: {_short(e)}") from None
    return model.eval()


def load_payload(source, expect: str | None = None):
    """(model in eval mode on cpu, meta) from a path, bytes or file; `expect`: the model name it must hold.

    meta["version"] is computed here from the loaded weights and config, whatever the file says."""
    payload = read_payload(source)
    name, config = payload["model"], payload["config"]
    model = _build(name, config, payload["state_dict"], expect)
    extra = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    created = payload.get("created")
    meta = {"model": name, "version": model_version(model.state_dict(), name, config), "config": config,
            "created": created if isinstance(created, str) else None, "train": extra.get("train", {}),
            **{k: v for k, v in extra.items() if k != "train"}}
    spacing = meta["train"].get("spacing_mm") if isinstance(meta["train"], dict) else None
    if isinstance(spacing, list) and len(spacing) == 3 and all(isinstance(v, (int, float)) and v > 0 for v in spacing):
        model.spacing_mm = tuple(float(v) for v in spacing)  # the grid it was trained on (runners resample to it)
    return model, meta


def load(path, map_location="cpu", expect: str | None = None):
    """Returns (model in eval mode, meta) where meta has model, version, config, created, train."""
    model, meta = load_payload(Path(path), expect)
    return (model if str(map_location) == "cpu" else model.to(map_location)), meta


def version_of(path) -> str | None:
    """The version of a checkpoint computed from its weights, None if there is no file."""
    path = Path(path)
    if not path.is_file():
        return None
    return load_payload(path)[1]["version"]
