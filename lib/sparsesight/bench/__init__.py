"""Benchmarks (`python -m sparsesight.bench.<name>`): each main prints its ratio table; progress goes to the
library's loggers, shown on stderr by `setup_process`, which also applies the server's malloc settings so that
the timings are the server's (sparsesight.memory)."""
from __future__ import annotations

import logging


def setup_process() -> None:
    """Show the `sparsesight` loggers' INFO lines with the time (a benchmark's progress); keep freed memory in the
    heap as the server does (memory.keep_freed_memory)."""
    from ..memory import keep_freed_memory

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    keep_freed_memory()
