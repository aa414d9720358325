"""Benchmark: how much input noise the shipped weights hold up on, the tolerance their bundles flag against.

    python -m sparsesight.bench.noise_tolerance [--models sum mlcsc] [--cases 2] [--levels 0.01 0.02 0.05 0.1]
                                                [--threads 1] [--out lib/sparsesight/data/noise_tolerance.json]

On the held-out phantoms of the shipped models' cards (pretrain.eval_split: 1 mm, case seeds never trained on),
each case is segmented clean and with Gaussian noise of sigma = a fraction of each channel's dynamic range inside
the brain (robustness.add_noise, the robustness bench's corruption), and the noisy input's sigma_z is estimated as
a served bundle estimates it (input_noise.sigma_z). A model's tolerance is the mean largest-channel sigma_z of the
noisiest level at which every region's mean Dice stayed within NOISE_DICE_DROP of the clean Dice (the clean
cases' own when no level held). Writes the JSON the package ships (input_noise.tolerances) and a plot of Dice
against sigma_z beside it in bench/results (--plot).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..input_noise import NOISE_DICE_DROP, sigma_z
from . import load_shipped, setup_process, shipped_weights_parser, write_record

logger = logging.getLogger(__name__)

REGIONS = ("WT", "TC", "ET")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "noise_tolerance.json"


def measure(model, items: list[dict], levels: list[float], seed: int) -> list[dict]:
    """One row per noise level (0 first): mean Dice per region and mean largest-channel sigma_z over the cases."""
    from ..data.io import load_image, load_label
    from ..metrics import region_dice
    from ..runners.segmentation import predict
    from .robustness import add_noise

    cases = []  # read once: every level corrupts the same scans
    for it in items:
        img, _ = load_image(it["image"])
        cases.append((img, load_label(it["label"], spatial_shape=img.shape[1:])[0]))
    rows = []
    for level in [0.0, *levels]:
        dice, sz = [], []
        for k, (img, lab) in enumerate(cases):
            x = add_noise(img, level, np.random.default_rng(seed + 1000 * k)) if level else img
            sz.append(float(np.nanmax(sigma_z(x))))
            dice.append(region_dice(predict(model, x), lab))
        mean = {r: float(np.mean([d[r] for d in dice])) for r in REGIONS}
        rows.append({"level": level, "sigma_z": float(np.mean(sz)), "sigma_z_per_case": sz, "dice": mean,
                     "dice_per_case": dice})
        logger.info("noise %.3g of the range: sigma_z %.3f, Dice %s", level, rows[-1]["sigma_z"],
                    {r: round(v, 3) for r, v in mean.items()})
    return rows


def tolerance(rows: list[dict], drop: float = NOISE_DICE_DROP, key: str = "sigma_z") -> dict:
    """The worst level (rows in increasing corruption, clean first) up to which every region's Dice stayed within
    `drop` of the clean row's, and its `key` figure (sigma_z; slice_tolerance: slice_mm): levels past the first
    one that fails do not count."""
    clean = rows[0]["dice"]
    held = rows[0]
    for r in rows[1:]:
        if any(clean[k] - r["dice"][k] > drop for k in REGIONS):
            break
        held = r
    return {key: round(held[key], 4), "level": held["level"]}


def run(models: list[str], cases: int, levels: list[float], seed: int, work: Path) -> dict:
    from ..pretrain import eval_split, items_of

    items = items_of(eval_split(cases, 1, seed, work), "test")
    out: dict = {"data": f"{cases} held-out phantoms of the model cards (pretrain.eval_split, seed {seed}, 1 mm)",
                 "drop": NOISE_DICE_DROP, "levels": levels, "models": {}}
    for name in models:
        model, meta, _ = load_shipped(name)
        logger.info("%s %s: %d cases x %d noise levels", name, meta["version"][:19], len(items), len(levels) + 1)
        rows = measure(model, items, levels, seed)
        out["models"][name] = {"version": meta["version"], **tolerance(rows), "rows": rows}
    return out


def markdown_table(res: dict) -> list[str]:
    """bench/README's table: Dice per region and sigma_z at every level, per model."""
    lines = ["| model | noise σ (× range) | input σ_z | WT | TC | ET |", "|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for r in m["rows"]:
            d = r["dice"]
            lines.append(f"| {name} | {r['level']:g} | {r['sigma_z']:.3f} | {d['WT']:.3f} | {d['TC']:.3f} | "
                         f"{d['ET']:.3f} |")
    return lines


def plot_tolerance(res: dict, path: Path, key: str, xlabel: str, what: str, tolerance_label,
                   points: dict | None = None) -> None:
    """Dice per region against the corruption `key` of every row, one panel per model, the tolerance as a dashed
    line (`tolerance_label(model record)` its legend); `points` {model: [{key, WT, TC, ET}]}: other cases drawn as
    crosses in the regions' colours."""
    from ..preview import pyplot, save_png

    plt = pyplot()
    names = list(res["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = res["models"][name]
        x = [r[key] for r in m["rows"]]
        for k, colour in zip(REGIONS, ("C0", "C1", "C2")):
            ax.plot(x, [r["dice"][k] for r in m["rows"]], "o-", color=colour, label=k)
            pts = (points or {}).get(name, [])
            if pts:
                ax.plot([q[key] for q in pts], [q[k] for q in pts], "x", color=colour, ms=8)
        if (points or {}).get(name):
            ax.plot([], [], "kx", label="off-grid cases (card)")
        dice_panel(ax, m[key], tolerance_label(m), xlabel, f"{name} {m['version'][7:19]}: {what}")
    save_png(fig, path)


def dice_panel(ax, tolerance_x: float, tolerance_label: str, xlabel: str, title: str) -> None:
    """The finish of a tolerance plot's panel: the tolerance as a dashed line, Dice on [0, 1], labels, grid, legend."""
    ax.axvline(tolerance_x, color="k", ls="--", lw=1, label=tolerance_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(res: dict, path: Path) -> None:
    plot_tolerance(res, path, "sigma_z", "input noise σ_z (estimated, brain-std units)", "Dice under noise",
                   lambda m: f"tolerance σ_z {m['sigma_z']:.3f}")


def main(argv=None) -> int:
    p = shipped_weights_parser(__doc__, DEFAULT_OUT, Path("bench/results/noise_tolerance.png"), seed_help=" (held-out seed = seed + 1000)")
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--levels", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1],
                   help="noise sigma as fractions of each channel's dynamic range, increasing")
    a = p.parse_args(argv)
    if sorted(a.levels) != a.levels or any(v <= 0 for v in a.levels):
        p.error("--levels must be positive and increasing")
    setup_process(a.threads)
    res = run(a.models, a.cases, a.levels, a.seed, a.work)
    write_record(res, "noise_tolerance", argv, a.out)
    plot(res, a.plot)
    print("\n".join(markdown_table(res)))
    for name, m in res["models"].items():
        print(f"{name}: holds up (Dice within {NOISE_DICE_DROP}) to noise {m['level']:g} of the range, "
              f"input sigma_z {m['sigma_z']:.3f}")
    print(f"written: {a.out}, {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
