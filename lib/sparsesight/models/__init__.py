"""Model registry: every model is reachable by one name everywhere (config, task, bundle, Slicer)."""
from __future__ import annotations

from importlib import import_module

from ..errors import UnknownModel

# name -> (module, class)
_REGISTRY = {
    "mlcsc": ("sparsesight.models.mlcsc", "MLCSC"),
    "microstructure": ("sparsesight.models.microstructure", "Microstructure"),
    "sum": ("sparsesight.models.sum", "SUM"),
    "cdl": ("sparsesight.models.cdl", "CDL"),
}
NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _module(name: str):
    if name not in _REGISTRY:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(NAMES)}")
    return import_module(_REGISTRY[name][0])


def default_config(name: str) -> dict:
    """The model's default hyperparameters."""
    return _module(name).default_config()


def with_defaults(defaults: dict, config: dict, model: str) -> dict:
    """`defaults` updated by `config`; ValueError naming the keys `model` does not know."""
    unknown = set(config) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {model} config keys: {sorted(unknown)}")
    return {**defaults, **config}


def stored_config(name: str, config: dict) -> dict:
    """The config a stored checkpoint's model is built with (a model may read an old checkpoint's config
    differently from a new one's: models/mlcsc.py, design 1)."""
    hook = getattr(_module(name), "stored_config", None)
    return hook(config) if hook is not None else dict(config)


def build(name: str, config: dict | None = None):
    """Instantiate model `name` with `config` overriding its defaults."""
    mod = _module(name)
    return getattr(mod, _REGISTRY[name][1])(**(config or {}))
