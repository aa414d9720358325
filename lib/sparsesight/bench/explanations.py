"""Benchmark: are the decompositions the bundles show true? (issue 16)

    python -m sparsesight.bench.explanations [--epochs 40] [--sum-epochs 10] [--out bench/results]
                                             [--checkpoint NAME=PATH ...] [--cases 12] [--downsample 1]

Trains (or loads with --checkpoint) ML-CSC design 2 (models/mlcsc.py: reconstruction term beta and localisation
term eta), its ablation beta = eta = 0, the first release (design 1) and SUM on the sample phantoms (10 training,
2 held-out cases at 1 mm by default), then, on each held-out case, writes the model's result bundle with the
served runner (runners/*.py) and reads back what a clinician would be shown: the explanation-quality metrics of
the manifest (explain/quality.py), Dice WT/TC/ET of the bundle's label, and the localisation ratio of every tumour
class's component in the *ground-truth* region. Inference time (sliding window over one held-out case) is
timed against MONAI's UNet in the same run. Writes explanations.json, and explanations_<model>.png (components per
class next to the label, axial/coronal/sagittal through the tumour) under --out, and prints the table with the
aims of issue 16. Checkpoints are kept under out/bench/explanations_models/d<mm>_n<cases>_s<seed> and reused by a second run
(--retrain trains again). --betas b1,b2,... adds design-2 variants with those reconstruction weights and
writes beta_sweep.png (Dice and reconstruction error against beta: issue 16's trade-off curve).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint, models
from ..bundle import read as read_bundle
from ..data.io import load_image, load_label
from ..explain import quality
from ..metrics import region_dice
from ..models.baselines import unet
from ..models.mlcsc import default_config
from ..preview import png_bytes, pyplot
from ..runners import get as runner_of
from ..training import train
from . import setup_process
from .segmentation import _time_inference

logger = logging.getLogger(__name__)

#: name -> (registered model, config); the served ML-CSC is "mlcsc" (design 2 defaults)
VARIANTS: dict[str, tuple[str, dict]] = {
    "mlcsc": ("mlcsc", {}),
    "mlcsc_beta0": ("mlcsc", {"beta": 0.0, "eta": 0.0}),
    "mlcsc_design1": ("mlcsc", {"design": 1}),
    # fewer unrolled steps (T x M = 2, 1; served: 4): the inference-time trade-off of issue 16
    "mlcsc_steps2": ("mlcsc", {"T": 1, "M": 2}),
    "mlcsc_steps1": ("mlcsc", {"T": 1, "M": 1}),
    "sum": ("sum", {}),
}
TUMOUR = {1: "oedema", 2: "non-enhancing core", 3: "enhancing"}


def _dataset(root: Path, n_cases: int, downsample: int, seed: int, n_test: int) -> dict:
    from ..data.phantom import write_dataset

    ds = root / f"phantom_n{n_cases}_d{downsample}_s{seed}_t{n_test}" / "dataset.json"
    if not ds.is_file():
        write_dataset(ds.parent, n_cases=n_cases, seed=seed, downsample=downsample, n_test=n_test)
    meta = json.loads(ds.read_text())
    fix = lambda items: [{k: str(ds.parent / v) for k, v in it.items()} for it in items]  # noqa: E731
    return {"train": fix(meta["training"]), "test": fix(meta["test"])}


def _model(name: str, data: dict, epochs: int, store: Path, given: dict, patch: int, seed: int, retrain: bool):
    """(model, version, training {epochs, seconds}) of variant `name`: --checkpoint, else the stored one, else trained."""
    kind, config = VARIANTS[name]
    path = Path(given[name]) if name in given else store / f"{name}.pt"
    if path.is_file() and not (retrain and name not in given):
        model, meta = checkpoint.load(path, expect=kind)
        logger.info("%s: %s checkpoint %s (%s)", name, "given" if name in given else "stored", path.name,
                    meta.get("train"))
        return model, meta["version"], dict(meta.get("train") or {})
    torch.manual_seed(seed)
    model = models.build(kind, config)
    logger.info("training %s (%s %s) for %d epochs on %d cases", name, kind, config or "defaults", epochs,
                len(data["train"]))
    stats = train(model, data["train"], epochs=epochs, config={"patch_size": [patch] * 3, "seed": seed},
                  show_progress=False, progress=lambda s: logger.info("%s epoch %d/%d loss %.4f (%.0f s)", name,
                                                                    s["epoch"], s["epochs"], s["loss"], s["seconds"]))
    store.mkdir(parents=True, exist_ok=True)
    version = checkpoint.save(path, model, kind, model.config, meta={"train": {"epochs": epochs,
                                                                                "seconds": stats["seconds"]}})
    return model.eval(), version, {"epochs": epochs, "seconds": stats["seconds"]}


def _case_metrics(name: str, model, version: str, item: dict, work: Path) -> tuple[dict, dict]:
    """Metrics of one held-out case from the bundle the served runner writes; and the arrays for the figure."""
    kind = VARIANTS[name][0]
    outputs = ["label", "quality"] + (["components"] if kind == "mlcsc" else [])
    path = runner_of(kind).run_bundle(model, name, version, item["image"], Path(item["image"]).name,
                                      work / f"{name}.zip", outputs=outputs)
    b = read_bundle(path)
    eq = b.manifest["explanation_quality"]
    label = b.volume("label")[0]
    truth, _ = load_label(item["label"])
    out: dict[str, Any] = {"dice": region_dice(label, truth), "quality": eq}
    arrays: dict[str, Any] = {"label": label, "truth": truth}
    if kind == "mlcsc":
        image, _ = load_image(item["image"])
        brain = quality.brain_mask(image)
        names = [o["name"] for o in b.outputs if o["name"].startswith("component/")]
        classes = sorted({n.split("/")[1] for n in names}, key=[*("background",), *TUMOUR.values()].index)
        comps = np.stack([np.stack([b.volume(f"component/{c}/{m}")[0] for m in sorted({n.split('/')[2] for n in names})])
                          for c in classes])
        out["localisation_truth"] = {TUMOUR[c]: quality.localisation_ratio(comps[c], truth == c, brain) for c in TUMOUR}
        arrays["components"] = np.sqrt((comps.astype(np.float64) ** 2).sum(1))  # |component_c| over modalities
        arrays["image"] = image
    b.close()
    return out, arrays


def _figure(name: str, arrays: dict, path: Path) -> None:
    """Rows axial/coronal/sagittal through the tumour's centre; columns FLAIR, truth, label, |component_c|."""
    plt = pyplot()
    truth, comps, image = arrays["truth"], arrays["components"], arrays["image"]
    centre = [int(round(v.mean())) for v in np.nonzero(truth > 0)] if (truth > 0).any() else [s // 2 for s in truth.shape]
    views = {"axial": lambda a: a[:, :, centre[2]].T, "coronal": lambda a: a[:, centre[1], :].T,
             "sagittal": lambda a: a[centre[0], :, :].T}
    cols = ["FLAIR", "truth", "label"] + [f"|component| {c}" for c in ("background", *TUMOUR.values())]
    fig, axes = plt.subplots(3, len(cols), figsize=(2.1 * len(cols), 6.6))
    vmax = float(np.percentile(comps, 99.5)) or 1.0
    for r, (view, cut) in enumerate(views.items()):
        panels = [image[0], truth, arrays["label"]] + list(comps)
        for c, (title, panel) in enumerate(zip(cols, panels)):
            ax = axes[r, c]
            kw = {"cmap": "viridis", "vmin": 0, "vmax": 3} if title in ("truth", "label") else \
                 {"cmap": "magma", "vmin": 0, "vmax": vmax} if title.startswith("|") else {"cmap": "gray"}
            ax.imshow(cut(panel), origin="lower", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
        axes[r, 0].set_ylabel(view, fontsize=8)
    fig.suptitle(f"{name}: per-class components (same colour scale) next to the label", fontsize=9)
    path.write_bytes(png_bytes(fig, dpi=80))


def _mean(vals) -> float:
    return float(np.mean(_finite(vals)))


def _finite(vals) -> list[float]:
    """The finite values of `vals` (a manifest writes a non-finite figure as the string "nan"), or [nan]."""
    v = [float(x) for x in vals if x is not None and np.isfinite(float(x))]
    return v or [float("nan")]


def _ratio(a, b) -> float:
    """a / b of two manifest figures (b floored at 1e-12)."""
    return float(a) / max(float(b), 1e-12)


def _summary(cases: list[dict], kind: str) -> dict:
    """Means over the held-out cases of the figures of issue 16's table."""
    q = [c["quality"] for c in cases]
    rec = [m for e in q for m in e.get("reconstruction", {}).get("per_modality", {}).values()]
    s: dict[str, Any] = {
        "dice": {k: _mean(c["dice"][k] for c in cases) for k in ("WT", "TC", "ET")},
        "relative_error_max": max(_finite(m["relative_error"] for m in rec)),
        "relative_error_mean": _mean(m["relative_error"] for m in rec),
        "correlation_min": min(_finite(m["correlation"] for m in rec)),
        "energy_in_brain_min": min(_finite(m["energy_in_brain"] for m in rec)),
        "lattice_share_max": max(_finite(m["lattice_share"] for m in rec)),
        "image_lattice_share_max": max(_finite(m["image_lattice_share"] for m in rec)),
        "lattice_vs_image_max": max(_finite(_ratio(m["lattice_share"], m["image_lattice_share"]) for m in rec)),
        "faithful_cases": sum(bool(e.get("faithful")) for e in q),
    }
    sig = [m for e in q for m in e.get("output_signal", {}).get("per_modality", {}).values()]
    if sig:  # SUM's ED_alpha(x) (its reconstruction above is ED_0(x), the filter banks alone)
        gain = [abs(float(m["tumour_correlation"])) - abs(float(m["image_tumour_correlation"])) for m in sig]
        removed = _finite(m["removed_by_shrinkage"] for m in sig)
        s["output_signal"] = {
            "removed_by_shrinkage_min": min(removed), "removed_by_shrinkage_max": max(removed),
            "tumour_correlation_gain_min": min(_finite(gain)),
            "energy_in_brain_min": min(_finite(m["energy_in_brain"] for m in sig)),
            "lattice_vs_image_max": max(_finite(_ratio(m["lattice_share"], m["image_lattice_share"]) for m in sig)),
            "faithful_cases": sum(not e["output_signal"]["flags"] for e in q)}
    sh = q[0].get("shrinkage")
    if sh:  # SUM: is the soft-shrinkage shrinking?
        s["zeroed_share_mean"] = _mean(e["shrinkage"]["zeroed_share_mean"] for e in q)
        s["negative_thresholds"], s["thresholds"] = sh["negative_thresholds"], sh["thresholds"]
    if kind == "mlcsc":
        s["localisation_truth"] = {c: _mean(case["localisation_truth"][c] for case in cases) for c in TUMOUR.values()}
        p = q[0].get("parameters", {})
        s["min_threshold"], s["max_step_norm"] = p.get("min_threshold"), p.get("max_step_norm")
        s["negative_thresholds"] = len(p.get("negative_thresholds", []))
        conv = q[0].get("convergence", {}).get("residual_per_step")
        s["residual_per_step"] = conv
    return s


def aims_met(s: dict) -> dict:
    """Which of issue 16's aims a summary meets (None where it does not apply)."""
    a = quality.AIMS
    loc = s.get("localisation_truth")
    return {
        "relative_error": s["relative_error_max"] <= a["relative_error_max"],
        "energy_in_brain": s["energy_in_brain_min"] >= a["energy_in_brain_min"],
        "lattice": s["lattice_vs_image_max"] <= a["lattice_share_max_vs_image"],
        "localisation": None if loc is None else all(v >= a["localisation_ratio_min"] for v in loc.values()),
        "parameters": None if "negative_thresholds" not in s else (
            s["negative_thresholds"] == 0 and (s.get("max_step_norm") or 0) <= 1.0),
        "dice": s["dice"]["WT"] >= 0.90 and s["dice"]["TC"] >= 0.80 and s["dice"]["ET"] >= 0.75,
    }


def run(epochs: int = 40, sum_epochs: int = 10, out: str = "bench/results", n_cases: int = 12, downsample: int = 1,
        seed: int = 0, n_test: int = 2, checkpoints: dict | None = None, variants=tuple(VARIANTS), patch: int = 64,
        repeats: int = 1, retrain: bool = False, timing: bool = True, data_root: str = "out/bench/data",
        command: str | None = None) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _dataset(Path(data_root), n_cases, downsample, seed, n_test)
    # one folder per data set: a checkpoint trained on other phantoms or another grid is never reused
    store = Path(data_root).parent / "explanations_models" / f"d{downsample}_n{n_cases}_s{seed}"
    results: dict[str, Any] = {
        "command": f"python -m sparsesight.bench.explanations --epochs {epochs} --sum-epochs {sum_epochs} "
                   f"--cases {n_cases} --downsample {downsample}",
        "downsample_mm": downsample, "train_cases": len(data["train"]), "test_cases": len(data["test"]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}",
        "aims": {**quality.AIMS, "dice": {"WT": 0.90, "TC": 0.80, "ET": 0.75}, "inference_time_ratio_max": 1.0},
        "models": {}}
    figure_arrays = {}
    timing_image = load_image(data["test"][0]["image"])[0] if timing else None  # one case, every model
    for name in variants:
        kind = VARIANTS[name][0]
        model, version, trained = _model(name, data, sum_epochs if kind == "sum" else epochs, store,
                                         checkpoints or {}, patch, seed, retrain)
        cases = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, item in enumerate(data["test"]):
                logger.info("%s: bundle of held-out case %d/%d", name, i + 1, len(data["test"]))
                metrics, arrays = _case_metrics(name, model, version, item, Path(tmp))
                cases.append(metrics)
                if i == 0 and kind == "mlcsc":
                    figure_arrays[name] = arrays
        summary = _summary(cases, kind)
        results["models"][name] = {"model": kind, "config": model.config if hasattr(model, "config") else {},
                                   "version": version, "train": trained, "summary": summary,
                                   "aims_met": aims_met(summary), "cases": cases}
        if name in figure_arrays:
            png = out_dir / f"explanations_{name}.png"
            _figure(name, figure_arrays.pop(name), png)
            results["models"][name]["figure"] = png.name
        if timing_image is not None and kind == "mlcsc":
            results["models"][name]["inference_s"] = _time_inference(model, timing_image, repeats)
    if timing_image is not None:
        results["unet_inference_s"] = _time_inference(unet().eval(), timing_image, repeats)
        for r in results["models"].values():
            if "inference_s" in r:
                r["inference_time_ratio"] = r["inference_s"] / results["unet_inference_s"]
    sweep = beta_sweep(results)
    if len(sweep) >= 2:
        results["beta_sweep"] = sweep
        (out_dir / "beta_sweep.png").write_bytes(_sweep_png(sweep, results["downsample_mm"]))
    steps = steps_sweep(results)
    if len(steps) >= 2:
        results["steps_sweep"] = steps
        (out_dir / "steps_sweep.png").write_bytes(_steps_png(steps, results["downsample_mm"]))
    if command:
        results["command"] = command
    (out_dir / "explanations.json").write_text(json.dumps(quality.jsonable(results), indent=2))
    _print(results, out_dir)
    return results


def _design2_variants(results: dict):
    """(name, result, config, summary) of each design-2 ML-CSC variant of a run: the points of its sweeps."""
    for name, r in results["models"].items():
        cfg = r.get("config") or {}
        if r["model"] == "mlcsc" and cfg.get("design", 2) == 2:
            yield name, r, cfg, r["summary"]


def beta_sweep(results: dict) -> list[dict]:
    """The design-2 ML-CSC variants of a run ordered by beta: the trade-off of issue 16 between the reconstruction
    term's weight, the reconstruction error and the Dice."""
    rows = []
    for name, _r, cfg, s in _design2_variants(results):
        if _steps(cfg) != _steps(default_config()):
            continue
        rows.append({"variant": name, "beta": float(cfg.get("beta", 0.0)), "eta": float(cfg.get("eta", 0.0)),
                     "relative_error_max": s["relative_error_max"], "relative_error_mean": s["relative_error_mean"],
                     "dice": s["dice"], "localisation_truth": s.get("localisation_truth")})
    return sorted(rows, key=lambda r: (r["beta"], r["eta"]))


def _steps(cfg: dict) -> int:
    """T x M of a variant's config (a key it does not set: the default's)."""
    d = default_config()
    return int(cfg.get("T", d["T"])) * int(cfg.get("M", d["M"]))


def steps_sweep(results: dict) -> list[dict]:
    """The design-2 ML-CSC variants of a run with the served beta, eta ordered by their unrolled steps T x M: the
    trade-off of issue 16 between inference time, Dice and the explanation (localisation, reconstruction)."""
    d = default_config()
    rows = []
    for name, r, cfg, s in _design2_variants(results):
        if (cfg.get("beta"), cfg.get("eta")) != (d["beta"], d["eta"]):
            continue
        rows.append({"variant": name, "steps": _steps(cfg), "T": cfg.get("T"), "M": cfg.get("M"),
                     "inference_time_ratio": r.get("inference_time_ratio"), "inference_s": r.get("inference_s"),
                     "relative_error_max": s["relative_error_max"], "dice": s["dice"],
                     "localisation_truth": s.get("localisation_truth"), "aims_met": r.get("aims_met")})
    return sorted(rows, key=lambda r: r["steps"])


def _steps_png(sweep: list[dict], mm) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    steps = [r["steps"] for r in sweep]
    for k, c in (("WT", "tab:green"), ("TC", "tab:orange"), ("ET", "tab:red")):
        axes[0].plot(steps, [r["dice"][k] for r in sweep], "o-", color=c, label=f"Dice {k}")
    for c, col in zip(TUMOUR.values(), ("tab:blue", "tab:purple", "tab:red")):
        axes[1].plot(steps, [(r["localisation_truth"] or {}).get(c, np.nan) for r in sweep], "o-", color=col, label=c)
    axes[1].axhline(quality.AIMS["localisation_ratio_min"], color="k", lw=0.6, ls=":")
    times = [r["inference_time_ratio"] if r["inference_time_ratio"] is not None else np.nan for r in sweep]
    axes[2].plot(steps, times, "s-", color="k")
    axes[2].axhline(1.0, color="k", lw=0.6, ls=":")
    for ax, title in zip(axes, ("Dice (held-out)", "component localisation ratio", "inference time / UNet's")):
        ax.set_xlabel("unrolled steps T × M")
        ax.set_xticks(steps)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"ML-CSC design 2: unrolled steps on held-out phantoms at {mm} mm (served: "
                 f"{_steps(default_config())})", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=90)


def _sweep_png(sweep: list[dict], mm) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    betas = [r["beta"] for r in sweep]
    for k, c in (("WT", "tab:green"), ("TC", "tab:orange"), ("ET", "tab:red")):
        axes[0].plot(betas, [r["dice"][k] for r in sweep], "o-", color=c, label=f"Dice {k}")
        axes[1].plot([r["relative_error_mean"] for r in sweep], [r["dice"][k] for r in sweep], "o-", color=c,
                     label=k)
    for r in sweep:
        axes[1].annotate(f"β {r['beta']:g}", (r["relative_error_mean"], r["dice"]["WT"]), fontsize=7)
    ax2 = axes[0].twinx()
    ax2.plot(betas, [r["relative_error_mean"] for r in sweep], "s--", color="k", label="reconstruction error")
    ax2.axhline(quality.AIMS["relative_error_max"], color="k", lw=0.6, ls=":")
    ax2.set_ylabel("relative reconstruction error (mean)")
    axes[0].set_xlabel("β (weight of the reconstruction term)")
    axes[0].set_ylabel("Dice")
    axes[0].legend(fontsize=7, loc="lower left")
    axes[1].set_xlabel("relative reconstruction error (mean over modalities and cases)")
    axes[1].set_ylabel("Dice")
    axes[1].axvline(quality.AIMS["relative_error_max"], color="k", lw=0.6, ls=":")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"ML-CSC design 2: β sweep on held-out phantoms at {mm} mm", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=90)


def _f(v, fmt=".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def markdown_table(results: dict) -> list[str]:
    """The README's table of a run (tests/unit/test_readme_figures.py checks the README quotes it)."""
    lines = ["| model | relative error (max) | correlation (min) | energy in brain (min) | lattice / image (max) "
             "| localisation oedema / core / enhancing | min λ / max μ‖D‖² | Dice WT / TC / ET | time / UNet |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        s = r["summary"]
        loc = s.get("localisation_truth")
        locs = " / ".join(_f(loc[c], ".1f") for c in TUMOUR.values()) if loc else "–"
        params = (f"{_f(s.get('min_threshold'), '.3f')} / {_f(s.get('max_step_norm'), '.2f')}" if loc else
                  f"{s['negative_thresholds']} of {s['thresholds']} b < 0" if "thresholds" in s else "–")
        lines.append(f"| `{name}` | {_f(s['relative_error_max'])} | {_f(s['correlation_min'], '.2f')} | "
                     f"{_f(s['energy_in_brain_min'], '.3f')} | {_f(s['lattice_vs_image_max'], '.2f')} | {locs} | "
                     f"{params} | {' / '.join(_f(s['dice'][k]) for k in ('WT', 'TC', 'ET'))} | "
                     f"{_f(r.get('inference_time_ratio'), '.2f')}{'×' if r.get('inference_time_ratio') else ''} |")
    return lines


def _print(results: dict, out_dir: Path) -> None:
    print(f"\nExplanation quality on {results['test_cases']} held-out phantoms at {results['downsample_mm']} mm "
          f"({results['machine']}); aims of issue 16 in brackets")
    head = (f"{'model':<15}{'rel.err':>8}{'corr':>7}{'E in B':>7}{'lattice/img':>12}{'loc oed':>8}{'loc core':>9}"
            f"{'loc enh':>8}{'min lam':>8}{'mu|D|^2':>8}{'WT':>6}{'TC':>6}{'ET':>6}{'t/UNet':>7}")
    print(head)
    print(f"{'(aim)':<15}{'<=0.15':>8}{'':>7}{'>=0.90':>7}{'<=2':>12}{'>=5':>8}{'>=5':>9}{'>=5':>8}{'>=0':>8}{'<=1':>8}"
          f"{'.90':>6}{'.80':>6}{'.75':>6}{'<=1':>7}")
    for name, r in results["models"].items():
        s = r["summary"]
        loc = s.get("localisation_truth", {})
        print(f"{name:<15}{_f(s['relative_error_max']):>8}{_f(s['correlation_min'], '.2f'):>7}"
              f"{_f(s['energy_in_brain_min'], '.2f'):>7}{_f(s['lattice_vs_image_max'], '.2f'):>12}"
              f"{_f(loc.get('oedema'), '.1f'):>8}{_f(loc.get('non-enhancing core'), '.1f'):>9}"
              f"{_f(loc.get('enhancing'), '.1f'):>8}{_f(s.get('min_threshold'), '.3f'):>8}"
              f"{_f(s.get('max_step_norm'), '.2f'):>8}{_f(s['dice']['WT']):>6}{_f(s['dice']['TC']):>6}"
              f"{_f(s['dice']['ET']):>6}{_f(r.get('inference_time_ratio'), '.2f'):>7}")
    missed = {n: [k for k, v in r["aims_met"].items() if v is False] for n, r in results["models"].items()}
    for n, m in missed.items():
        print(f"{n}: aims missed: {', '.join(m) if m else 'none'}")
    print("\nas the README quotes it:\n" + "\n".join(markdown_table(results)))
    print(f"written: {out_dir / 'explanations.json'} and the explanations_*.png figures")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40, help="ML-CSC training epochs (each variant)")
    p.add_argument("--sum-epochs", type=int, default=10)
    p.add_argument("--cases", type=int, default=12, help="phantom cases in all")
    p.add_argument("--test", type=int, default=2, help="held-out cases among them")
    p.add_argument("--downsample", type=int, default=1, help="phantom voxel size in mm (1 = BraTS grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="timed inference repeats (median)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {', '.join(VARIANTS)}")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="use this checkpoint for a variant instead of training it")
    p.add_argument("--retrain", action="store_true", help="train again even if a stored checkpoint exists")
    p.add_argument("--no-timing", action="store_true", help="skip the inference timing against UNet")
    p.add_argument("--betas", default="", help="comma list of beta values: adds the design-2 variants mlcsc_b<beta> "
                   "(eta as the default) and the trade-off figure beta_sweep.png (Dice and reconstruction error)")
    p.add_argument("--out", default="bench/results")
    a = p.parse_args(argv)
    setup_process()
    given = dict(c.split("=", 1) for c in a.checkpoint)
    variants = [v for v in a.variants.split(",") if v]
    for b in (float(v) for v in a.betas.split(",") if v.strip()):
        VARIANTS[f"mlcsc_b{b:g}"] = ("mlcsc", {"beta": b})
        variants.append(f"mlcsc_b{b:g}")
    unknown = sorted(set(variants) - set(VARIANTS)) + sorted(set(given) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    run(a.epochs, a.sum_epochs, a.out, a.cases, a.downsample, a.seed, a.test, given, variants, a.patch, a.repeats,
        a.retrain, not a.no_timing,
        command="python -m sparsesight.bench.explanations " + " ".join(sys.argv[1:] if argv is None else argv)
        if a.betas or variants != list(VARIANTS) or given else None)


if __name__ == "__main__":
    main()
