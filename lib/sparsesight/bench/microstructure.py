"""Benchmark of seed 002: fingerprinting vs fully-learned MLP vs hybrid NNLS + split MLP.

    python -m sparsesight.bench.microstructure                 # default: HCP MGH protocol, paper grid, small budget
    python -m sparsesight.bench.microstructure --n-train 20000 --epochs 40 --n-test 500

One run: trains the MLP and the hybrid's networks on simulated voxels (SNR 25/50/100, ground-truth orientations,
as the paper), then on held-out simulations per SNR measures the mean absolute error of ν, r, f for each method,
with the ground-truth orientations in the dictionary and with orientations estimated by DIPY's CSD (Fig. 3's two
scenarios), the inference time per voxel of each method (Table 1: 1.25 s, 1.0e-4 s, 0.145 s in the paper), the
batched NNLS against a scipy.optimize.nnls loop on the same dictionaries, and the time of a whole slab of the DWI
phantom. Ratios are against fingerprinting (the paper's physics-based baseline) measured in the same run.
Writes bench/results/microstructure.{csv,json,png} and microstructure_tsne.png (Fig. 4).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..data import diffusion as dif
from ..explain import microstructure_plots
from ..models import microstructure as ms
from ..preview import png_bytes, pyplot
from ..runners import microstructure as run
from ..training import microstructure as ms_training
from . import setup_process

logger = logging.getLogger(__name__)

PAPER_TIME = {"fingerprinting": 1.25, "mlp": 1.02e-4, "hybrid": 1.45e-1}  # s per voxel, Table 1


log = logger.info  # progress lines (bench/__init__.setup_process shows them with the time)


def csd_orientations(signal: np.ndarray, protocol: dif.Protocol) -> np.ndarray:
    """CSD peaks (DIPY) of simulated voxels, laid out as a (n, 1, 1) volume: (n, 2, 3)."""
    vol = signal[:, None, None, :].astype(np.float32)
    u, _ = run.csd_peaks(vol, protocol, np.ones(vol.shape[:3], bool))
    return u[:, 0, 0]


def mae_by_nu(est: dict, truth: dict, bins: np.ndarray) -> dict:
    """MAE of each parameter per bin of the true ν (both populations pooled), as Fig. 3's x axis."""
    nu = truth["nu"].ravel()
    out = {}
    for p in ms.PARAMS:
        err = np.abs(np.asarray(est[p]) - truth[p]).ravel()
        out[p] = [float(err[(nu >= lo) & (nu < hi)].mean()) if ((nu >= lo) & (nu < hi)).any() else float("nan")
                  for lo, hi in zip(bins[:-1], bins[1:])]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol-subsample", type=int, default=1, help="every k-th volume per shell (1: M = 552)")
    ap.add_argument("--grid", default="paper", help="'paper' (34 x 23 = 782 per population) or NRxNF, e.g. 12x8")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=200, help="held-out voxels per SNR")
    ap.add_argument("--fp-test", type=int, default=20, help="voxels per SNR for fingerprinting (slow)")
    ap.add_argument("--snr", type=float, nargs="+", default=[25, 50, 100])
    ap.add_argument("--scipy-voxels", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids stalls on a shared CPU)")
    ap.add_argument("--no-csd", action="store_true", help="skip the estimated-orientation scenario")
    ap.add_argument("--no-slab", action="store_true", help="skip the DWI phantom slab timing")
    ap.add_argument("--out", type=Path, default=Path("out/bench"), help="where results go (recorded runs: --out bench/results)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    setup_process()
    torch.set_num_threads(a.threads)
    t_start = time.time()

    protocol = dif.hcp_mgh_protocol(a.protocol_subsample)
    grid = dif.paper_grid() if a.grid == "paper" else dif.small_grid(*[int(x) for x in a.grid.split("x")])
    torch.manual_seed(a.seed)  # the networks' initialisation (fit_networks seeds only what follows it)
    model = ms.Microstructure(protocol.to_config(), grid.to_config())
    log(f"protocol {protocol.name} M = {protocol.m}; grid {len(grid.radii_um)} x {len(grid.fractions)} = {grid.n} "
        f"per population (N_tot = {model.n_atoms}); MLP {ms.n_parameters(model.mlp):,} parameters, hybrid "
        f"{ms.n_parameters(model.hybrid):,}")

    # ---------------------------------------------------------------- training
    t0 = time.time()
    data = ms_training.simulate_training_set(model, a.n_train, a.snr, seed=a.seed, progress=log)
    t_sim = time.time() - t0
    log(f"training set: {a.n_train} voxels with NNLS weights in {t_sim:.0f} s")
    hist = ms_training.fit_networks(model, data, epochs=a.epochs, batch_size=128, lr=2e-3, seed=a.seed,
                           progress=lambda d: log("epoch {epoch}/{epochs} mlp val {mlp_val:.4f} hybrid val "
                                                  "{hybrid_val:.4f}".format(**d)))
    log(f"trained both networks in {hist['seconds']:.0f} s")

    # ---------------------------------------------------------------- accuracy and time per SNR
    rows, curves, times = [], {}, {m: [] for m in ms.METHODS}
    cpu_times = {m: [] for m in ms.METHODS}
    bins = np.linspace(0.0, 1.0, 6)
    trivial = {p: data[p].mean(0) for p in ms.PARAMS}
    tsne_data = None
    for snr in a.snr:
        test = dif.simulate(protocol, a.n_test, snr, a.seed + 1000 + int(snr))
        scen = {"true u": test["u"]}
        if not a.no_csd:
            t0 = time.time()
            scen["CSD u"] = csd_orientations(test["signal"], protocol)
            log(f"SNR {snr:g}: CSD peaks of {a.n_test} voxels in {time.time() - t0:.1f} s")
        for sname, u in scen.items():
            for method in ms.METHODS:
                if method == "mlp" and sname != "true u":
                    continue  # the MLP does not use orientations
                n = a.fp_test if method == "fingerprinting" else a.n_test
                sub = {k: v[:n] for k, v in test.items() if isinstance(v, np.ndarray)}
                acts = {} if (method == "hybrid" and sname == "true u" and snr == 50) else None
                est = ms.estimate(model, sub["signal"], u[:n], method, activations=acts)
                if sname == "true u":
                    times[method].append(est["seconds"] / n)
                    cpu_times[method].append(est["cpu_seconds"] / n)
                err = ms.mae(est, sub)
                row = {"snr": snr, "orientations": sname if method != "mlp" else "-", "method": method, "voxels": n,
                       **{f"mae_{p}": round(err[p], 4) for p in ms.PARAMS},
                       "ms_per_voxel": round(1e3 * est["seconds"] / n, 3),
                       "cpu_ms_per_voxel": round(1e3 * est["cpu_seconds"] / n, 3)}
                rows.append(row)
                curves[(snr, sname, method)] = mae_by_nu(est, sub, bins)
                log(f"SNR {snr:g} {sname:6s} {method:14s} MAE ν {err['nu']:.3f} r {err['r']:.2f} µm "
                    f"f {err['f']:.3f}  {row['ms_per_voxel']} ms/voxel")
                if acts:
                    mlp_acts: dict = {}
                    ms.estimate(model, sub["signal"], None, "mlp", activations=mlp_acts)
                    tsne_data = ({**{k: v.numpy() for k, v in acts.items()},
                                  **{k: v.numpy() for k, v in mlp_acts.items()}}, sub)
        err = ms.mae({p: np.broadcast_to(trivial[p], test[p].shape) for p in ms.PARAMS}, test)
        rows.append({"snr": snr, "orientations": "-", "method": "trivial (training mean)", "voxels": a.n_test,
                     **{f"mae_{p}": round(err[p], 4) for p in ms.PARAMS}, "ms_per_voxel": 0.0,
                     "cpu_ms_per_voxel": 0.0})

    # ---------------------------------------------------------------- batched NNLS vs scipy loop
    from scipy.optimize import nnls as scipy_nnls

    test = dif.simulate(protocol, a.scipy_voxels, 50, a.seed + 7)
    dicts = [dif.dictionary(protocol, test["u"][v], grid) for v in range(a.scipy_voxels)]
    t0, c0 = time.perf_counter(), time.process_time()
    ref = [scipy_nnls(dicts[v], test["signal"][v], maxiter=20 * model.n_atoms)[1] for v in range(a.scipy_voxels)]
    t_scipy = (time.perf_counter() - t0) / a.scipy_voxels
    c_scipy = (time.process_time() - c0) / a.scipy_voxels
    t0, c0 = time.perf_counter(), time.process_time()
    ours = ms.nnls_weights(model, test["signal"], test["u"])
    t_ours = (time.perf_counter() - t0) / a.scipy_voxels
    c_ours = (time.process_time() - c0) / a.scipy_voxels
    rel = float(np.max(np.abs(ours["residual"] * np.linalg.norm(test["signal"], axis=1) - np.asarray(ref))
                       / np.maximum(np.asarray(ref), 1e-12)))
    log(f"NNLS: scipy loop {1e3 * t_scipy:.2f} ms/voxel (dictionary given), batched {1e3 * t_ours:.2f} ms/voxel "
        f"(dictionary built inside), residuals agree to {rel:.1e}")

    # ---------------------------------------------------------------- a whole slab of the DWI phantom
    slab = None
    if not a.no_slab:
        ph = dif.dwi_phantom(protocol, downsample=3, slices=3, snr=50, seed=a.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        maps = run.fit_maps(model, ph["dwi"], protocol, ph["mask"], "hybrid", log=log)
        t_slab = time.perf_counter() - t0
        c_slab = time.process_time() - c0
        nv = int(ph["mask"].sum())
        truth = {p: ph["truth"][p][ph["mask"]] for p in ms.PARAMS}
        slab = {"voxels": nv, "shape": list(ph["dwi"].shape), "seconds_total_with_csd": round(t_slab, 2),
                "cpu_seconds_total_with_csd": round(c_slab, 2),
                "seconds_method": round(float(maps["seconds"]), 2),
                "mae": ms.mae({p: maps[p][ph["mask"]] for p in ms.PARAMS}, truth)}
        log(f"DWI phantom slab {ph['dwi'].shape}: {nv} WM voxels, hybrid maps in {t_slab:.1f} s with CSD")
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "microstructure_slab.png").write_bytes(_slab_png(maps, ph))

    # ---------------------------------------------------------------- outputs
    a.out.mkdir(parents=True, exist_ok=True)
    tpv = {m: float(np.mean(v)) for m, v in times.items()}
    cpv = {m: float(np.mean(v)) for m, v in cpu_times.items()}
    summary = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                     "M": protocol.m, "N_per_population": grid.n},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": a.threads,
                    "load_average": list(os.getloadavg()), "note": "shared 2-core machine (six helpers)"},
        "time_per_voxel_s": tpv, "cpu_time_per_voxel_s": cpv, "paper_time_per_voxel_s": PAPER_TIME,
        "time_ratio_to_fingerprinting": {m: tpv[m] / tpv["fingerprinting"] for m in tpv},
        "paper_time_ratio_to_fingerprinting": {m: PAPER_TIME[m] / PAPER_TIME["fingerprinting"] for m in PAPER_TIME},
        "nnls": {"scipy_loop_s_per_voxel": t_scipy, "batched_s_per_voxel": t_ours, "scipy_loop_cpu_s_per_voxel": c_scipy,
                 "batched_cpu_s_per_voxel": c_ours, "max_rel_residual_diff": rel},
        "training": {"simulation_and_nnls_s": t_sim, "fit_s": hist["seconds"], "epochs": hist["epochs"],
                     "mlp_val": hist["mlp_val"][-1], "hybrid_val": hist["hybrid_val"][-1],
                     "mlp_parameters": ms.n_parameters(model.mlp), "hybrid_parameters": ms.n_parameters(model.hybrid)},
        "slab": slab, "rows": rows, "seconds": time.time() - t_start,
    }
    (a.out / "microstructure.json").write_text(json.dumps(summary, indent=2, default=float))
    with open(a.out / "microstructure.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _figure(curves, bins, a.snr, a.out / "microstructure.png", tpv)
    if tsne_data is not None:
        acts, sub = tsne_data
        layers = [k for k in ("split1/layer1", "split/last") if k in acts]
        layers += [k for k in acts if k.startswith("joint")][-1:]
        layers += [k for k in acts if k.startswith("mlp")][:1] + [k for k in acts if k.startswith("mlp")][-1:]
        png = microstructure_plots.tsne_png(acts, {"r_1 (µm)": sub["r"][:, 0], "f_1": sub["f"][:, 0], "ν_1": sub["nu"][:, 0]},
                          layers, max_points=600)
        (a.out / "microstructure_tsne.png").write_bytes(png)

    # ---------------------------------------------------------------- ratio table
    print("\nTime per voxel (this run, same machine) and the paper's Table 1; ratios to fingerprinting")
    print(f"{'method':16s} {'wall s/voxel':>12s} {'CPU s/voxel':>12s} {'ratio':>9s} {'paper s/voxel':>14s} "
          f"{'paper ratio':>12s}")
    for m in ms.METHODS:
        print(f"{m:16s} {tpv[m]:12.2e} {cpv[m]:12.2e} {tpv[m] / tpv['fingerprinting']:9.2e} {PAPER_TIME[m]:14.2e} "
              f"{PAPER_TIME[m] / PAPER_TIME['fingerprinting']:12.2e}")
    print(f"NNLS (eq. 5): batched {1e3 * t_ours:.2f} ms/voxel (CPU {1e3 * c_ours:.2f}) vs scipy.optimize.nnls loop "
          f"{1e3 * t_scipy:.2f} ms/voxel (CPU {1e3 * c_scipy:.2f}): {t_scipy / t_ours:.1f}x")
    print("\nMAE (true orientations; CSD in the CSV), ratio to fingerprinting")
    print(f"{'SNR':>5s} {'method':24s} {'ν':>14s} {'r (µm)':>14s} {'f':>14s}")
    for snr in a.snr:
        base = next(r for r in rows if r["snr"] == snr and r["method"] == "fingerprinting"
                    and r["orientations"] == "true u")
        for r in rows:
            if r["snr"] != snr or r["orientations"] == "CSD u":
                continue
            cells = [f"{r[f'mae_{p}']:.3f} ({r[f'mae_{p}'] / base[f'mae_{p}']:.2f}x)" for p in ms.PARAMS]
            print(f"{snr:5.0f} {r['method']:24s} {cells[0]:>14s} {cells[1]:>14s} {cells[2]:>14s}")
    if slab:
        print(f"\nslab of the DWI phantom {slab['shape']}: {slab['voxels']} voxels, hybrid {slab['seconds_method']} s "
              f"({slab['seconds_total_with_csd']} s with CSD peaks, CPU {slab['cpu_seconds_total_with_csd']} s)")
    print(f"\nwrote {a.out}/microstructure.{{csv,json,png}} in {time.time() - t_start:.0f} s")
    return 0


def _slab_png(maps: dict, ph: dict) -> bytes:
    """Hybrid maps of the phantom's middle slice next to the ground truth (white-matter mask)."""

    plt = pyplot()

    z = ph["mask"].shape[2] // 2
    m = ph["mask"][..., z]
    fig, axes = plt.subplots(2, 6, figsize=(15, 5.6))
    for col, (p, k, lim) in enumerate([(p, k, (0, 7) if p == "r" else (0, 1)) for k in range(2) for p in ms.PARAMS]):
        for row, (src, name) in enumerate(((ph["truth"], "truth"), (maps, "hybrid"))):
            img = np.where(m, src[p][..., z, k], np.nan)
            im = axes[row, col].imshow(np.rot90(img), cmap="viridis", vmin=lim[0], vmax=lim[1])
            axes[row, col].set_title(f"{name} {p}_{k + 1}", fontsize=8)
            axes[row, col].axis("off")
        fig.colorbar(im, ax=axes[1, col], orientation="horizontal", fraction=0.05, pad=0.02)
    fig.suptitle("DWI phantom, middle slice of the slab: ground truth (top) and hybrid estimates (bottom)", fontsize=9)
    return png_bytes(fig, dpi=70)


def _figure(curves: dict, bins, snrs, path: Path, tpv: dict) -> None:
    plt = pyplot()

    x = (bins[:-1] + bins[1:]) / 2
    colours = {"fingerprinting": "tab:blue", "mlp": "tab:red", "hybrid": "tab:green"}
    fig, axes = plt.subplots(3, len(snrs), figsize=(3.6 * len(snrs), 8), squeeze=False)
    for c, snr in enumerate(snrs):
        for r, p in enumerate(ms.PARAMS):
            ax = axes[r, c]
            for (s, scen, method), cur in curves.items():
                if s != snr:
                    continue
                ax.plot(x, cur[p], color=colours[method], ls="-" if scen == "true u" else "--", marker="o", ms=3,
                        label=f"{method}" + ("" if method == "mlp" else f" ({scen})"))
            ax.set_xlabel("true ν", fontsize=8)
            ax.set_ylabel(f"MAE {p}" + (" (µm)" if p == "r" else ""), fontsize=8)
            if r == 0:
                ax.set_title(f"SNR {snr:g}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("MAE vs true ν (Fig. 3 layout); time/voxel: " +
                 ", ".join(f"{m} {1e3 * t:.3g} ms" for m, t in tpv.items()), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
