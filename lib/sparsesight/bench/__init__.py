"""Benchmarks (`python -m sparsesight.bench.<name>`): each main prints its ratio table; progress goes to the
library's loggers, shown on stderr by `log_to_stderr`."""
from __future__ import annotations

import logging


def log_to_stderr() -> None:
    """Show the `sparsesight` loggers' INFO lines with the time (a benchmark's progress)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
