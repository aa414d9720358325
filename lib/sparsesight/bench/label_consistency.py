"""Benchmark: does a segmentation that changes when its scan is mirrored tell a wrong label from a right one? The
thresholds the bundles flag against.

    python -m sparsesight.bench.label_consistency [--models sum mlcsc] [--held-out 2] [--cases 12] [--threads 1]
                                                  [--out lib/sparsesight/data/label_consistency.json]

Segmentations: the shipped weights on the cards' held-out phantoms (1 mm), on `--cases` off-grid phantoms (random
grids, deformed anatomy, 1-3 lesions; the cards evaluate the first 4) and on the same off-grid tumours made on the
plain 1 mm grid (off_grid_ablation.plain_grid_cases; SUM's false tumour in healthy cortex is there). Each is made as
the bundle makes it (resampled onto the model's grid, one whole-volume pass) and again from the scan mirrored
left-right (label_consistency.mirrored_label); per region the agreement (Dice between the two) and the true Dice
(on the scan's own grid, as the cards measure).

A model's threshold per region is the least agreement of any segmentation that met the issue-17 aim for that region
(label_consistency.AIMS): the package ships it and bundles flag a label below it. Reported beside it, per region:
the segmentations that missed the aim and how many the threshold flags (in the sample the threshold was taken from,
and leaving each segmentation's tumour, on both grids, out of its own threshold, which is what a new scan sees), the
good ones it flags when left out, and the Spearman correlation of agreement with Dice. Writes the JSON the package ships and a scatter plot
(--plot).
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .. import REGIONS
from ..label_consistency import AIMS
from . import load_shipped, setup_process, shipped_weights_parser, write_record

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "label_consistency.json"


def segment(model, image_path: str) -> dict:
    """The bundle's label of `image_path` and its mirrored counterpart: {"label" (on the scan's grid), "agreement",
    "seconds" (the bundle's pass, the mirrored pass)}."""
    from ..label_consistency import agreement
    from ..runners.segmentation import back_to_image_grid, load_on_model_grid, mirror_label, normalise

    image, affine, resampled = load_on_model_grid(model, image_path)
    x = normalise(image)
    t0 = time.perf_counter()
    with torch.no_grad():
        label = model.eval()(x)[0].argmax(0).numpy().astype(np.uint8)
    t1 = time.perf_counter()
    mirrored = mirror_label(model, x, affine)
    t2 = time.perf_counter()
    agree = agreement(label, mirrored)
    if resampled is not None:
        label = back_to_image_grid(label, affine, image_path)
    return {"label": label, "agreement": agree, "seconds": [t1 - t0, t2 - t1]}


def threshold(rows: list[dict], region: str) -> float | None:
    """The least agreement of the rows whose Dice met the aim for `region` (None when none did)."""
    good = [r["agreement"][region] for r in rows if r["dice"][region] >= AIMS[region]]
    return float(min(good)) if good else None


def tumour(row: dict) -> str:
    """The tumour a row segments: an off-grid case and its plain-grid twin share one."""
    return row["case"] if row["split"] == "held-out" else f"varied {row['case'].split()[-1]}"


def detection(rows: list[dict], region: str) -> dict:
    """How the threshold sorts the rows for `region`: misses of the aim, flagged in sample and with each row's
    tumour left out of its threshold (its off-grid and plain-grid segmentations both: what a new scan sees), good
    rows flagged when left out, Spearman rho(agreement, Dice)."""
    from scipy.stats import spearmanr

    t = threshold(rows, region)
    out = {"threshold": t, "segmentations": len(rows),
           "missed_aim": [r["case"] for r in rows if r["dice"][region] < AIMS[region]]}
    loo = []
    for r in rows:
        ti = threshold([q for q in rows if tumour(q) != tumour(r)], region)
        loo.append(ti is not None and r["agreement"][region] < ti)
    out["flagged_in_sample"] = [r["case"] for r in rows if t is not None and r["agreement"][region] < t]
    out["missed_aim_flagged_loo"] = [r["case"] for r, f in zip(rows, loo) if f and r["dice"][region] < AIMS[region]]
    out["good_flagged_loo"] = [r["case"] for r, f in zip(rows, loo) if f and r["dice"][region] >= AIMS[region]]
    rho = spearmanr([r["agreement"][region] for r in rows], [r["dice"][region] for r in rows])[0]
    out["spearman"] = None if not np.isfinite(rho) else float(rho)
    return out


def cases(seed: int, n_held_out: int, n_off_grid: int, work: Path, tmp: Path) -> list[dict]:
    """[{"case", "split", "image", "label"}]: the cards' held-out split, the off-grid split and its tumours on the
    plain grid (made in `tmp`)."""
    from ..pretrain import eval_split, items_of
    from .off_grid_ablation import plain_grid_cases

    out = [{"case": f"held-out {it['id']}", "split": "held-out", **it}
           for it in items_of(eval_split(n_held_out, 1, seed, work), "test")]
    for it in plain_grid_cases(seed, work, tmp, n_off_grid):
        out.append({"case": f"off-grid {it['id']}", "split": "off-grid", "image": it["off_grid_image"],
                    "label": it["off_grid_label"]})
        out.append({"case": f"plain-grid {it['id']}", "split": "plain-grid", "image": it["image"],
                    "label": it["label"]})
    return out


def run(models: list[str], seed: int, n_held_out: int, n_off_grid: int, work: Path) -> dict:
    from ..metrics import region_dice

    out: dict = {"aims": AIMS, "mirror": "left-right", "models": {}}
    with tempfile.TemporaryDirectory(prefix="label_consistency_") as tmp:
        items = cases(seed, n_held_out, n_off_grid, work, Path(tmp))
        out["data"] = (f"{sum(i['split'] == 'held-out' for i in items)} held-out phantoms of the cards (1 mm), "
                       f"{n_off_grid} off-grid phantoms (random grids; the cards evaluate the first 4) and their "
                       f"tumours on the plain 1 mm grid")
        for name in models:
            model, meta, _ = load_shipped(name)
            rows = []
            for k, it in enumerate(items, start=1):
                seg = segment(model, it["image"])
                truth = np.asarray(nib.load(it["label"]).dataobj)
                rows.append({"case": it["case"], "split": it["split"], "dice": region_dice(seg["label"], truth),
                             "agreement": seg["agreement"], "seconds": [round(s, 2) for s in seg["seconds"]]})
                logger.info("%s %d/%d %s: Dice %s, agreement %s", name, k, len(items), it["case"],
                            {r: round(v, 3) for r, v in rows[-1]["dice"].items()},
                            {r: round(v, 3) for r, v in seg["agreement"].items()})
            det = {r: detection(rows, r) for r in REGIONS}
            pass_s = np.array([r["seconds"] for r in rows])
            out["models"][name] = {"version": meta["version"], "threshold": {r: det[r]["threshold"] for r in REGIONS},
                                   "detection": det, "mirrored_pass_cost": float(pass_s[:, 1].sum() / pass_s[:, 0].sum()),
                                   "rows": rows}
    return out


def markdown_table(res: dict) -> list[str]:
    """bench/README's table: per model and region the threshold and what it flags."""
    lines = ["| model | region | threshold | missed the aim | flagged (in sample) | flagged, left out | good flagged, "
             "left out | Spearman ρ |", "|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for r, d in m["detection"].items():
            t = "—" if d["threshold"] is None else f"{d['threshold']:.3f}"
            rho = "—" if d["spearman"] is None else f"{d['spearman']:.2f}"
            missed = len(d["missed_aim"])
            lines.append(f"| {name} | {r} | {t} | {missed} of {d['segmentations']} | "
                         f"{len(set(d['flagged_in_sample']) & set(d['missed_aim']))} of {missed} | "
                         f"{len(d['missed_aim_flagged_loo'])} of {missed} | "
                         f"{len(d['good_flagged_loo'])} of {d['segmentations'] - missed} | {rho} |")
    return lines


def plot(res: dict, path: Path) -> None:
    """Dice against agreement, one panel per model and region, the threshold dashed, the aim dotted."""
    from ..preview import pyplot, save_png

    plt = pyplot()
    names = list(res["models"])
    fig, axes = plt.subplots(len(names), len(REGIONS), figsize=(4.2 * len(REGIONS), 3.6 * len(names)), squeeze=False)
    marks = {"held-out": "o", "off-grid": "x", "plain-grid": "s"}
    for row, name in zip(axes, names):
        m = res["models"][name]
        for ax, r in zip(row, REGIONS):
            for split, mark in marks.items():
                pts = [q for q in m["rows"] if q["split"] == split]
                ax.plot([q["agreement"][r] for q in pts], [q["dice"][r] for q in pts], mark, ms=6, mfc="none",
                        label=split)
            if m["threshold"][r] is not None:
                ax.axvline(m["threshold"][r], color="k", ls="--", lw=1, label=f"threshold {m['threshold'][r]:.3f}")
            ax.axhline(AIMS[r], color="grey", ls=":", lw=1, label=f"aim {AIMS[r]:g}")
            ax.set_xlabel(f"{r} agreement with the mirrored scan's label (Dice)")
            ax.set_ylabel(f"{r} Dice against the truth")
            ax.set_title(f"{name} {m['version'][7:19]}: {r}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    save_png(fig, path)


def main(argv=None) -> int:
    p = shipped_weights_parser(__doc__, DEFAULT_OUT, Path("bench/results/label_consistency.png"))
    p.add_argument("--held-out", type=int, default=2, help="held-out 1 mm phantoms (the cards evaluate 2)")
    p.add_argument("--cases", type=int, default=12, help="off-grid cases (each also on the plain grid)")
    a = p.parse_args(argv)
    setup_process(a.threads)
    res = run(a.models, a.seed, a.held_out, a.cases, a.work)
    write_record(res, "label_consistency", argv, a.out)
    plot(res, a.plot)
    print("\n".join(markdown_table(res)))
    for name, m in res["models"].items():
        print(f"{name}: the mirrored pass costs {m['mirrored_pass_cost']:.2f}x the bundle's own pass")
    print(f"written: {a.out}, {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
