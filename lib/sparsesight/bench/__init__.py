"""Benchmarks (`python -m sparsesight.bench.<name>`): each main prints its ratio table; progress goes to the
library's loggers, shown on stderr by `setup_process`, which also applies the server's malloc settings so that
the timings are the server's (sparsesight.memory)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def setup_process(threads: int = 0) -> None:
    """Show the `sparsesight` loggers' INFO lines with the time (a benchmark's progress); keep freed memory in the
    heap as the server does (memory.keep_freed_memory); `threads` > 0: that many torch threads."""
    from ..memory import keep_freed_memory

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    keep_freed_memory()
    if threads:
        import torch

        torch.set_num_threads(threads)


def shipped_weights_parser(doc: str, out: Path, plot: Path | None = None, seed_help: str = "") -> argparse.ArgumentParser:
    """The parser of a benchmark of the shipped segmentation weights, described by `doc`'s first line, with the
    arguments they all take (--models, --seed, --threads, --work, --out, and --plot when given a default); the
    benchmark adds its own."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["sum", "mlcsc"], choices=["sum", "mlcsc"])
    p.add_argument("--seed", type=int, default=0, help="the cards' training seed" + seed_help)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave PyTorch's default)")
    p.add_argument("--work", type=Path, default=Path("out/pretrain"))
    p.add_argument("--out", type=Path, default=out)
    if plot is not None:
        p.add_argument("--plot", type=Path, default=plot)
    return p


def write_record(res: dict, name: str, argv, path: Path) -> None:
    """Write a bench record atomically as JSON at `path`, with the command that made it (`python -m
    sparsesight.bench.<name>` and `argv`, or the process's arguments when None) as `res["command"]`."""
    from ..atomic import replace_atomically

    res["command"] = " ".join([f"python -m sparsesight.bench.{name}", *(sys.argv[1:] if argv is None else argv)])
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, (json.dumps(res, indent=1) + "\n").encode())


def publish(res: dict, name: str, argv, path: Path, plot=None, plot_path: Path | None = None, lines=()) -> None:
    """A bench's ending: its record written (write_record), its plot drawn (`plot(res, plot_path)`), the lines of
    each of `lines` (functions of the record: tables, summaries) printed, then where it all went."""
    write_record(res, name, argv, path)
    if plot is not None:
        plot(res, plot_path)
    for make in lines:
        print("\n".join(make(res)))
    print(f"written: {path}" + (f", {plot_path}" if plot is not None else ""))


def load_shipped(name: str):
    """(model, checkpoint meta, model card) of the shipped weights of `name`, checked against their card as the
    server checks them (model_card.verify): a bench of the shipped weights measures what is served."""
    from .. import checkpoint, model_card
    from ..pretrain import PRETRAINED

    path = PRETRAINED / f"{name}.pt"
    model, meta = checkpoint.load(path)
    card = model_card.read(path)
    model_card.verify(path, meta, card)
    return model, meta, card
