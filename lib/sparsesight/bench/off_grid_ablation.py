"""Benchmark: what the off-grid split's random grid costs the shipped weights, apart from its anatomy and tumours.

    python -m sparsesight.bench.off_grid_ablation [--models sum mlcsc] [--cases 4] [--threads 1]
                                                  [--out bench/results/off_grid_ablation.json]

Each case of the off-grid split (pretrain.eval_split(variety=True): deformed anatomy, 1-3 lesions, wider contrast
and bias field, then a random grid; the cards evaluate its first 4, --cases makes more with the same generator) is
made again with the same seed on the plain 1 mm grid (make_case(plain_grid=True): the same anatomy, lesions,
contrast and noise; only the random grid is left out), and both are segmented as served. Per case and model: the
Dice on the random grid (the card's, for the cards' cases), on the plain grid, the difference (what the grid
costs), where the true classes went on the plain grid (mL confusion), and the Dice the true 1 mm label keeps
through ML-CSC's read-out grid (metrics.grid_ceiling_dice, factor 2); the means with 95 % Student-t intervals over
the cases. What is left below the aims on the plain grid is the anatomy and the tumours, not the grid.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import CLASSES
from . import load_shipped, setup_process, shipped_weights_parser, write_record
from .noise_tolerance import REGIONS

logger = logging.getLogger(__name__)


#: what a case's lesions record (data/phantom/tumour.py sample_lesion): size, rim and how much of the rim enhances
LESION_KEYS = ("radius_wt_mm", "radius_core_mm", "rim_mm", "enhancing_fraction", "small_enhancing")


def confusion_ml(truth: np.ndarray, pred: np.ndarray) -> list[list[float]]:
    """mL of each true class (rows 0..3) given each predicted class (columns), on a 1 mm grid: where the missed
    core went."""
    counts = np.bincount(truth.astype(np.int64).ravel() * 4 + pred.astype(np.int64).ravel(), minlength=16)
    return (counts.reshape(4, 4) / 1000).round(2).tolist()


def core_lost_to(res: dict, name: str) -> dict:
    """mL of the true tumour core (non-enhancing and enhancing) that `name` labelled background and oedema, summed
    over the cases, and the core's total."""
    cm = np.sum([np.array(c["models"][name]["confusion_ml"]) for c in res["cases"]], axis=0)
    return {"core_ml": float(cm[2:].sum()), "as_background_ml": float(cm[2:, 0].sum()),
            "as_oedema_ml": float(cm[2:, 1].sum())}


def plain_grid_cases(seed: int, work: Path, dest: Path, cases: int | None = None) -> list[dict]:
    """The off-grid split's cases (`cases` of them, default the cards' OFF_GRID_CASES; the first ones are the
    cards') made again on the plain 1 mm grid, written to `dest`: [{"image", "label", "id", "off_grid_image",
    "off_grid_label", "lesions"}] (the off-grid split is made in `work` if missing). Each is checked to hold the
    off-grid file's tumour (whole-tumour volume within 15 %), else the comparison would mean nothing."""
    from ..data.phantom import make_case
    from ..data.phantom.dataset import case_seed
    from ..pretrain import OFF_GRID_CASES, OFF_GRID_SEED_OFFSET, eval_split, items_of

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    split = items_of(eval_split(cases or OFF_GRID_CASES, 1, seed, work, variety=True), "test")
    for i, it in enumerate(split):
        # the split's i-th case is make_case(case_seed(split seed, i)): its test cases are the whole split
        c = make_case(case_seed(seed + OFF_GRID_SEED_OFFSET, i), 1, variety=True, plain_grid=True)
        off = nib.load(it["label"])
        off_ml = float((np.asarray(off.dataobj) > 0).sum() * np.prod(nib.affines.voxel_sizes(off.affine))) / 1000
        if abs(off_ml - float((c.label > 0).sum()) / 1000) > 0.15 * off_ml:
            raise RuntimeError(f"{it['id']}: the plain-grid case's tumour ({(c.label > 0).sum() / 1000:.1f} mL) is "
                               f"not the off-grid file's ({off_ml:.1f} mL)")
        image, label = dest / f"{it['id']}_1mm.nii.gz", dest / f"{it['id']}_1mm_label.nii.gz"
        nib.save(nib.Nifti1Image(c.image, c.affine), str(image))
        nib.save(nib.Nifti1Image(c.label, c.affine), str(label))
        lesions = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in les.items() if k in LESION_KEYS}
                   for les in c.params["lesions"]]
        out.append({"image": str(image), "label": str(label), "id": it["id"], "off_grid_image": it["image"],
                    "off_grid_label": it["label"], "lesions": lesions})
    return out


def run(models: list[str], seed: int, work: Path, cases: int | None = None) -> dict:
    from ..data.io import load_label
    from ..metrics import grid_ceiling_dice, region_dice
    from ..pretrain import OFF_GRID_SEED_OFFSET
    from ..runners.segmentation import predict_file
    from .active_learning import mean_interval

    loaded = {}
    for name in models:
        model, meta, card = load_shipped(name)
        loaded[name] = (model, meta["version"], {c["case"]: c for c in card["evaluation"]["per_case_off_grid"]})
    rows = []
    with tempfile.TemporaryDirectory(prefix="off_grid_ablation_") as tmp:
        for it in plain_grid_cases(seed, work, Path(tmp), cases):
            off = nib.load(it["off_grid_label"])
            off_label = np.asarray(off.dataobj)
            label = load_label(it["label"])[0]
            row = {"case": it["id"],
                   "off_grid_voxel_mm": [round(float(v), 3) for v in nib.affines.voxel_sizes(off.affine)],
                   "off_grid_axes": "".join(nib.orientations.aff2axcodes(off.affine)),
                   "volume_ml": {CLASSES[k]: round(float((label == k).sum()) / 1000, 1) for k in (1, 2, 3)},
                   "lesions": it["lesions"], "readout_ceiling_x2": grid_ceiling_dice(label, 2), "models": {}}
            for name, (model, version, card_cases) in loaded.items():
                grid = region_dice(predict_file(model, it["off_grid_image"])[0], off_label)  # as the card measures
                pred = predict_file(model, it["image"])[0]
                plain = region_dice(pred, label)
                on_card = card_cases.get(it["id"])
                row["models"][name] = {
                    "version": version, "off_grid": grid, "plain_grid": plain,
                    "grid_cost": {r: grid[r] - plain[r] for r in REGIONS}, "confusion_ml": confusion_ml(label, pred),
                    # the cards' split: the same Dice as the card's (None: a case the card did not evaluate)
                    "card_off_grid": None if on_card is None else {r: on_card[r] for r in REGIONS}}
                logger.info("%s %s: off-grid %s, plain 1 mm grid %s", it["id"], name,
                            {r: round(v, 3) for r, v in grid.items()}, {r: round(v, 3) for r, v in plain.items()})
            rows.append(row)
    summary = {name: {split: {r: {"mean": float(np.mean(v := [c["models"][name][split][r] for c in rows])),
                                  "ci95": mean_interval(v)} for r in REGIONS}
                      for split in ("off_grid", "plain_grid")} for name in models}
    return {"data": f"{len(rows)} off-grid phantoms (seed {seed + OFF_GRID_SEED_OFFSET}; the cards evaluate the first "
                    f"{len(next(iter(loaded.values()))[2])}), each also made on the plain 1 mm grid",
            "cases": rows, "mean": summary}


def markdown_table(res: dict) -> list[str]:
    lines = ["| case | off-grid voxel mm (axes) | oedema / core / enhancing mL | model | random grid WT / TC / ET | "
             "plain 1 mm grid WT / TC / ET |", "|---|---|---|---|---|---|"]
    for c in res["cases"]:
        vol = " / ".join(f"{v:g}" for v in c["volume_ml"].values())
        vox = " × ".join(f"{v:.2f}" for v in c["off_grid_voxel_mm"])
        for name, m in c["models"].items():
            g, p = m["off_grid"], m["plain_grid"]
            lines.append(f"| {c['case']} | {vox} ({c['off_grid_axes']}) | {vol} | {name} | "
                         + " / ".join(f"{g[r]:.3f}" for r in REGIONS) + " | "
                         + " / ".join(f"{p[r]:.3f}" for r in REGIONS) + " |")
    for name, m in res["mean"].items():
        lines.append(f"| mean of {len(res['cases'])} | | | {name} | "
                     + " / ".join(f"{m['off_grid'][r]['mean']:.3f}" for r in REGIONS) + " | "
                     + " / ".join(f"{m['plain_grid'][r]['mean']:.3f}" for r in REGIONS) + " |")
    return lines


def interval_lines(res: dict) -> list[str]:
    """The means with their 95 % intervals over the cases, one line per model and grid."""
    out = []
    for name, m in res["mean"].items():
        for split, words in (("off_grid", "random grids"), ("plain_grid", "plain 1 mm grid")):
            out.append(f"{name} on {words}: " + ", ".join(
                f"{r} {m[split][r]['mean']:.3f} [{m[split][r]['ci95'][0]:.3f}, {m[split][r]['ci95'][1]:.3f}]"
                if m[split][r]["ci95"] else f"{r} {m[split][r]['mean']:.3f}" for r in REGIONS))
    return out


def main(argv=None) -> int:
    p = shipped_weights_parser(__doc__, Path("bench/results/off_grid_ablation.json"), None, seed_help=" (off-grid seed = seed + 2000)")
    p.add_argument("--cases", type=int, default=None,
                   help="off-grid cases (default: the cards' 4; more are made with the same generator and seeds)")
    a = p.parse_args(argv)
    setup_process(a.threads)
    res = run(a.models, a.seed, a.work, a.cases)
    write_record(res, "off_grid_ablation", argv, a.out)
    print("\n".join(markdown_table(res) + interval_lines(res)))
    for name in res["mean"]:
        lost = core_lost_to(res, name)
        print(f"{name}: of {lost['core_ml']:.1f} mL of true tumour core on the plain grid, {lost['as_background_ml']:.1f} "
              f"mL labelled background and {lost['as_oedema_ml']:.1f} mL oedema")
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
