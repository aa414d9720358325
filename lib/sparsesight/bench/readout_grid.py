"""Benchmark: what a coarser read-out grid costs before any learning (issue 17, ML-CSC's enhancing rim).

    python -m sparsesight.bench.readout_grid [--factors 2 4] [--cases 2] [--seed 0] [--out bench/results]

ML-CSC's logits live on the grid of its deepest codes, 1/prod(strides) of the input's, and are upsampled
trilinearly. On the held-out phantoms of the shipped models' cards (pretrain.eval_split: 1 mm, case seeds never
trained on), each label map is averaged onto a grid `factor` times coarser and brought back the same way
(metrics.grid_ceiling_dice): the Dice it keeps is what a read-out on that grid reaches with the true class
fractions. Writes readout_grid.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..training.evaluation import grid_ceiling
from . import setup_process

logger = logging.getLogger(__name__)


def run(factors: list[int], cases: int, seed: int, work: Path) -> dict:
    from ..pretrain import eval_split, items_of

    items = items_of(eval_split(cases, 1, seed, work), "test")
    rows = []
    for f in factors:
        mean, per_case = grid_ceiling(items, f)
        logger.info("factor %d: %s", f, per_case)
        rows.append({"factor": f, "dice": mean, "per_case": per_case})
    return {"data": f"{cases} held-out phantoms of the model cards (pretrain.eval_split, seed {seed}, 1 mm)",
            "rows": rows}


def markdown_table(res: dict) -> list[str]:
    lines = ["| read-out grid | WT | TC | ET |", "|---|---|---|---|"]
    for r in res["rows"]:
        d = r["dice"]
        lines.append(f"| 1/{r['factor']} | {d['WT']:.3f} | {d['TC']:.3f} | {d['ET']:.3f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the cards' training seed (held-out seed = seed + 1000)")
    p.add_argument("--work", type=Path, default=Path("out/pretrain"))
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    a = p.parse_args(argv)
    setup_process()
    res = run(a.factors, a.cases, a.seed, a.work)
    res["command"] = "python -m sparsesight.bench.readout_grid " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in
        (("factors", a.factors), ("cases", a.cases), ("seed", a.seed)))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "readout_grid.json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(markdown_table(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
