"""Null models of the data-randomisation check (Adebayo et al. 2018, Sec. 3.2): the served architectures trained
with their shipped recipe on permuted labels (`python -m sparsesight.pretrain <model> --permute-labels`), shipped
in apps/sparsesight/pretrained/null/<model>.pt with their model cards. A served map is compared with the same
method's map of the null model of the same configuration (faithfulness.data_randomisation)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from torch import nn

from .. import checkpoint, model_card

logger = logging.getLogger(__name__)

NULL_DIR = Path(__file__).resolve().parents[3] / "apps" / "sparsesight" / "pretrained" / "null"
_CACHE: dict = {}
_LOCK = threading.Lock()


def find(name: str, model: nn.Module, folder: Path | None = None) -> tuple[nn.Module | None, dict]:
    """(null model in eval mode or None, {"version", "note"}) for served model `name`: None with the reason in
    "note" when no null model is shipped, it does not match its card, or its configuration differs from the
    served model's (a comparison across architectures would not test the data)."""
    path = Path(folder or NULL_DIR) / f"{name}.pt"
    if not path.is_file():
        return None, {"version": None, "note": f"no null model for {name} (python -m sparsesight.pretrain {name} "
                                               f"--permute-labels makes one)"}
    key = (str(path), path.stat().st_mtime_ns)
    with _LOCK:
        if key not in _CACHE:
            try:
                null, meta = checkpoint.load(path, expect=name)
                model_card.verify(path, meta, model_card.read(path))
            except Exception as e:  # a broken null model disables the check, it never fails the request
                logger.warning("null model %s refused: %s", path, e)
                return None, {"version": None, "note": f"the null model {path.name} was refused: {e}"}
            _CACHE.clear()
            _CACHE[key] = (null.eval(), meta["version"])
        null, version = _CACHE[key]
    if getattr(null, "config", None) != getattr(model, "config", None):
        return None, {"version": version, "note": f"the null model {version} has another configuration than the "
                                                  f"served model: no data-randomisation check"}
    return null, {"version": version, "note": "trained with the shipped recipe on permuted labels (every image "
                                              "paired with another case's label map)"}
