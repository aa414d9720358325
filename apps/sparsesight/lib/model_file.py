"""One model's checkpoint file, re-read whenever it changes; a broken file breaks only its own model.

The trainer runs in a separate process (MONAI Label starts one per training) and replaces the checkpoint with
`sparsesight.checkpoint.save`, which writes a temporary file and os.replace()s it. The server process keeps the
loaded model together with the file's (inode, mtime, size); every infer and every /info compares that key
with a fresh os.stat and reloads when it differs, so the first request after training uses the new weights and
reports the new version, without a restart and without re-reading an unchanged file.

A file that cannot be loaded (truncated, corrupt, not weights-only, wrong shapes) is remembered with its reason
under the same key: `error()` gives the reason for /info, `load()` raises BrokenModel (answered 503), and the
other models are untouched. Inference never moves the shared model: there is one copy per device, the cpu copy
being the loaded one, and only devices of `valid_devices()` are accepted.
"""
from __future__ import annotations

import copy
import logging
import os
import threading

from sparsesight import checkpoint, model_card
from sparsesight.errors import InvalidInput

logger = logging.getLogger(__name__)


class BrokenModel(RuntimeError):
    """The model's checkpoint exists but cannot be loaded; str() is the reason."""


class ModelFile:
    """The served checkpoint of one model: `path` (<model_dir>/<name>.pt, what training writes), else the shipped
    weights `shipped` (apps/sparsesight/pretrained/<name>.pt, served only when they match their model card).

    A trained file that cannot be loaded is reported (error()) and, when shipped weights exist, the shipped model
    keeps serving; without them the model answers 503 (BrokenModel) until the file is repaired or retrained.
    Training never writes to the shipped file."""

    def __init__(self, name: str, path: str, shipped: str | None = None):
        self.name = name
        self.path = path
        self.shipped = shipped
        self._lock = threading.Lock()
        self._key = None
        self._copies: dict = {}  # device -> model; "cpu" is the loaded one
        self._meta = None
        self._error = None

    @staticmethod
    def _stat_of(path):
        try:
            st = os.stat(path)
        except (FileNotFoundError, TypeError):
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _stat(self):
        """The (trained, shipped) files' keys; None when neither exists."""
        key = (self._stat_of(self.path), self._stat_of(self.shipped) if self.shipped else None)
        return key if key != (None, None) else None

    def exists(self) -> bool:
        return self._stat() is not None

    def _load_shipped(self):
        """(model, meta) of the shipped weights after checking them against their card; InvalidInput otherwise."""
        model, meta = checkpoint.load(self.shipped, map_location="cpu", expect=self.name)
        card = model_card.read(self.shipped)
        model_card.verify(self.shipped, meta, card)
        return model, {**meta, "source": "shipped", "card": model_card.summary(card), "card_record": card}

    def _refresh(self, key) -> None:
        """Load the files under `key` once (lock held); a failure is kept as the reason until a file changes."""
        if key == self._key:
            return
        model, meta, errors = None, None, []
        if key[0] is not None:
            try:
                model, meta = checkpoint.load(self.path, map_location="cpu", expect=self.name)
                meta = {**meta, "source": "trained", **trained_card(meta.pop("card", None), meta["version"])}
            except InvalidInput as e:
                errors.append(str(e) if key[1] is None else
                              f"trained checkpoint {os.path.basename(self.path)} is unusable ({e}); serving the "
                              f"shipped weights")
                logger.warning(f"model {self.name}: checkpoint {os.path.basename(self.path)} cannot be loaded: {e}")
        if model is None and key[1] is not None:
            try:
                model, meta = self._load_shipped()
            except InvalidInput as e:
                errors.append(f"shipped weights refused ({e})")
                logger.warning(f"model {self.name}: shipped weights refused: {e}")
        self._key, self._meta, self._error = key, meta, "; ".join(errors) or None
        self._copies = {"cpu": model} if model is not None else {}
        if meta is not None:
            logger.info(f"Loaded {self.name} {meta.get('version')} ({meta['source']})")

    def load(self, device: str = "cpu", fresh_if_broken: bool = False):
        """(model on device in eval mode, meta) of the current file, (None, None) when there is none.

        meta["source"]: "trained" (model_dir) or "shipped". The model is shared by concurrent requests: use it
        read-only. BrokenModel when no file is usable, or (None, None) with `fresh_if_broken` (a trainer then
        starts from fresh weights, which heals the model)."""
        key = self._stat()
        if key is None:
            return None, None
        device = check_device(device)
        with self._lock:
            self._refresh(key)
            if "cpu" not in self._copies:
                if fresh_if_broken:
                    logger.warning(f"model {self.name}: unusable checkpoint ({self._error}); starting from fresh weights")
                    return None, None
                raise BrokenModel(self._error or "no usable checkpoint")
            model = self._copies.get(device)
            if model is None:
                model = copy.deepcopy(self._copies["cpu"]).to(device).eval()
                self._copies[device] = model
            return model, self._meta

    def error(self) -> str | None:
        """Why a file cannot be used (also when the shipped weights serve instead), None when all is well."""
        key = self._stat()
        if key is None:
            return None
        with self._lock:
            self._refresh(key)
            return self._error

    def meta(self) -> dict | None:
        """The served checkpoint's meta; None without a usable file."""
        key = self._stat()
        if key is None:
            return None
        with self._lock:
            self._refresh(key)
            return self._meta

    def version(self) -> str | None:
        meta = self.meta()
        return meta.get("version") if meta else None


def valid_devices() -> list:
    """"cpu", and "cuda" / "cuda:N" for the GPUs present."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n)] if n else [])


def trained_card(card, version: str) -> dict:
    """{"card": summary, "card_record": card} of the card a trained checkpoint holds (written by the train task),
    {} when it holds none or one that is not a card."""
    if not isinstance(card, dict):
        return {}
    card = {**card, "version": version}  # the version is computed from the weights, never taken from the file
    try:
        return {"card": model_card.summary(card), "card_record": card}
    except (AttributeError, TypeError):
        return {}


def check_device(device) -> str:
    """The device as a key of valid_devices() ("cuda" normalised to its index); InvalidInput naming them."""
    valid = valid_devices()
    if not isinstance(device, str) or device.strip().lower() not in valid:
        raise InvalidInput(f"device {device!r} is not available on this server; valid devices: {', '.join(valid)}")
    device = device.strip().lower()
    if device == "cuda":
        import torch

        device = f"cuda:{torch.cuda.current_device()}"
    return device


def pick_device(requested=None, default=None) -> str:
    """The request's device (must be valid: InvalidInput otherwise), else the app's, else cuda when present.

    Only the app's default falls back to cpu when it names a GPU that is absent (logged); a request never does."""
    import torch

    if requested not in (None, ""):
        return check_device(requested)
    device = str(default or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith("cuda") and device not in valid_devices():
        logger.warning(f"device {device} configured but not present: using cpu")
        device = "cpu"
    return check_device(device)
