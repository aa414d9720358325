"""One model's checkpoint file, re-read whenever it changes.

The trainer runs in a separate process (MONAI Label starts one per training) and replaces the checkpoint with
`sparsesight.checkpoint.save`, which writes a temporary file and os.replace()s it. The server process keeps the
loaded model together with the file's (inode, mtime, size); every infer and every /info compares that key
with a fresh os.stat and reloads when it differs, so the first request after training uses the new weights and
reports the new version, without a restart and without re-reading an unchanged file.
"""
from __future__ import annotations

import logging
import os
import threading

from sparsesight import checkpoint

logger = logging.getLogger(__name__)


class ModelFile:
    def __init__(self, name: str, path: str):
        self.name = name
        self.path = path
        self._lock = threading.Lock()
        self._key = None
        self._model = None
        self._meta = None
        self._device = "cpu"

    def _stat(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def exists(self) -> bool:
        return self._stat() is not None

    def load(self, device: str = "cpu"):
        """(model on device in eval mode, meta) of the current file, or (None, None) when there is none."""
        key = self._stat()
        if key is None:
            return None, None
        with self._lock:
            if key != self._key:
                model, meta = checkpoint.load(self.path, map_location="cpu")
                logger.info(f"Loaded {self.name} {meta.get('version')} from {self.path}")
                self._key, self._model, self._meta, self._device = key, model, meta, "cpu"
            if device != self._device:
                self._model.to(device)
                self._device = device
            return self._model, self._meta

    def meta(self) -> dict | None:
        key = self._stat()
        if key is None:
            return None
        with self._lock:
            if key == self._key:
                return self._meta
        return self.load(self._device)[1]

    def version(self) -> str | None:
        meta = self.meta()
        return meta.get("version") if meta else None


def pick_device(requested=None, default=None) -> str:
    """The request's device, else the app's, else cuda when present; cuda falls back to cpu when absent."""
    import torch

    device = str(requested or default or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.info(f"{device} requested but no GPU is present: using cpu")
        device = "cpu"
    return device
