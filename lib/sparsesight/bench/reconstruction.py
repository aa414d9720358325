"""Benchmark: CDL-Lambda against zero-filling, TV and scalar-lambda FISTA on held-out low-field slices (seed 001).

    python -m sparsesight.bench.reconstruction [--train-steps 20] [--test-slices 3] [--iterations 16]
                                               [--dictionary K16_k7] [--out bench/results]

Data: axial T2 slices of phantom cases at 2 mm (120 x 120): training cases, one validation case (tuning the
scalar baselines' lambda per setting) and one held-out test case, all distinct from the dictionaries' cases.
Settings: keep 160/320 and 120/320 lines per direction (low-resolution masks) x noise sigma 0.10 and 0.25.
Methods, all from the same k-space: zero-filled A^H y; TV (proximal gradient with data consistency, skimage's
Chambolle TV denoiser as the proximal map, weight tuned); scalar-lambda FISTA for (PR) with the same dictionary and
iterations (lambda tuned per setting on the validation slices); CDL-Lambda V1 and V3 trained in this run (V3
over the stored dictionaries up to 16 filters, evaluated with the same dictionary as the others).
Metrics on the brain (reference > 0): MSE, SSIM, blur (Crete-Roffet), seconds per slice. Writes
reconstruction.{csv,json,png} under --out and prints ratios against scalar-lambda FISTA.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..data import convdict, lfmri
from ..models import cdl
from ..ops import kspace
from ..preview import pyplot
from ..training import cdl as cdl_training
from . import setup_process

logger = logging.getLogger(__name__)

SETTINGS = [(0.5, 0.10), (0.5, 0.25), (0.375, 0.10), (0.375, 0.25)]  # (keep, sigma)
TRAIN_SEEDS, VAL_SEED, TEST_SEED = (8001, 8002, 8003), 7002, 7001
LAMBDAS = (0.02, 0.05, 0.1, 0.2)
TV_WEIGHTS = (0.02, 0.05, 0.1, 0.2)


def tv_reconstruct(y: np.ndarray, mask: np.ndarray, weight: float, iterations: int = 10) -> np.ndarray:
    """argmin_x 1/2||A x - y||^2 + weight TV(x) by proximal gradient (step 1 = 1/||A||^2) from A^H y, with
    skimage.restoration.denoise_tv_chambolle as the proximal map (real and imaginary parts)."""
    from skimage.restoration import denoise_tv_chambolle

    yt, mt = torch.as_tensor(y), torch.as_tensor(mask)
    x0 = kspace.adjoint(yt, mt)
    x = x0.clone()
    for _ in range(iterations):
        z = (x - (kspace.normal(x, mt) - x0)).numpy()
        x = torch.as_tensor(denoise_tv_chambolle(z.real, weight=weight) + 1j * denoise_tv_chambolle(z.imag, weight=weight))
    return x.numpy()


def _data(n_test: int, every: int = 2):
    train = lfmri.reference_slices(TRAIN_SEEDS, downsample=2, channel="T2", every=every, progress=True)
    val = lfmri.reference_slices((VAL_SEED,), downsample=2, channel="T2", every=12)[:2]
    test = lfmri.reference_slices((TEST_SEED,), downsample=2, channel="T2", min_fraction=0.3)
    pick = np.linspace(0, len(test) - 1, n_test).round().astype(int)
    return train, val, test[pick]


def _acquire(refs, keep, sigma, seed):
    rng = np.random.default_rng(seed)
    ys, ms, ts = [], [], []
    for x in refs:
        m = lfmri.lowres_mask(x.shape, keep)
        y, s = lfmri.simulate(x, m, sigma, rng)
        ys.append(y)
        ms.append(m)
        ts.append(x / s)
    return np.stack(ys), np.stack(ms), np.stack(ts)


def _scores(x: np.ndarray, t: np.ndarray) -> dict:
    out = {"mse": [], "ssim": [], "blur": []}
    for xi, ti in zip(np.abs(x), t):
        m = ti > 0
        top = float(ti.max())
        out["mse"].append(metrics.mse(xi / top, ti / top, m))
        out["ssim"].append(metrics.ssim(xi / top, ti / top, m, data_range=1.0))
        out["blur"].append(metrics.blur(xi, m))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _timed(fn, n):
    t = time.perf_counter()
    x = fn()
    return x, (time.perf_counter() - t) / n


def _fista(y, m, d, lam, iterations):
    with torch.no_grad():
        return cdl.solve_pr(torch.as_tensor(y), torch.as_tensor(m), d, lam, iterations, convdict.BETA)["x"].numpy()


def run(train_steps: int = 20, test_slices: int = 3, iterations: int = 16, dictionary: str = "K16_k7",
        crop: int = 48, out: Path = Path("bench/results"), seed: int = 0) -> dict:
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    train, val, test = _data(test_slices)
    logger.info(f"data: {len(train)} training, {len(val)} validation, {len(test)} test slices {test.shape[1:]}")
    d = torch.as_tensor(convdict.load(dictionary))
    k = d.shape[0]
    v3_dicts = [n for n in convdict.available() if int(n[1:].split("_")[0]) <= k]

    # ---- train CDL-Lambda V1 and V3 (same budget)
    nets, train_info = {}, {}
    for variant in ("v1", "v3"):
        model = cdl.CDL(variant=variant, dictionary=dictionary, iterations=iterations, backprop_iterations=8,
                        channels=[8, 16, 32])
        cfg = {"steps_per_epoch": 10, "batch_size": 2, "crop": crop, "lr": 2e-3, "keep": [0.375, 0.5],
               "sigma": [0.075, 0.30], "dictionaries": v3_dicts if variant == "v3" else [dictionary], "seed": seed}
        t0 = time.time()
        stats = cdl_training.train(model, train, epochs=max(1, train_steps // 10), config=cfg,
                          progress=lambda s, v=variant: logger.info(  # type: ignore[misc]
                              f"train {v}: epoch {s['epoch']}/{s['epochs']} "
                                                              f"loss {s['loss']:.5f} {s['seconds']:.0f} s"),
                          show_progress=False)
        nets[variant] = model.eval()
        train_info[variant] = {"seconds": round(time.time() - t0, 1), "loss": stats["loss"],
                               "dictionaries": stats["dictionaries"], "parameters": sum(p.numel() for p in model.net.parameters()) + 1}

    rows, examples = [], {}
    for si, (keep, sigma) in enumerate(SETTINGS):
        # tune the scalar baselines on the validation slices
        yv, mv, tv = _acquire(val, keep, sigma, seed=100 + si)
        lam = max(LAMBDAS, key=lambda lam: _scores(_fista(yv, mv, d, lam, iterations), tv)["ssim"])
        tvw = max(TV_WEIGHTS, key=lambda w: np.mean([_scores(tv_reconstruct(yv[i], mv[i], w)[None], tv[i:i + 1])["ssim"]
                                                     for i in range(len(yv))]))
        y, m, t = _acquire(test, keep, sigma, seed=200 + si)
        n = len(y)
        yt, mt = torch.as_tensor(y), torch.as_tensor(m)
        recs = {}
        recs["zero-filled"] = _timed(lambda yt=yt, mt=mt: kspace.adjoint(yt, mt).numpy(), n)
        recs["TV"] = _timed(lambda y=y, m=m, tvw=tvw, n=n: np.stack([tv_reconstruct(y[i], m[i], tvw) for i in range(n)]), n)
        recs["FISTA scalar λ"] = _timed(lambda y=y, m=m, lam=lam: _fista(y, m, d, lam, iterations), n)
        for variant, net in nets.items():
            with torch.no_grad():
                recs[f"CDL-Λ {variant.upper()}"] = _timed(lambda net=net, yt=yt, mt=mt: net(yt, mt, d).numpy(), n)
        setting = f"keep {keep:g} ({round(keep * 320)}/320), σ {sigma:g}"
        for name, (x, sec) in recs.items():
            sc = _scores(x, t)
            rows.append({"setting": setting, "keep": keep, "sigma": sigma, "method": name, **sc,
                         "seconds_per_slice": sec,
                         "tuned": {"FISTA scalar λ": f"lambda {lam}", "TV": f"weight {tvw}"}.get(name, "")})
            print(f"{setting:32s} {name:16s} MSE {sc['mse']:.5f} SSIM {sc['ssim']:.4f} blur {sc['blur']:.3f} "
                  f"{sec:.2f} s/slice", flush=True)
        j = n // 2
        examples[setting] = {"reference": t[j], **{name: np.abs(x[j]) for name, (x, _) in recs.items()},
                             "lambda_mean": nets["v3"].interpret(yt[j:j + 1], mt[j:j + 1], d)["lambda"][0].mean(0).numpy()}

    results: dict[str, Any] = {"settings": [list(s) for s in SETTINGS], "rows": rows, "train": train_info,
               "config": {"train_steps": train_steps, "test_slices": len(test), "iterations": iterations,
                          "dictionary": dictionary, "crop": crop, "slice_shape": list(test.shape[1:]),
                          "train_slices": len(train), "v3_dictionaries": v3_dicts},
               "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                           "note": "2 CPU cores shared with other jobs: timings are noisy"},
               "seconds": round(time.time() - t_start, 1)}
    _write(results, examples, out)
    _print_ratios(rows)
    return results


def _write(results, examples, out: Path):
    import csv

    plt = pyplot()

    (out / "reconstruction.json").write_text(json.dumps(results, indent=2))
    with open(out / "reconstruction.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["setting", "keep", "sigma", "method", "mse", "ssim", "blur",
                                          "seconds_per_slice", "tuned"])
        w.writeheader()
        w.writerows(results["rows"])
    settings = list(examples)
    cols = list(next(iter(examples.values())))
    fig, axes = plt.subplots(len(settings), len(cols), figsize=(2.1 * len(cols), 2.3 * len(settings)))
    for r, s in enumerate(settings):
        ex = examples[s]
        hi = float(ex["reference"].max())
        for c, name in enumerate(cols):
            ax = axes[r, c]
            if name == "lambda_mean":
                ax.imshow(np.rot90(ex[name]), cmap="viridis")
                title = "V3 mean Λ"
            else:
                ax.imshow(np.rot90(ex[name]), cmap="gray", vmin=0, vmax=hi)
                row = next((x for x in results["rows"] if x["setting"] == s and x["method"] == name), None)
                title = name if row is None else f"{name}\nSSIM {row['ssim']:.3f}"
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        axes[r, 0].text(-0.1, 0.5, s, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reconstruction.png", dpi=90)
    plt.close(fig)
    print(f"wrote {out / 'reconstruction.csv'}, .json, .png", flush=True)


def _print_ratios(rows):
    print("\nratio to scalar-λ FISTA (same dictionary, same iterations, λ tuned per setting)")
    print(f"{'setting':32s} {'method':16s} {'SSIM':>8s} {'MSE':>8s} {'time':>8s}")
    for s in dict.fromkeys(r["setting"] for r in rows):
        base = next(r for r in rows if r["setting"] == s and r["method"] == "FISTA scalar λ")
        for r in rows:
            if r["setting"] == s:
                print(f"{s:32s} {r['method']:16s} {r['ssim'] / base['ssim']:8.3f} {r['mse'] / base['mse']:8.3f} "
                      f"{r['seconds_per_slice'] / base['seconds_per_slice']:8.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsesight.bench.reconstruction", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-steps", type=int, default=20, help="training steps per CDL-Λ variant (batch 2)")
    p.add_argument("--test-slices", type=int, default=3)
    p.add_argument("--iterations", type=int, default=16, help="FISTA iterations (CDL-Λ and scalar λ)")
    p.add_argument("--dictionary", default="K16_k7")
    p.add_argument("--crop", type=int, default=48, help="training crop size")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="where results go (recorded runs: --out bench/results)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    setup_process()
    run(a.train_steps, a.test_slices, a.iterations, a.dictionary, a.crop, a.out, a.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
