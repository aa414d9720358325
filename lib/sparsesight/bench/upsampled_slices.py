"""Benchmark: scans upsampled from thick slices before they were uploaded: what their noise says, and whether the
shipped weights hold up on them (the tolerance their bundles flag against).

    python -m sparsesight.bench.upsampled_slices [--models sum mlcsc] [--cases 2] [--levels 2 3 4 5 6]
        [--orders 0 1 3] [--axis 2] [--threads 1] [--out lib/sparsesight/data/upsampled_tolerance.json]
    python -m sparsesight.bench.upsampled_slices --combine RECORD [RECORD ...] [--out ...]

A scan of 5 mm slices interpolated onto 1 mm voxels before upload says 1 mm in its header, so the slice-thickness
check (bench/slice_tolerance) passes it. On the held-out phantoms of the shipped models' cards (1 mm, case seeds
never trained on), each case is re-made with slices `level` mm thick along voxel `--axis` (slice_tolerance.
thick_case: the off-grid generator's slice profile), then upsampled back onto its own 1 mm grid with spline order
0 (nearest), 1 (linear) or 3 (cubic), as users' tools do, and written with the 1 mm header. Per input: the
reading of input_grid.apparent_factor on the scan as the server loads it (its near-zero background cleared:
transforms.clear_background; apparent_slice: the thickest apparent voxel, in mm, and its axis) and the served
label's Dice against the 1 mm truth (the file is on the model's grid: nothing is resampled). Each (level, order)
is one group, its reading and Dice the means over the cases. A model's tolerance (`tolerance`) is the largest
reading of a group whose Dice stayed within SLICE_DICE_DROP of the 1 mm Dice in every region, below the lowest
reading of a group that fell; the record counts the groups that fell and read above it (caught) and those that
held and read above it (false flags). With --off-grid N, the cards' first N off-grid phantoms (on their own grids,
not upsampled) are read too, and the record says which a model's tolerance would flag. Writes the
JSON the package ships (input_grid.upsampled_tolerances) and a plot in bench/results (--plot).

--combine makes one record of runs along different axes (`combine`): each model's tolerance is then chosen over
the groups of every axis at once, so that a reading that fell along one axis bounds the tolerance along all.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..input_grid import SLACK, SLICE_DICE_DROP, apparent_factor, apparent_slice
from ..transforms import clear_background
from . import load_shipped, publish, setup_process, shipped_weights_parser
from .noise_tolerance import REGIONS, dice_panel
from .slice_tolerance import segment, thick_case

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "upsampled_tolerance.json"
ORDER_NAMES: dict[int | None, str] = {0: "nearest", 1: "linear", 3: "cubic"}


def upsampled_case(image: np.ndarray, label: np.ndarray, affine: np.ndarray, thickness_mm: float, axis: int,
                   order: int) -> np.ndarray:
    """The case (C, X, Y, Z) made with slices `thickness_mm` thick along `axis` (thick_case), then interpolated back
    onto its own grid (`affine`, the label's shape) with spline `order`: a thick-slice scan upsampled before upload."""
    from nibabel.processing import resample_from_to

    thick, _, thick_affine = thick_case(image, label, affine, thickness_mm, axis)
    return np.stack([resample_from_to(nib.Nifti1Image(c, thick_affine), (label.shape, affine), order=order,
                                      mode="nearest").get_fdata(dtype=np.float32) for c in thick])


def reading(image: np.ndarray, voxel: list) -> tuple[list, float | None, int | None]:
    """(apparent_factor per axis, apparent slice mm, its axis) of a scan (C, X, Y, Z) of voxel size `voxel`, read
    as the served path reads it: after load_on_model_grid has cleared its near-zero background."""
    factor = apparent_factor(clear_background(image)[0])
    return (factor, *apparent_slice(factor, voxel))


def make_inputs(items: list[dict], levels: list[float], orders: list[int], axis: int, work: Path) -> list[dict]:
    """The inputs every model is measured on, each written once as NIfTI under `work` with its reading: the 1 mm
    scans (level 1, order None) and every (case, level, order)'s upsampled scan."""
    from ..data.io import load_image, load_label

    inputs = []
    for it in items:
        img, aff = load_image(it["image"])
        lab = load_label(it["label"], spatial_shape=img.shape[1:])[0]
        for level, order in [(1.0, None), *((lv, o) for lv in levels for o in orders)]:
            if order is None:
                x, path = img, Path(it["image"])
            else:
                x = upsampled_case(img, lab, aff, level, axis, order)
                path = work / f"{it['id']}_{level:g}mm_order{order}.nii.gz"
                nib.save(nib.Nifti1Image(np.moveaxis(x, 0, -1), aff), str(path))
            factor, mm, read_axis = reading(x, list(nib.affines.voxel_sizes(aff)))
            inputs.append({"case": it["id"], "level": level, "order": order, "path": path, "label": lab,
                           "affine": aff, "factor": factor, "apparent_mm": mm, "apparent_axis": read_axis})
            logger.info("%s, %g mm slices, %s: reads %s voxels", it["id"], level,
                        ORDER_NAMES.get(order, "as made"), factor)
    return inputs


def groups(per_input: list[dict]) -> list[dict]:
    """One row per (level, order), the 1 mm scans first: mean reading and mean Dice per region over the cases."""
    keys = sorted({(r["level"], r["order"]) for r in per_input}, key=lambda k: (k[0], -1 if k[1] is None else k[1]))
    rows = []
    for level, order in keys:
        rs = [r for r in per_input if r["level"] == level and r["order"] == order]
        rows.append({"level": level, "order": order, "interpolation": ORDER_NAMES.get(order, "none (1 mm scan)"),
                     "apparent_mm": round(float(np.mean([r["apparent_mm"] for r in rs])), 3),
                     "dice": {k: float(np.mean([r["dice"][k] for r in rs])) for k in REGIONS}})
    return rows


def fell(rows: list[dict], drop: float = SLICE_DICE_DROP) -> list[bool]:
    """Per group after the first (rows[1:]), whether some region's Dice fell more than `drop` below the reference
    group's (rows[0], the 1 mm scans)."""
    clean = rows[0]["dice"]
    return [any(clean[k] - r["dice"][k] > drop for k in REGIONS) for r in rows[1:]]


def flag_counts(rows: list[dict], tolerance_mm: float, drop: float = SLICE_DICE_DROP, slack: float = 0.0) -> dict:
    """What a flag above `tolerance_mm` (times 1 + `slack`) does with the groups after the first: of those that fell
    (`fell`), how many read above it (`caught`) or not (`missed`), and how many that held read above it
    (`false_flags`)."""
    down = fell(rows, drop)
    above = [r["apparent_mm"] > tolerance_mm * (1 + slack) for r in rows[1:]]
    return {"fell": sum(down), "caught": sum(f and a for f, a in zip(down, above)),
            "missed": sum(f and not a for f, a in zip(down, above)),
            "false_flags": sum(a and not f for f, a in zip(down, above))}


def tolerance(rows: list[dict], drop: float = SLICE_DICE_DROP) -> dict:
    """The largest reading of a group that held (every region's Dice within `drop` of the 1 mm Dice, rows[0]) below
    the lowest reading of a group that fell (the 1 mm scans' reading when none held below it); with the groups that
    fell and read above it (`caught`), those that held and read above it (`false_flags`) and those that fell at or
    below it (`missed`: none by construction, counted so that a change of rule would show): flag_counts."""
    down = fell(rows, drop)
    first_fall = min((r["apparent_mm"] for r, f in zip(rows[1:], down) if f), default=float("inf"))
    held = max([rows[0]["apparent_mm"], *(r["apparent_mm"] for r, f in zip(rows[1:], down)
                                          if not f and r["apparent_mm"] < first_fall)])
    counts = flag_counts(rows, held, drop)
    return {"apparent_mm": held, "fell": counts["fell"], "caught": counts["caught"],
            "false_flags": counts["false_flags"], "missed": counts["missed"]}


def off_grid_flagged(off_grid: list[dict], tolerance_mm: float) -> list[str]:
    """The off-grid phantoms (off_grid_readings) a tolerance would flag, as served (with SLACK): those whose reading
    is above it and above their own thickest voxel."""
    return [r["case"] for r in off_grid if r["apparent_mm"] is not None
            and r["apparent_mm"] > tolerance_mm * (1 + SLACK) and r["apparent_mm"] > max(r["voxel_mm"])]


def off_grid_readings(cases: int, seed: int, work: Path) -> list[dict]:
    """The reading of each off-grid phantom of the cards (pretrain.eval_split, variety: random voxel sizes, slice
    thickness and orientation, written on their own grids, not upsampled after): what scans that are what their
    header says read."""
    from ..data.io import load_image
    from ..pretrain import eval_split, items_of

    rows = []
    for it in items_of(eval_split(cases, 1, seed, work, variety=True), "test"):
        img, aff = load_image(it["image"])
        voxel = [round(float(v), 3) for v in nib.affines.voxel_sizes(aff)]
        factor, mm, read_axis = reading(img, voxel)
        rows.append({"case": it["id"], "voxel_mm": voxel, "factor": factor, "apparent_mm": mm,
                     "apparent_axis": read_axis})
        logger.info("off-grid %s (voxels %s mm): reads %s voxels, %s mm", it["id"], voxel, factor, mm)
    return rows


def segmented(name: str, inputs: list[dict], keys: tuple) -> tuple[str, list[dict]]:
    """(version, per input its `keys` and `dice`): the served label of the shipped `name` on every input (its file
    `path`, scored against its `label` on its `affine`'s grid by slice_tolerance.segment)."""
    model, meta, _ = load_shipped(name)
    logger.info("%s %s: %d inputs", name, meta["version"][:19], len(inputs))
    per_input = []
    for i in inputs:
        _, dice = segment(model, i["path"], i["label"], i["affine"])
        per_input.append({k: i[k] for k in keys} | {"dice": dice})
        logger.info("%s %s: reads %.2f mm, Dice %s", name, {k: i[k] for k in keys if k != "apparent_mm"},
                    i["apparent_mm"], {k: round(v, 3) for k, v in dice.items()})
    return meta["version"], per_input


def run(models: list[str], cases: int, levels: list[float], orders: list[int], axis: int, seed: int,
        work: Path, off_grid: int = 0) -> dict:
    from ..pretrain import eval_split, items_of

    items = items_of(eval_split(cases, 1, seed, work), "test")
    out: dict = {"drop": SLICE_DICE_DROP, "levels": levels, "orders": orders, "axis": axis,
                 "data": f"{cases} held-out phantoms of the model cards (pretrain.eval_split, seed {seed}, 1 mm), "
                         f"made with slices of each level thick along voxel axis {axis}, then upsampled back onto "
                         f"their 1 mm grid with each spline order", "models": {}}
    if off_grid:
        out["off_grid"] = off_grid_readings(off_grid, seed, work)
    with tempfile.TemporaryDirectory(prefix="upsampled_slices_") as tmp:
        inputs = make_inputs(items, levels, orders, axis, Path(tmp))
        out["readings"] = [{k: i[k] for k in ("case", "level", "order", "factor", "apparent_mm",
                                                         "apparent_axis")} for i in inputs]
        for name in models:
            version, per_input = segmented(name, inputs, ("case", "level", "order", "apparent_mm"))
            rows = groups(per_input)
            held = tolerance(rows)
            out["models"][name] = {"version": version, **held,
                                   "off_grid_flagged": off_grid_flagged(out.get("off_grid", []), held["apparent_mm"]),
                                   "rows": rows, "per_input": per_input}
    return out


#: the settings runs must share to be combined into one record
COMBINED_KEYS = ("drop", "levels", "orders")


def combine(records: list[dict]) -> dict:
    """One record of runs along different axes (`records`, each one run's, as written): the same settings
    (COMBINED_KEYS), models and weights; each row, reading and input tagged with its `axis`; the 1 mm rows (the same
    scans in every run, so the same figures) once; each model's tolerance chosen over the groups of every axis at
    once (`tolerance`); the off-grid readings of the run that made them."""
    first = records[0]
    axes = [r["axis"] for r in records]
    if len(set(axes)) != len(axes):
        raise ValueError(f"--combine: runs along the same axis twice ({axes})")
    for r in records[1:]:
        differ = [k for k in COMBINED_KEYS if r[k] != first[k]]
        if differ or {n: m["version"] for n, m in r["models"].items()} != {
                n: m["version"] for n, m in first["models"].items()}:
            raise ValueError(f"--combine: the run along axis {r['axis']} differs from the one along axis "
                             f"{first['axis']} in {', '.join(differ) or 'its models or their weights'}")
        for name, m in r["models"].items():
            if m["rows"][0]["dice"] != first["models"][name]["rows"][0]["dice"]:
                raise ValueError(f"--combine: {name}'s 1 mm Dice differ between the runs: not the same cases")
    out: dict = {k: first[k] for k in COMBINED_KEYS}
    out["axes"] = axes
    out["data"] = first["data"].replace(f"along voxel axis {first['axis']}",
                                        f"along voxel axis {', '.join(map(str, axes))} in turn (one run each)")
    out["combined_from"] = [r["command"] for r in records]
    off = next((r["off_grid"] for r in records if r.get("off_grid")), None)
    if off:
        out["off_grid"] = off
    out["readings"] = [{**x, "axis": r["axis"]} for r in records for x in r["readings"]
                       if x["order"] is not None or r is first]
    out["models"] = {}
    for name, m in first["models"].items():
        rows = [m["rows"][0], *({**row, "axis": r["axis"]} for r in records for row in r["models"][name]["rows"][1:])]
        held = tolerance(rows)
        out["models"][name] = {"version": m["version"], **held,
                               "off_grid_flagged": off_grid_flagged(off or [], held["apparent_mm"]), "rows": rows,
                               "per_input": [{**i, "axis": r["axis"]} for r in records
                                             for i in r["models"][name]["per_input"]
                                             if i["order"] is not None or r is first]}
    return out


def markdown_table(res: dict) -> list[str]:
    """bench/README's table: per model, slice axis (x, y, z), level and interpolation, the reading and the Dice per
    region."""
    lines = ["| model | thick along | slices mm | upsampled | reads mm | WT | TC | ET |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for r in m["rows"]:
            d = r["dice"]
            along = "" if r["order"] is None else "xyz"[r.get("axis", res.get("axis", 2))]
            lines.append(f"| {name} | {along} | {r['level']:g} | {r['interpolation']} | {r['apparent_mm']:.2f} | "
                         f"{d['WT']:.3f} | {d['TC']:.3f} | {d['ET']:.3f} |")
    return lines


def summary(res: dict) -> list[str]:
    off = res.get("off_grid", [])
    return [f"{name}: holds up to a reading of {m['apparent_mm']:g} mm; of {m['fell']} upsampled groups that fell, "
            f"{m['caught']} read above it (flagged), {m['missed']} did not; {m['false_flags']} that held are flagged"
            + (f"; {len(m['off_grid_flagged'])} of {len(off)} off-grid scans (not upsampled) would be flagged"
               if off else "") for name, m in res["models"].items()]


def against_shipped(res: dict) -> dict:
    """Per model of a record (of slices made thick along another axis, say), what the served flag does with its
    groups: those whose reading is above the shipped tolerance (input_grid.upsampled_tolerances, with the served
    SLACK) among those that fell (`caught`, else `missed`) and those that held (`false_flags`). Models whose shipped
    tolerance was measured on other weights are left out."""
    from ..input_grid import upsampled_tolerances

    out = {}
    for name, m in res["models"].items():
        tol = upsampled_tolerances().get(name, {})
        if tol.get("version") != m["version"]:
            continue
        out[name] = {"apparent_mm": tol["apparent_mm"],
                     **flag_counts(m["rows"], tol["apparent_mm"], res["drop"], SLACK)}
    return out


def shipped_lines(res: dict) -> list[str]:
    """against_shipped in bench/README's words, one line per model."""
    return [f"{name}, slices thick along voxel axis {res['axis']}: the shipped tolerance ({a['apparent_mm']:g} mm) "
            f"flags {a['caught']} of the {a['fell']} groups whose Dice fell, misses {a['missed']}, and flags "
            f"{a['false_flags']} that held" for name, a in against_shipped(res).items()]


def plot_readings(res: dict, path: Path, series: dict, xlabel: str, title: str) -> None:
    """Dice per region against the reading, one panel per model, one marker per series ({legend: (marker, the
    rows' key and value, joined by a line)}); the model's tolerance dashed."""
    from ..preview import pyplot, save_png

    plt = pyplot()
    names = list(res["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = res["models"][name]
        for k, colour in zip(REGIONS, ("C0", "C1", "C2")):
            for mk, (key, value), joined in series.values():
                rs = [r for r in m["rows"] if r.get(key) == value]
                ax.plot([r["apparent_mm"] for r in rs], [r["dice"][k] for r in rs], mk, color=colour, ms=6,
                        ls="-" if joined else "")
            ax.plot([], [], "-", color=colour, label=k)
        for label, (mk, _, _) in series.items():
            ax.plot([], [], mk, color="k", label=label)
        dice_panel(ax, m["apparent_mm"], f"tolerance {m['apparent_mm']:g} mm", xlabel,
                   f"{name} {m['version'][7:19]}: {title}")
    save_png(fig, path)


def plot(res: dict, path: Path) -> None:
    """plot_readings with a marker per interpolation (one run), or per slice axis (a combined record)."""
    if "axes" in res:
        series = {"1 mm scan": ("s", ("order", None), False)} | {
            f"thick along {'xyz'[a]}": (mk, ("axis", a), False) for a, mk in zip(res["axes"], "v^o")}
        title = "upsampled thick slices, all axes"
    else:
        series = {ORDER_NAMES.get(o, "1 mm scan"): (mk, ("order", o), o is not None)
                  for o, mk in {None: "s", 0: "v", 1: "o", 3: "^"}.items()}
        title = f"upsampled thick slices along axis {res['axis']}"
    plot_readings(res, path, series, "reading: apparent slice thickness (mm)", title)


def main(argv=None) -> int:
    p = shipped_weights_parser(__doc__, DEFAULT_OUT, Path("bench/results/upsampled_slices.png"),
                               seed_help=" (held-out seed = seed + 1000)")
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--levels", type=float, nargs="+", default=[2.0, 3.0, 4.0, 5.0, 6.0],
                   help="slice thicknesses in mm, above 1 mm")
    p.add_argument("--orders", type=int, nargs="+", default=[0, 1, 3], choices=[0, 1, 3],
                   help="spline orders of the upsampling (0 nearest, 1 linear, 3 cubic)")
    p.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="the voxel axis made thick")
    p.add_argument("--off-grid", type=int, default=4,
                   help="also read the cards' first N off-grid phantoms (scans on their own grids; 0: none)")
    p.add_argument("--combine", nargs="+", type=Path, metavar="RECORD", default=None,
                   help="make one record of these runs' records (along different axes) instead of running")
    a = p.parse_args(argv)
    if any(v <= 1.0 for v in a.levels):
        p.error("--levels must be above 1 mm")
    if a.combine:
        try:
            res = combine([json.loads(path.read_text()) for path in a.combine])
        except (OSError, ValueError, KeyError) as e:
            p.error(str(e))
    else:
        setup_process(a.threads)
        res = run(a.models, a.cases, sorted(a.levels), a.orders, a.axis, a.seed, a.work, a.off_grid)
    publish(res, "upsampled_slices", argv, a.out, plot, a.plot, (markdown_table, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
