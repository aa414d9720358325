"""Benchmark: attribution cost, memory and faithfulness for the served models (issue 5).

    python -m sparsesight.bench.attribution [--steps 8] [--epochs 3] [--downsample 4] [--full] [--out bench/results]

1. Cost of IG with n steps against its floor n x (forward + backward) of the same model and score, measured in
   the same run: one path point per pass (batch 1) and the chunked default (n points per pass, against
   ceil(n / b) batched passes). Aim <= 1.2x.
2. (--full) Peak memory on a full-size 240 x 240 x 155 x 4 volume (each in a fresh process, ru_maxrss): IG with
   n = 2 steps in chunks of one point against one forward + backward; working memory = peak - memory after loading.
3. Deletion / insertion AUC (Petsiuk et al. 2018) of every method for each served model (mlcsc, sum) trained
   briefly on phantoms, on held-out phantoms, target "enhancing" over the predicted region; a random map is the
   baseline of the same run (ratios: random / method for deletion, method / random for insertion; > 1 is better).

Writes attribution.json, attribution.csv and attribution.png under --out and prints the ratio tables.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import models
from ..data.io import load_image, load_label
from ..explain.attribution import METHODS, SHORT, TargetScore, attribute
from ..explain.faithfulness import deletion_insertion
from ..explain.gradients import grad_and_score
from ..preview import pyplot
from ..runners.segmentation import normalise
from ..training import train
from . import log_to_stderr
from .segmentation import BRATS_SHAPE, _dataset

TARGET = 3  # enhancing


def ig_cost(model, x: torch.Tensor, steps: int, repeats: int = 3) -> dict:
    """IG time against n x (forward + backward), one point per pass and chunked; the floor and IG are timed
    alternately (after one warm-up of each) and the medians compared, so load changes hit both alike."""
    F = TargetScore(model.eval(), TARGET, None)
    b = steps
    xb = x.expand(b, *x.shape[1:]).contiguous()

    def floor1():
        for _ in range(steps):
            grad_and_score(F, x)

    def floorb():
        for _ in range(math.ceil(steps / b)):
            grad_and_score(F, xb)

    runs = {"floor_s": floor1, "ig_s": lambda: attribute(model, x, "ig", TARGET, region="all", steps=steps, batch=1),
            "floor_batched_s": floorb,
            "ig_batched_s": lambda: attribute(model, x, "ig", TARGET, region="all", steps=steps, batch=b)}
    for fn in runs.values():
        fn()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"steps": steps, "shape": list(x.shape[1:]), "fwd_bwd_s": med["floor_s"] / steps, **med,
            "batch": b, "fwd_bwd_batched_s": med["floor_batched_s"] / math.ceil(steps / b),
            "ratio": med["ig_s"] / med["floor_s"], "ratio_batched": med["ig_batched_s"] / med["floor_batched_s"]}


def _memory_child(kind: str, name: str, steps: int) -> dict:
    """Run in a fresh process: peak RSS of one forward+backward ('floor') or IG ('ig') on a full-size volume."""
    torch.manual_seed(0)
    model = models.build(name).eval()
    x = torch.randn(1, 4, *BRATS_SHAPE)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if kind == "floor":
        grad_and_score(TargetScore(model, TARGET, None), x)
    else:
        attribute(model, x, "ig", TARGET, region="all", steps=steps, batch=1, progress=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "model": name, "base_mb": base, "peak_mb": peak, "working_mb": peak - base,
            "seconds": time.perf_counter() - t}


def full_size_memory(name: str, steps: int = 2) -> dict:
    out = {}
    for kind in ("floor", "ig"):
        r = subprocess.run([sys.executable, "-m", "sparsesight.bench.attribution", "--_memory", kind,
                            "--_model", name, "--steps", str(steps)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"memory run {kind} failed:\n{r.stderr[-3000:]}")
        out[kind] = json.loads(r.stdout.strip().splitlines()[-1])
    out["ig_steps"] = steps
    out["ratio_working"] = out["ig"]["working_mb"] / max(out["floor"]["working_mb"], 1e-9)
    return out


def faithfulness_table(name: str, data: dict, epochs: int, steps: int, n_eval: int, patch: int,
                       seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    model = models.build(name)
    train(model, data["train"], epochs=epochs, config={"patch_size": [patch] * 3, "seed": seed})
    model.eval()
    rows = []
    for it in data["test"][:n_eval]:
        img, _ = load_image(it["image"])
        x = normalise(img).as_subclass(torch.Tensor)
        case = Path(it["image"]).name.split(".")[0]
        maps = {}
        for m in METHODS:
            t = time.perf_counter()
            maps[m] = (attribute(model, x, m, TARGET, steps=steps, progress=True,
                                 **({"samples": steps} if m == "smoothgrad" else {})),
                       time.perf_counter() - t)
        g = torch.Generator().manual_seed(seed)
        maps["random"] = (torch.rand(x.shape, generator=g), 0.0)
        for m, (a, secs) in maps.items():
            f = deletion_insertion(model, x, a, TARGET, steps=10)
            rows.append({"model": name, "case": case, "method": SHORT.get(m, m), "deletion_auc": f["deletion_auc"],
                         "insertion_auc": f["insertion_auc"], "seconds": secs,
                         "tumour_voxels": int((load_label(it["label"])[0] == TARGET).sum())})
    return rows


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name]
        rand = [r for r in rs if r["method"] == "random"]
        d0, i0 = np.mean([r["deletion_auc"] for r in rand]), np.mean([r["insertion_auc"] for r in rand])
        for m in dict.fromkeys(r["method"] for r in rs):
            mr = [r for r in rs if r["method"] == m]
            d, i = np.mean([r["deletion_auc"] for r in mr]), np.mean([r["insertion_auc"] for r in mr])
            out.append({"model": name, "method": m, "deletion_auc": float(d), "insertion_auc": float(i),
                        "deletion_gain": float(d0 / max(d, 1e-12)), "insertion_gain": float(i / max(i0, 1e-12)),
                        "seconds": float(np.mean([r["seconds"] for r in mr]))})
    return out


def _plot(results: dict, path: Path):
    plt = pyplot()

    summ = results["faithfulness"]
    names = list(dict.fromkeys(r["model"] for r in summ))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, key, title in ((axes[0], "deletion_auc", "deletion AUC (lower is better)"),
                           (axes[1], "insertion_auc", "insertion AUC (higher is better)")):
        for j, n in enumerate(names):
            rs = [r for r in summ if r["model"] == n]
            ax.bar(np.arange(len(rs)) + j * 0.4, [r[key] for r in rs], 0.4, label=n)
            ax.set_xticks(np.arange(len(rs)) + 0.2)
            ax.set_xticklabels([r["method"] for r in rs], rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    cost = results["ig_cost"]
    labels, ig, floor = [], [], []
    for n, c in cost.items():
        labels += [f"{n}\nbatch 1", f"{n}\nbatch {c['batch']}"]
        ig += [c["ig_s"], c["ig_batched_s"]]
        floor += [c["floor_s"], c["floor_batched_s"]]
    xs = np.arange(len(labels))
    axes[2].bar(xs - 0.2, floor, 0.4, label="floor n x (fwd+bwd)")
    axes[2].bar(xs + 0.2, ig, 0.4, label="IG")
    axes[2].set_xticks(xs)
    axes[2].set_xticklabels(labels, fontsize=7)
    axes[2].set_ylabel("s")
    axes[2].set_title(f"IG cost, n = {next(iter(cost.values()))['steps']} steps", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(steps: int = 8, epochs: int = 3, downsample: int = 4, n_cases: int = 4, n_eval: int = 1, patch: int = 32,
        full: bool = False, out: str = "bench/results", seed: int = 0, names=None) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in (names or ("mlcsc", "sum")) if n in models.NAMES]
    data = _dataset(Path("out/bench") / "data", n_cases, downsample, seed)
    img, _ = load_image(data["test"][0]["image"])
    x = normalise(img).as_subclass(torch.Tensor)
    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__} (shared with other jobs while measured)",
           "steps": steps, "downsample_mm": downsample, "epochs": epochs, "ig_cost": {}, "memory": {}}
    for n in names:
        torch.manual_seed(seed)
        res["ig_cost"][n] = ig_cost(models.build(n), x, steps)
        if full:
            res["memory"][n] = full_size_memory(n)
    rows = []
    for n in names:
        rows += faithfulness_table(n, data, epochs, steps, n_eval, patch, seed)
    res["faithfulness_rows"] = rows
    res["faithfulness"] = _summary(rows)
    (out_dir / "attribution.json").write_text(json.dumps(res, indent=2))
    lines = ["model,method,deletion_auc,insertion_auc,deletion_gain_vs_random,insertion_gain_vs_random,seconds"]
    lines += [f"{r['model']},{r['method']},{r['deletion_auc']:.4f},{r['insertion_auc']:.4f},{r['deletion_gain']:.3f},"
              f"{r['insertion_gain']:.3f},{r['seconds']:.2f}" for r in res["faithfulness"]]
    (out_dir / "attribution.csv").write_text("\n".join(lines) + "\n")
    _plot(res, out_dir / "attribution.png")

    print(f"\nAttribution benchmark — {res['machine']}")
    print(f"IG cost, n = {steps} steps on {tuple(x.shape[1:])} x 4 (ratio IG / floor; aim <= 1.2)")
    print(f"{'model':<8}{'fwd+bwd s':>11}{'floor s':>9}{'IG s':>8}{'ratio':>7}"
          f"{'batched floor s':>17}{'IG s':>8}{'ratio':>7}")
    for n, c in res["ig_cost"].items():
        print(f"{n:<8}{c['fwd_bwd_s']:>11.3f}{c['floor_s']:>9.2f}{c['ig_s']:>8.2f}{c['ratio']:>7.2f}"
              f"{c['floor_batched_s']:>17.2f}{c['ig_batched_s']:>8.2f}{c['ratio_batched']:>7.2f}")
    for n, m in res["memory"].items():
        print(f"{n}: full-size {BRATS_SHAPE} x 4 peak RSS: forward+backward {m['floor']['peak_mb']:.0f} MB "
              f"(working {m['floor']['working_mb']:.0f}), IG {m['ig_steps']} steps in chunks of 1 "
              f"{m['ig']['peak_mb']:.0f} MB (working {m['ig']['working_mb']:.0f}); ratio {m['ratio_working']:.2f}")
    print("Deletion / insertion AUC, target enhancing (gain vs the random map of the same run; > 1 is better)")
    print(f"{'model':<8}{'method':<12}{'deletion':>9}{'gain':>7}{'insertion':>10}{'gain':>7}{'s':>8}")
    for r in res["faithfulness"]:
        print(f"{r['model']:<8}{r['method']:<12}{r['deletion_auc']:>9.4f}{r['deletion_gain']:>7.2f}"
              f"{r['insertion_auc']:>10.4f}{r['insertion_gain']:>7.2f}{r['seconds']:>8.1f}")
    print(f"written: {out_dir / 'attribution.csv'}, {out_dir / 'attribution.json'}, {out_dir / 'attribution.png'}")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--downsample", type=int, default=4, help="phantom voxel size in mm (1 = BraTS grid)")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--eval", type=int, default=1, help="held-out cases for the AUC table")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--models", nargs="+", default=["mlcsc", "sum"])
    p.add_argument("--full", action="store_true", help="also measure peak memory on a full-size volume "
                   "(two fresh processes per model; minutes on a CPU)")
    p.add_argument("--out", default="out/bench", help="where results go (recorded runs: --out bench/results)")
    p.add_argument("--_memory", help=argparse.SUPPRESS)
    p.add_argument("--_model", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    log_to_stderr()
    if a._memory:
        print(json.dumps(_memory_child(a._memory, a._model, a.steps)))
        return
    run(a.steps, a.epochs, a.downsample, a.cases, a.eval, a.patch, a.full, a.out, names=a.models)


if __name__ == "__main__":
    main()
