"""Benchmark: robustness of SUM, SUM_Rec and MONAI's UNet to noise and blur (seed 003, App. E / Table 2).

    python -m sparsesight.bench.robustness [--epochs 60] [--samples 2] [--downsample 4] [--cases 12] [--threads 1]
                                           [--models SUM SUM_Rec monai_unet [unet_bn unet_nobn mlcsc]]
                                           [--range-noise P F] [--out bench/results]

The models are trained in one run with the same budget (cases, epochs, patches per case and epoch, seed,
learning-rate schedule; each with its own objective: SUM/SUM_Rec soft IoU (+ 0.35 L1 reconstruction) with AdamW,
the UNets DiceCE with Adam, ML-CSC its design's loss) and evaluated on the held-out phantoms: Dice WT/TC/ET on
clean inputs, with additive Gaussian noise of sigma = a fraction of each channel's dynamic range, and with
Gaussian blur of several widths (voxels). Noise is added, and blur is cut back, inside the brain (non-zero
voxels), so that the z-score normalisation's brain mask is the one of the clean image. `--models` adds the
paper's own U-Nets (batch norm, no normalisation) and the served ML-CSC design to the three.
Also reported: parameter counts and inference time (runners.segmentation.predict) on one 96^3 sliding window of 4
channels (--time-brats: a whole 240x240x155 volume).
Writes robustness.json, robustness.csv and robustness.png under --out and prints the ratio table against UNet;
for SUM and SUM_Rec also the impulse / frequency response of their filter banks with SDS, FDS, FDV and the alpha
sweep on a held-out case (robustness_response/<model>/), the paper's Fig. 3 comparison.
--range-noise P F trains every model with seed 003's App. G noise as well (with probability P, sigma up to F of the
dynamic range; the recipe leaves it off): the noise robustness the paper's augmentation buys.
Aims (issue 4): SUM parameters <= 1/10 of UNet's; SUM_Rec's WT Dice drop at the strongest noise <= half of
UNet's; SUM inference time <= 0.5x UNet's.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy import ndimage

from ..data.io import load_image, load_label
from ..metrics import region_dice
from ..models import build
from ..models.baselines import unet
from ..models.sum import sum_rec, sum_seg
from ..preview import pyplot, save_png
from ..runners.segmentation import predict
from ..training import train
from . import setup_process
from .segmentation import BRATS_SHAPE, _dataset, _time_inference

logger = logging.getLogger(__name__)

REGIONS = ("WT", "TC", "ET")
WINDOW = (96, 96, 96)  # one sliding window of runners.segmentation.predict: the unit every volume's inference time scales with
MODELS: dict[str, Callable[[], Any]] = {"SUM": sum_seg, "SUM_Rec": sum_rec, "monai_unet": unet,
                                        # on request (--models): the paper's own U-Nets (App. E, Table 2), and the
                                        # served ML-CSC (seed 000's sparse coding, its shipped design)
                                        "unet_bn": partial(unet, norm="batch"), "unet_nobn": partial(unet, norm=None),
                                        "mlcsc": partial(build, "mlcsc", {})}
DEFAULT_MODELS = ("SUM", "SUM_Rec", "monai_unet")
NAMES = {"SUM": "SUM", "SUM_Rec": "SUM_Rec", "monai_unet": "MONAI UNet", "unet_bn": "U-Net (batch norm)",
         "unet_nobn": "U-Net_NoBN", "mlcsc": "ML-CSC"}


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """x + n inside the brain, n ~ N(0, (sigma * dynamic range of the channel)^2) (App. E: 10 % of the range)."""
    brain = np.any(image != 0, axis=0)
    out = image.copy()
    for c in range(image.shape[0]):
        vals = image[c][brain]
        span = float(vals.max() - vals.min()) if vals.size else 0.0
        out[c][brain] += (sigma * span * rng.standard_normal(vals.size)).astype(image.dtype)
    return out


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of width `sigma` voxels per channel (App. E: sigma_blur = 1), kept inside the brain."""
    brain = np.any(image != 0, axis=0)
    return np.stack([ndimage.gaussian_filter(ch, sigma) * brain for ch in image]).astype(image.dtype)


def corruptions(noise: list[float], blurs: list[float]) -> list[tuple[str, float]]:
    return [("clean", 0.0)] + [("noise", s) for s in noise] + [("blur", s) for s in blurs]


def evaluate(model, cases: list[dict], conds: list[tuple[str, float]], seed: int) -> dict:
    """Mean and std of Dice per region for every (corruption, level) over the held-out cases."""
    per = {c: [] for c in conds}
    for k, it in enumerate(cases):
        img, _ = load_image(it["image"])
        lab, _ = load_label(it["label"])
        roi = [-(-s // 16) * 16 for s in img.shape[1:]]  # one window per case (a multiple of 2**4) for every model
        for kind, level in conds:
            x = img if kind == "clean" else (add_noise(img, level, np.random.default_rng(seed + 1000 * k))
                                             if kind == "noise" else blur(img, level))
            per[(kind, level)].append(region_dice(predict(model, x, roi_size=roi), lab))
    return {f"{kind}:{level:g}": {"kind": kind, "level": level,
                                  "dice": {r: float(np.mean([d[r] for d in ds])) for r in REGIONS},
                                  "dice_std": {r: float(np.std([d[r] for d in ds])) for r in REGIONS}}
            for (kind, level), ds in per.items()}


def _plot(results: dict, path: Path):
    plt = pyplot()

    names = list(results["models"])
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for j, (kind, xlabel) in enumerate((("noise", "noise sigma (fraction of dynamic range)"),
                                        ("blur", "blur sigma (voxels)"))):
        for n in names:
            ev = results["models"][n]["eval"]
            pts = [(0.0, ev["clean:0"]["dice"]["WT"])] + sorted(
                (e["level"], e["dice"]["WT"]) for e in ev.values() if e["kind"] == kind)
            axes[j].plot(*zip(*pts), "o-", label=n)
        axes[j].set_xlabel(xlabel)
        axes[j].set_ylabel("Dice WT")
        axes[j].set_ylim(0, 1)
        axes[j].set_title(f"whole tumour Dice under {kind}")
        axes[j].grid(alpha=0.3)
        axes[j].legend(fontsize=8)
    axes[2].bar(names, [results["models"][n]["params"] for n in names], color=[f"C{i}" for i in range(len(names))])
    axes[2].set_yscale("log")
    for ax in axes[2:]:
        ax.tick_params(axis="x", labelrotation=30)
    axes[2].set_title("parameters")
    timed = [n for n in names if results["models"][n].get("inference_s")]
    axes[3].bar(timed, [results["models"][n]["inference_s"] for n in timed], color=[f"C{names.index(n)}" for n in timed])
    axes[3].set_title(f"inference on {tuple(results['time_shape'])} x4 (s, {results['threads']} threads)")
    save_png(fig, path)


def run(epochs: int = 60, downsample: int = 4, n_cases: int = 12, seed: int = 0, out: str = "bench/results",
        patch: int = 32, noise=(0.05, 0.1, 0.2), blurs=(1.0, 2.0), repeats: int = 3, time_inference: bool = True,
        data_dir: str = "out/bench/data", time_shape=WINDOW, samples: int = 2, threads: int | None = 1,
        range_noise: tuple[float, float] | None = None, models=DEFAULT_MODELS, command: str | None = None) -> dict:
    unknown = [n for n in models if n not in MODELS]
    if unknown or not set(DEFAULT_MODELS) <= set(models):
        raise ValueError(f"models must include {list(DEFAULT_MODELS)} and come from {list(MODELS)}; got {list(models)}")
    if threads:  # on a shared CPU more OpenMP threads than free cores make every convolution many times slower
        torch.set_num_threads(threads)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _dataset(Path(data_dir), n_cases, downsample, seed)
    train_noise = list(range_noise) if range_noise else None  # as train_config and the record hold it
    conds = corruptions(list(noise), list(blurs))
    results: dict[str, Any] = {"epochs": epochs, "downsample_mm": downsample, "patch": patch, "samples_per_image": samples,
               "train_cases": len(data["train"]), "range_noise": train_noise,
               "test_cases": len(data["test"]), "threads": torch.get_num_threads(),
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}",
               "corruptions": [f"{k}:{v:g}" for k, v in conds], "models": {}, "command": command}
    full = np.random.default_rng(seed).normal(size=(4, *time_shape)).astype(np.float32) if time_inference else None
    results["time_shape"] = list(time_shape)
    for name in models:
        torch.manual_seed(seed)
        model = MODELS[name]()
        logger.info(f"[{name}] training {epochs} epochs on {len(data['train'])} phantoms ({downsample} mm)")
        stats = train(model, data["train"], epochs=epochs,
                      config={"patch_size": [patch] * 3, "samples_per_image": samples, "seed": seed,
                              "range_noise": train_noise})
        logger.info(f"[{name}] evaluating {len(conds)} conditions x {len(data['test'])} held-out cases")
        r = {"params": int(sum(p.numel() for p in model.parameters())), "train_s": stats["seconds"],
             "loss": stats["loss"], "eval": evaluate(model, data["test"], conds, seed)}
        if hasattr(model, "ed"):  # SUM, SUM_Rec: what their filter banks pass (App. B, C; the paper's Fig. 3)
            r["response"] = filter_bank_response(model, data["test"][0], out_dir / "robustness_response" / name)
        if time_inference and name != "SUM":  # SUM and SUM_Rec share one architecture: time it once
            logger.info(f"[{name}] timing inference on {tuple(time_shape)}")
            assert full is not None
            r["inference_s"] = _time_inference(model, full, repeats)
        results["models"][name] = r
    if time_inference:  # SUM and SUM_Rec share one architecture
        results["models"]["SUM"]["inference_s"] = results["models"]["SUM_Rec"]["inference_s"]
    results["ratios"] = ratios(results, max(noise) if noise else None)
    (out_dir / "robustness.json").write_text(json.dumps(results, indent=2))
    rows = ["model,params,train_s,inference_s,condition,level," + ",".join(f"dice_{r}" for r in REGIONS)]
    for n, r in results["models"].items():
        for e in r["eval"].values():
            rows.append(f"{n},{r['params']},{r['train_s']:.1f},{r.get('inference_s', float('nan')):.2f},{e['kind']},"
                        f"{e['level']:g}," + ",".join(f"{e['dice'][k]:.4f}" for k in REGIONS))
    (out_dir / "robustness.csv").write_text("\n".join(rows) + "\n")
    _plot(results, out_dir / "robustness.png")
    report(results)
    print(f"written: {out_dir / 'robustness.csv'}, {out_dir / 'robustness.json'}, {out_dir / 'robustness.png'}")
    return results


def filter_bank_response(model, case: dict, out_dir: Path) -> dict:
    """Impulse response of ED_{alpha=0} (thresholds at zero), its SDS / FDS / FDV per channel pair, and the alpha
    sweep on one held-out case (response.png/.csv, alpha_sweep.png/.csv in out_dir). Returns the means of the
    metrics over the matched pairs (input channel = output channel): the paper expects SUM_Seg's response to
    spread wider in space (SDS) and pass a narrower band (FDS) than SUM_Rec's."""
    from .. import MODALITIES
    from ..explain.response import explain
    from ..runners.segmentation import normalise

    img, _ = load_image(case["image"])
    lab, _ = load_label(case["label"])
    rows = explain(model, normalise(img), out_dir, names=MODALITIES, label=lab)["metrics"]
    matched = [row for row in rows if row["input"] == row["output"]]
    return {k: float(np.mean([row[k] for row in matched])) for k in ("SDS", "FDS", "FDV", "dc_gain")}


def ratios(results: dict, strongest_noise: float | None) -> dict:
    """Ratios against MONAI's UNet: parameters, inference time, WT Dice drop at the strongest noise and blur; the
    WT drops of the paper's U-Nets and ML-CSC where they ran (`wt_drop_<kind>_<unet_bn|unet_nobn|mlcsc>`)."""
    m = results["models"]
    u = m["monai_unet"]
    out = {}
    for n in ("SUM", "SUM_Rec"):
        out[n] = {"params": m[n]["params"] / u["params"]}
        if u.get("inference_s"):
            out[n]["inference_time"] = m[n]["inference_s"] / u["inference_s"]
        for kind, level in (("noise", strongest_noise), ("blur", max((e["level"] for e in u["eval"].values()
                                                                      if e["kind"] == "blur"), default=None))):
            if level is None:
                continue
            key = f"{kind}:{level:g}"
            drop = lambda r, key=key: r["eval"]["clean:0"]["dice"]["WT"] - r["eval"][key]["dice"]["WT"]  # noqa: E731
            out[n][f"wt_drop_{kind}"] = drop(m[n])
            out[n][f"wt_drop_{kind}_unet"] = drop(u)
            out[n][f"wt_drop_{kind}_ratio"] = drop(m[n]) / drop(u) if drop(u) > 1e-9 else float("nan")
            for other in (k for k in m if k not in DEFAULT_MODELS):  # the models asked for beside the three
                out[n][f"wt_drop_{kind}_{other}"] = drop(m[other])
    return out


def markdown_tables(results: dict) -> list[str]:
    """bench/README.md's two tables of a recorded run: Dice under each corruption, and the filter-bank responses."""
    m, u = results["models"], results["models"]["monai_unet"]
    levels = {kind: [float(c.split(":")[1]) for c in results["corruptions"] if c.startswith(f"{kind}:")]
              for kind in ("noise", "blur")}
    lines = [f"| model | params (× UNet) | inference s (× UNet) | clean WT / TC / ET | noise σ "
             f"{' / '.join(f'{v:g}' for v in levels['noise'])} (WT) | blur {' / '.join(f'{v:g}' for v in levels['blur'])} "
             "(WT) |", "|---|---|---|---|---|---|"]
    for n, r in m.items():
        unet = n == "monai_unet"
        params = f"{r['params']:,}" + ("" if unet else f" ({r['params'] / u['params']:.3f}×)")
        inf = ("not timed" if not r.get("inference_s") else
               f"{r['inference_s']:.2f}" + ("" if unet else f" ({r['inference_s'] / u['inference_s']:.2f}×)"))
        clean = " / ".join(f"{r['eval']['clean:0']['dice'][k]:.3f}" for k in ("WT", "TC", "ET"))
        noise, blur_ = (" / ".join(f"{r['eval'][f'{kind}:{v:g}']['dice']['WT']:.3f}" for v in values)
                        for kind in ("noise", "blur") for values in [levels[kind]])
        lines.append(f"| {NAMES.get(n, n)} | {params} | {inf} | {clean} | {noise} | {blur_} |")
    lines += ["", "| model | SDS (voxels) | FDS | FDV | DC gain Σ r |", "|---|---|---|---|---|"]
    for n, r in m.items():
        if "response" in r:
            q = r["response"]
            lines.append(f"| {NAMES.get(n, n)} | {q['SDS']:.2f} | {q['FDS']:.2f} | {q['FDV']:,.0f} | "
                         f"{q['dc_gain']:.2f} |")
    return lines


def report(results: dict):
    print(f"\nSUM / SUM_Rec vs MONAI UNet — {results['epochs']} epochs each, {results['train_cases']} train / "
          f"{results['test_cases']} held-out phantoms at {results['downsample_mm']} mm; {results['machine']}"
          + (f"; trained with range noise p {results['range_noise'][0]:g}, sigma <= {results['range_noise'][1]:g} "
             "of the range" if results.get("range_noise") else ""))
    conds = results["corruptions"]
    print(f"{'model':<11}{'params':>9}{'infer s':>9}  " + "".join(f"{c:>11}" for c in conds) + "   (Dice WT)")
    for n, r in results["models"].items():
        print(f"{n:<11}{r['params']:>9}{r.get('inference_s', float('nan')):>9.2f}  "
              + "".join(f"{r['eval'][c]['dice']['WT']:>11.3f}" for c in conds))
    for n, ra in results["ratios"].items():
        parts = [f"params {ra['params']:.3f}x (aim <= 0.1)"]
        if "inference_time" in ra:
            parts.append(f"inference time {ra['inference_time']:.2f}x (aim <= 0.5)")
        if "wt_drop_noise" in ra:
            parts.append(f"WT drop at strongest noise {ra['wt_drop_noise']:+.3f} vs UNet "
                         f"{ra['wt_drop_noise_unet']:+.3f} = {ra['wt_drop_noise_ratio']:.2f}x (aim <= 0.5 for SUM_Rec)")
        if "wt_drop_blur" in ra:
            parts.append(f"at strongest blur {ra['wt_drop_blur']:+.3f} vs {ra['wt_drop_blur_unet']:+.3f}")
        print(f"ratio {n}/unet: " + "; ".join(parts))
    for n, r in results["models"].items():
        if "response" in r:
            print(f"{n} filter banks (ED_alpha=0, matched channels): " + ", ".join(
                f"{k} {v:.3f}" for k, v in r["response"].items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--downsample", type=int, default=4, help="phantom voxel size in mm (1 = BraTS grid)")
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--samples", type=int, default=2, help="patches per case and epoch (samples_per_image)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave PyTorch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, nargs="*", default=[0.05, 0.1, 0.2])
    p.add_argument("--blur", type=float, nargs="*", default=[1.0, 2.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--range-noise", type=float, nargs=2, metavar=("P", "F"),
                   help="train every model with seed 003's App. G noise: with probability P, sigma up to F of each "
                        "channel's dynamic range (transforms.RandRangeNoised); off by default, as in the recipe")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS),
                   help="the models to train and compare; unet_bn and unet_nobn are the paper's U-Nets (App. E), "
                        "mlcsc the served ML-CSC design")
    p.add_argument("--no-timing", action="store_true", help="skip the inference timing")
    p.add_argument("--time-brats", action="store_true",
                   help=f"time inference on a full {BRATS_SHAPE} volume instead of one {WINDOW} window")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--data", default="out/bench/data", help="where the phantom cases are generated (cached)")
    a = p.parse_args(argv)
    setup_process()
    run(a.epochs, a.downsample, a.cases, a.seed, a.out, a.patch, a.noise, a.blur, a.repeats, not a.no_timing, a.data,
        BRATS_SHAPE if a.time_brats else WINDOW, a.samples, a.threads, a.range_noise, a.models,
        "python -m sparsesight.bench.robustness " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
