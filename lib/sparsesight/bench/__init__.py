"""Benchmarks (`python -m sparsesight.bench.<name>`): each main prints its ratio table; progress goes to the
library's loggers, shown on stderr by `setup_process`, which also applies the server's malloc settings so that
the timings are the server's (sparsesight.memory)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def setup_process() -> None:
    """Show the `sparsesight` loggers' INFO lines with the time (a benchmark's progress); keep freed memory in the
    heap as the server does (memory.keep_freed_memory)."""
    from ..memory import keep_freed_memory

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    keep_freed_memory()


def write_record(res: dict, name: str, argv, path: Path) -> None:
    """Write a bench record atomically as JSON at `path`, with the command that made it (`python -m
    sparsesight.bench.<name>` and `argv`, or the process's arguments when None) as `res["command"]`."""
    from ..atomic import replace_atomically

    res["command"] = " ".join([f"python -m sparsesight.bench.{name}", *(sys.argv[1:] if argv is None else argv)])
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, (json.dumps(res, indent=1) + "\n").encode())
