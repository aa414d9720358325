"""Benchmark: ML-CSC against MONAI's UNet on the sample phantoms, same training budget, same run.

    python -m sparsesight.bench.segmentation [--epochs 40] [--downsample 2] [--out out/bench]

Prints a ratio table and writes segmentation.json, segmentation.csv and segmentation.png (Dice bars,
loss curves, timing) under --out. Reported: Dice WT/TC/ET on the held-out cases, parameter counts,
training time, and inference time on one full-size 240x240x155 4-channel volume (median of repeats),
as the ratio ML-CSC / UNet.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import models
from ..data.io import load_image, load_label
from ..metrics import region_dice
from ..models.baselines import unet
from ..preview import pyplot, save_png
from ..runners.segmentation import predict
from ..training import train
from . import setup_process

BRATS_SHAPE = (240, 240, 155)


def _dataset(root: Path, n_cases: int, downsample: int, seed: int) -> dict:
    from ..data.phantom import write_dataset

    ds = root / f"phantom_n{n_cases}_d{downsample}_s{seed}" / "dataset.json"
    if not ds.is_file():
        write_dataset(ds.parent, n_cases=n_cases, seed=seed, downsample=downsample, n_test=max(2, n_cases // 4))
    meta = json.loads(ds.read_text())
    fix = lambda items: [{k: str(ds.parent / v) for k, v in it.items()} for it in items]  # noqa: E731
    return {"train": fix(meta["training"]), "test": fix(meta["test"])}


def _time_inference(model, image: np.ndarray, repeats: int) -> float:
    predict(model, image)  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict(model, image)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _plot(results: dict, path: Path):
    plt = pyplot()

    names = list(results["models"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    regions = ["WT", "TC", "ET"]
    for j, n in enumerate(names):
        r = results["models"][n]
        axes[0].bar(np.arange(3) + j * 0.38, [r["dice"][k] for k in regions], 0.38, label=n,
                    yerr=[r["dice_std"][k] for k in regions], capsize=3)
        axes[1].plot(np.arange(1, len(r["loss"]) + 1), r["loss"], label=n)
    axes[0].set_xticks(np.arange(3) + 0.19)
    axes[0].set_xticklabels(regions)
    axes[0].set_ylim(0, 1)
    axes[0].axhline(0.85, color="gray", ls="--", lw=0.8)
    axes[0].set_title("Dice on held-out phantoms")
    axes[0].legend()
    axes[1].set_title("training loss (DiceCE)")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    axes[2].bar(names, [results["models"][n]["inference_s"] for n in names], color=["C0", "C1"])
    axes[2].set_title(f"inference on {BRATS_SHAPE} x4 (s, {results['threads']} threads)")
    save_png(fig, path)


def run(epochs: int = 40, downsample: int = 2, n_cases: int = 16, seed: int = 0, out: str = "out/bench",
        repeats: int = 3, patch: int = 64) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _dataset(out_dir / "data", n_cases, downsample, seed)
    full = np.random.default_rng(seed).normal(size=(4, *BRATS_SHAPE)).astype(np.float32)
    nets = {"mlcsc": lambda: models.build("mlcsc"), "monai_unet": unet}
    results: dict[str, Any] = {"epochs": epochs, "downsample_mm": downsample, "train_cases": len(data["train"]),
               "test_cases": len(data["test"]), "threads": torch.get_num_threads(),
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
               "models": {}}
    for name, make in nets.items():
        torch.manual_seed(seed)
        model = make()
        stats = train(model, data["train"], epochs=epochs, config={"patch_size": [patch] * 3, "seed": seed})
        dices = []
        for it in data["test"]:
            img, _ = load_image(it["image"])
            lab, _ = load_label(it["label"])
            dices.append(region_dice(predict(model, img), lab))
        results["models"][name] = {
            "params": int(sum(p.numel() for p in model.parameters())),
            "train_s": stats["seconds"], "loss": stats["loss"],
            "dice": {k: float(np.mean([d[k] for d in dices])) for k in ("WT", "TC", "ET")},
            "dice_std": {k: float(np.std([d[k] for d in dices])) for k in ("WT", "TC", "ET")},
            "inference_s": _time_inference(model, full, repeats),
        }
    a, b = results["models"]["mlcsc"], results["models"]["monai_unet"]
    results["ratios"] = {"inference_time": a["inference_s"] / b["inference_s"], "params": a["params"] / b["params"],
                         "train_time": a["train_s"] / b["train_s"]}
    (out_dir / "segmentation.json").write_text(json.dumps(results, indent=2))
    rows = ["model,params,train_s,dice_WT,dice_TC,dice_ET,inference_s"]
    for n, r in results["models"].items():
        rows.append(f"{n},{r['params']},{r['train_s']:.1f},{r['dice']['WT']:.3f},{r['dice']['TC']:.3f},"
                    f"{r['dice']['ET']:.3f},{r['inference_s']:.2f}")
    (out_dir / "segmentation.csv").write_text("\n".join(rows) + "\n")
    _plot(results, out_dir / "segmentation.png")
    print(f"\nML-CSC vs MONAI UNet — {epochs} epochs each, {len(data['train'])} train / {len(data['test'])} held-out "
          f"phantoms at {downsample} mm; {results['machine']}")
    print(f"{'model':<12}{'params':>10}{'train s':>9}{'WT':>7}{'TC':>7}{'ET':>7}{'infer s':>9}")
    for n, r in results["models"].items():
        print(f"{n:<12}{r['params']:>10}{r['train_s']:>9.0f}{r['dice']['WT']:>7.3f}{r['dice']['TC']:>7.3f}"
              f"{r['dice']['ET']:>7.3f}{r['inference_s']:>9.2f}")
    ra = results["ratios"]
    print(f"ratio mlcsc/unet: inference time {ra['inference_time']:.2f}x (aim <= 1.0), params {ra['params']:.3f}x, "
          f"training time {ra['train_time']:.2f}x; WT Dice aim >= 0.85: {a['dice']['WT']:.3f}")
    print(f"written: {out_dir / 'segmentation.csv'}, {out_dir / 'segmentation.png'}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--downsample", type=int, default=2, help="phantom voxel size in mm (1 = BraTS grid)")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    setup_process()
    run(a.epochs, a.downsample, a.cases, a.seed, a.out, a.repeats, a.patch)


if __name__ == "__main__":
    main()
