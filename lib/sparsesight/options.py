"""Options as requests give them: one reading of a boolean and one strict check of option names."""
from __future__ import annotations

from typing import Iterable

from .errors import InvalidInput


def flag(value) -> bool:
    """A request's boolean: true, "true", "1", "yes", "on" (any case, surrounding spaces ignored) are true."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def check_known(given: Iterable[str], known: Iterable[str], what: str = "options") -> None:
    """InvalidInput naming the unknown keys of `given` and the `known` ones, e.g. "unknown train_config keys
    ['lr0']; known: ['batch_size', ...]"."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InvalidInput(f"unknown {what} {unknown}; known: {sorted(known)}")
