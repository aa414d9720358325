"""Benchmark: how thick the slices of a scan may be before the shipped weights lose the tumour, the tolerance their
bundles flag against.

    python -m sparsesight.bench.slice_tolerance [--models sum mlcsc] [--cases 2] [--levels 2 3 4 5]
                                                [--axes 0 1 2] [--threads 1] [--out lib/sparsesight/data/slice_tolerance.json]

On the held-out phantoms of the shipped models' cards (pretrain.eval_split: 1 mm, case seeds never trained on) and
the cards' off-grid tumours made on the plain 1 mm grid (off_grid_ablation.plain_grid_cases: small and multi-focal
lesions; --no-varied leaves them out), each case is re-made with slices `level` mm thick along each voxel axis in
turn (`thick_case`: the off-grid generator's slice profile and sampling, data/phantom/variety.regrid; the label
nearest-neighbour) and segmented as the server segments it (resampled onto the model's 1 mm grid, the label put
back on the thick grid). Two Dice per region: against the thick grid's label (what the user gets; the tolerance is
taken from it) and, on the model's grid, against the original 1 mm label (what the model recovers of the true
anatomy). A model's tolerance is the thickest level at which every region's mean Dice stayed within SLICE_DICE_DROP
of its 1 mm Dice. The off-grid split of the cards (random grids) is plotted against the same axis by its cases'
largest voxel size. Writes the JSON the package ships (input_grid.tolerances) and a plot beside it in
bench/results (--plot).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..input_grid import SLICE_DICE_DROP
from . import load_shipped, setup_process, shipped_weights_parser, write_record
from .noise_tolerance import REGIONS, plot_tolerance, tolerance

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "slice_tolerance.json"


def thick_case(image: np.ndarray, label: np.ndarray, affine: np.ndarray, thickness_mm: float,
               axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (C, X, Y, Z), label, affine) of a case on an axis-aligned grid re-sampled with voxels `thickness_mm`
    thick along voxel `axis` (the other axes kept): the slice profile a Gaussian of FWHM sqrt(t^2 - old^2) along
    that axis, then linear sampling at the new spacing, as the off-grid generator makes its thick-slice cases."""
    from ..data.phantom.variety import regrid

    new = np.array(affine, dtype=float)
    step = nib.affines.voxel_sizes(affine)[axis]
    new[:3, axis] *= thickness_mm / step
    shape = list(label.shape)
    shape[axis] = int(np.floor((shape[axis] - 1) * step / thickness_mm)) + 1
    img, lab = regrid(np.moveaxis(image, 0, -1), label, affine, new, tuple(shape))
    return np.moveaxis(img, -1, 0), lab, new


def segment(model, path: Path, label_1mm: np.ndarray, affine_1mm: np.ndarray) -> tuple[np.ndarray, dict]:
    """The served label of the image file `path` (on its own grid) and the Dice, on the model's grid, of the
    model's label against the original 1 mm label resampled there (nearest neighbour)."""
    from nibabel.processing import resample_from_to

    from ..metrics import region_dice
    from ..runners.segmentation import back_to_image_grid, load_on_model_grid, predict

    image, affine, resampled = load_on_model_grid(model, path)
    pred = predict(model, image)
    if resampled is None:
        return pred, region_dice(pred, label_1mm)
    truth = np.asarray(resample_from_to(nib.Nifti1Image(label_1mm.astype(np.int16), affine_1mm),
                                        (pred.shape, affine), order=0).dataobj)
    return back_to_image_grid(pred, affine, path), region_dice(pred, truth)


def measure(model, items: list[dict], levels: list[float], axes: list[int], work: Path) -> list[dict]:
    """One row per slice thickness (1 mm first): mean Dice per region over the cases and slice axes on the thick
    grid (`dice`) and against the 1 mm truth on the model's grid (`dice_1mm`), and each case and axis's
    (`per_case`)."""
    from ..data.io import load_image, load_label
    from ..metrics import region_dice

    cases = []  # read once: every level re-slices the same scans
    for it in items:
        img, aff = load_image(it["image"])
        cases.append((it, img, aff, load_label(it["label"], spatial_shape=img.shape[1:])[0]))
    rows = []
    for level in [1.0, *levels]:
        per_case = []
        for it, img, aff, lab in cases:
            for axis in ([None] if level == 1.0 else axes):
                if axis is None:
                    path, thick_lab = Path(it["image"]), lab
                else:
                    x, thick_lab, thick_aff = thick_case(img, lab, aff, level, axis)
                    path = work / f"thick_{level:g}mm_{axis}.nii.gz"
                    nib.save(nib.Nifti1Image(np.moveaxis(x, 0, -1), thick_aff), str(path))
                served, fine = segment(model, path, lab, aff)
                per_case.append({"case": it["id"], "axis": axis, "dice": region_dice(served, thick_lab),
                                 "dice_1mm": fine})
        row: dict = {"level": level, "slice_mm": level}
        for key in ("dice", "dice_1mm"):
            row[key] = {r: float(np.mean([c[key][r] for c in per_case])) for r in REGIONS}
        rows.append({**row, "per_case": per_case})
        logger.info("slices %g mm: Dice %s (against the 1 mm truth %s)", level,
                    {r: round(v, 3) for r, v in row["dice"].items()},
                    {r: round(v, 3) for r, v in row["dice_1mm"].items()})
    return rows


def off_grid_points(cards: dict, seed: int, work: Path) -> dict:
    """{model: [{"case", "slice_mm", WT, TC, ET}]}: the cards' off-grid Dice per case against the case's largest
    voxel size (the off-grid split of pretrain.eval_split, made if missing)."""
    from ..pretrain import OFF_GRID_CASES, eval_split, items_of

    items = items_of(eval_split(OFF_GRID_CASES, 1, seed, work, variety=True), "test")
    thick = {it["id"]: float(nib.affines.voxel_sizes(nib.load(it["label"]).affine).max()) for it in items}
    return {m: [{**c, "slice_mm": round(thick[c["case"]], 3)} for c in card["evaluation"].get("per_case_off_grid", [])
                if c.get("case") in thick] for m, card in cards.items()}


def run(models: list[str], cases: int, levels: list[float], axes: list[int], seed: int, work: Path,
        varied: bool = True) -> dict:
    from ..pretrain import eval_split, items_of

    items = items_of(eval_split(cases, 1, seed, work), "test")
    data = f"{cases} held-out phantoms of the model cards (pretrain.eval_split, seed {seed}, 1 mm)"
    out: dict = {"drop": SLICE_DICE_DROP, "levels": levels, "axes": axes, "models": {}}
    cards = {}
    with tempfile.TemporaryDirectory(prefix="slice_tolerance_") as tmp:
        if varied:  # the off-grid split's tumours (small and multi-focal lesions too) on the plain 1 mm grid
            from .off_grid_ablation import plain_grid_cases

            extra = plain_grid_cases(seed, work, Path(tmp) / "varied")
            items = items + [{**it, "id": f"off-grid {it['id']}"} for it in extra]
            data += f" and the {len(extra)} off-grid phantoms made on the plain 1 mm grid (off_grid_ablation)"
        out["data"] = data + f"; slices made thicker along each of the voxel axes {axes} in turn"
        for name in models:
            model, meta, cards[name] = load_shipped(name)
            logger.info("%s %s: %d cases x %d slice thicknesses", name, meta["version"][:19], len(items),
                        len(levels) + 1)
            rows = measure(model, items, levels, axes, Path(tmp))
            held = tolerance(rows, key="slice_mm")
            out["models"][name] = {"version": meta["version"], "slice_mm": held["slice_mm"], "rows": rows}
    out["off_grid"] = off_grid_points(cards, seed, work)
    return out


def markdown_table(res: dict) -> list[str]:
    """bench/README's table: Dice per region on the thick grid and against the 1 mm truth, per model and level."""
    lines = ["| model | slice mm | WT | TC | ET | against the 1 mm truth: WT | TC | ET |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for r in m["rows"]:
            d, f = r["dice"], r["dice_1mm"]
            lines.append(f"| {name} | {r['slice_mm']:g} | {d['WT']:.3f} | {d['TC']:.3f} | {d['ET']:.3f} | "
                         f"{f['WT']:.3f} | {f['TC']:.3f} | {f['ET']:.3f} |")
    return lines


def plot(res: dict, path: Path) -> None:
    """Dice (mean of the thickened 1 mm cases) against slice thickness; the cards' off-grid cases as crosses."""
    plot_tolerance(res, path, "slice_mm", "slice thickness (largest voxel size, mm)", "Dice against slice thickness",
                   lambda m: f"tolerance {m['slice_mm']:g} mm", res.get("off_grid"))


def main(argv=None) -> int:
    p = shipped_weights_parser(__doc__, DEFAULT_OUT, Path("bench/results/slice_tolerance.png"), seed_help=" (held-out seed = seed + 1000)")
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--levels", type=float, nargs="+", default=[2.0, 3.0, 4.0, 5.0],
                   help="slice thicknesses in mm, increasing, above 1 mm")
    p.add_argument("--axes", type=int, nargs="+", default=[0, 1, 2], choices=[0, 1, 2],
                   help="the voxel axes made thick, one at a time (sagittal, coronal, axial slices)")
    p.add_argument("--no-varied", dest="varied", action="store_false",
                   help="the held-out phantoms only, not the off-grid split's tumours on the plain grid too")
    a = p.parse_args(argv)
    if sorted(a.levels) != a.levels or any(v <= 1.0 for v in a.levels):
        p.error("--levels must be increasing and above 1 mm")
    setup_process(a.threads)
    res = run(a.models, a.cases, a.levels, a.axes, a.seed, a.work, a.varied)
    write_record(res, "slice_tolerance", argv, a.out)
    plot(res, a.plot)
    print("\n".join(markdown_table(res)))
    for name, m in res["models"].items():
        print(f"{name}: holds up (Dice within {SLICE_DICE_DROP} of 1 mm) to slices {m['slice_mm']:g} mm thick")
    print(f"written: {a.out}, {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
