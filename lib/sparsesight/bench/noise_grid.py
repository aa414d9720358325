"""Benchmark: the input-noise estimate of scans on other grids, and the shipped weights on them.

    python -m sparsesight.bench.noise_grid [--models sum mlcsc] [--cases 4] [--factors 1 3 6 10 15] [--threads 2]

A scan on another grid than the model's is resampled before it is segmented (runners.segmentation.
load_on_model_grid). Interpolation turns white noise into correlated noise that the finest Haar band, where
input_noise.sigma_z looks, no longer holds: estimated after resampling, sigma_z is too low, and a noisy scan
would pass the noise check. So bundles estimate sigma^ on the scan's own grid and report it times the share of
white noise the resampling keeps (interpolation_noise_gain): the noise per voxel the network sees. This measures
the three estimates and how a flag on each would fare.

Cases: the off-grid split's phantoms (pretrain's seed + OFF_GRID_SEED_OFFSET: deformed anatomy, 1-3 lesions,
random voxel sizes, slice thickness and orientation), made without noise and given white Rician noise on their
own grid, as a scanner would: sigma = factor x the generator's own sigma for the case (white matter / SNR). The
generator's off-grid files are not used: their noise is added on the 1 mm grid before regridding, so it is
correlated already. For each case and factor: the true sigma_z (the sigma put in over each channel's brain
standard deviation, the largest channel), sigma_z estimated on the scan's own grid, on the resampled image (what
bundles reported before) and served (own grid x gain, what they report now), and each shipped model's label through the
plain infer path (predict_file: resampled, segmented, put back on the scan's grid) with its Dice and its noise
checks. A model's tolerance for resampled scans is found as bench/noise_tolerance finds the one for scans on its
grid (noise_tolerance.tolerance): the mean served sigma_z of the noisiest factor up to which every region's mean
Dice stayed within NOISE_DICE_DROP of the factor-1 Dice. input_noise.assess flags a resampled scan against it.
How that flag fares is judged per scan (a scan `fell` when a region lost more than NOISE_DICE_DROP from its own
case at factor 1), with each case left out of the tolerance it is judged by, beside the flags the two other
estimates would raise against the 1 mm tolerance. Writes the JSON the package ships
(input_noise.tolerances(resampled=True)) and a plot in bench/results (--plot).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ..input_noise import NOISE_DICE_DROP, sigma_z
from . import load_shipped, publish, setup_process, shipped_weights_parser
from .noise_tolerance import tolerance

logger = logging.getLogger(__name__)

REGIONS = ("WT", "TC", "ET")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "noise_tolerance_resampled.json"


def noisy_on_own_grid(case, factor: float, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """The clean case's image (X, Y, Z, C) with white Rician noise of factor x its own sigma per channel on its own
    grid, integer-valued and 0 outside the brain like the generator's; and the true sigma_z per channel."""
    from ..data.phantom import rician_noise

    img = case.image
    brain = img.any(-1)
    out = np.zeros_like(img)
    true = []
    for m, sigma in enumerate(case.params["noise_sigma"].values()):
        chan = np.zeros(brain.shape, np.float32)
        chan[brain] = np.clip(np.round(rician_noise(img[..., m][brain], factor * sigma, rng)), 0, 32767)
        out[..., m] = chan
        true.append(float(factor * sigma / chan[brain].std()))
    return out, true


def run(models: list[str], cases: int, factors: list[float], seed: int) -> dict:
    import nibabel as nib

    from ..data.phantom import make_case
    from ..data.phantom.dataset import case_seed
    from ..metrics import region_dice
    from ..pretrain import OFF_GRID_SEED_OFFSET
    from ..runners.segmentation import load_on_model_grid, predict_file

    loaded = {}
    for name in models:
        model, meta, _ = load_shipped(name)
        loaded[name] = (model.eval(), meta["version"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cases):
            case = make_case(case_seed(seed + OFF_GRID_SEED_OFFSET, i), 1, noise=False, variety=True)
            voxel = [round(float(v), 3) for v in nib.affines.voxel_sizes(case.affine)]
            for factor in factors:
                image, true = noisy_on_own_grid(case, factor, np.random.default_rng([seed, i, int(factor * 100)]))
                path = Path(tmp) / f"case_{i:03d}_x{factor:g}.nii.gz"
                nib.save(nib.Nifti1Image(image, case.affine), str(path))
                row: dict = {"case": f"case_{i:03d}", "factor": factor, "voxel_mm": voxel,
                             "axes": "".join(nib.orientations.aff2axcodes(case.affine)), "sigma_z_true": max(true),
                             "sigma_z_own_grid": float(np.nanmax(sigma_z(np.moveaxis(image, -1, 0)))), "models": {}}
                for name, (model, version) in loaded.items():
                    if "sigma_z_resampled" not in row:
                        resampled, _, info = load_on_model_grid(model, path)
                        row["sigma_z_resampled"] = float(np.nanmax(sigma_z(resampled)))
                        row["noise_gain"] = info["noise_gain"]
                    label, _, checks = predict_file(model, path, checks_for=(name, version))
                    row["models"][name] = {"dice": region_dice(label, case.label),
                                           "sigma_z": checks["input_noise"]["sigma_z_max"]}
                logger.info("%s x%g (%s mm): sigma_z true %.3f, own grid %.3f, resampled %.3f, served %.3f (gain "
                            "%.3f); Dice %s", row["case"], factor, voxel, row["sigma_z_true"], row["sigma_z_own_grid"],
                            row["sigma_z_resampled"], next(iter(row["models"].values()))["sigma_z"],
                            row["noise_gain"], {n: {r: round(v, 3) for r, v in m["dice"].items()}
                                                for n, m in row["models"].items()})
                rows.append(row)
    out: dict = {"data": f"{cases} off-grid phantoms (seed {seed + OFF_GRID_SEED_OFFSET}) made without noise, given "
                         f"white Rician noise of factor x the generator's sigma on their own grid",
                 "drop": NOISE_DICE_DROP, "levels": factors, "cases": rows, "models": {},
                 "estimates": {"own_grid_over_true": ratios(rows, "sigma_z_own_grid"),
                               "resampled_over_true": ratios(rows, "sigma_z_resampled"),
                               "noise_gain": ratios(rows, "noise_gain", over=None)}}
    for name, (_, version) in loaded.items():
        levels = level_rows(rows, name)
        out["models"][name] = {"version": version, **tolerance(levels), "rows": levels,
                               "flags": flag_record(rows, name)}
    return out


def ratios(rows: list[dict], key: str, over: str | None = "sigma_z_true") -> dict:
    """Median and range of `key` (over `over`) across the rows."""
    r = np.array([row[key] / (row[over] if over else 1.0) for row in rows])
    return {"median": round(float(np.median(r)), 3), "min": round(float(r.min()), 3), "max": round(float(r.max()), 3)}


def level_rows(rows: list[dict], model: str, leave_out: str | None = None) -> list[dict]:
    """One row per noise factor, increasing (noise_tolerance's shape): the mean served sigma_z and the mean Dice
    per region over the cases (all but `leave_out`)."""
    out = []
    for f in sorted({r["factor"] for r in rows}):
        at = [r for r in rows if r["factor"] == f and r["case"] != leave_out]
        out.append({"level": f, "sigma_z": float(np.mean([r["models"][model]["sigma_z"] for r in at])),
                    "dice": {k: float(np.mean([r["models"][model]["dice"][k] for r in at])) for k in REGIONS}})
    return out


def fell(rows: list[dict], model: str) -> dict:
    """{(case, factor): whether a region's Dice fell by more than NOISE_DICE_DROP from the case's at factor 1},
    for the rows above factor 1."""
    base = {r["case"]: r["models"][model]["dice"] for r in rows if r["factor"] == 1}
    return {(r["case"], r["factor"]): any(base[r["case"]][k] - r["models"][model]["dice"][k] > NOISE_DICE_DROP
                                          for k in REGIONS)
            for r in rows if r["factor"] != 1 and r["case"] in base}


def score_flags(flags: list[bool], falls: list[bool]) -> dict:
    """How a flag fares on scans judged one by one: how many it flagged, of them how many fell, how many held."""
    return {"flagged": int(sum(flags)), "fell_and_flagged": int(sum(a and b for a, b in zip(flags, falls))),
            "held_and_flagged": int(sum(a and not b for a, b in zip(flags, falls)))}


def flag_record(rows: list[dict], model: str) -> dict:
    """How a flag fares on the scans above factor 1, for the served sigma_z against the tolerance for resampled
    scans (in sample, and with each case left out of its own tolerance) and, for comparison, for the own-grid and
    the resampled image's sigma_z against the model's 1 mm tolerance (input_noise.tolerances())."""
    from ..input_noise import tolerances

    f = fell(rows, model)
    judged = [r for r in rows if (r["case"], r["factor"]) in f]

    def score(flag) -> dict:
        return score_flags([bool(flag(r)) for r in judged], [f[(r["case"], r["factor"])] for r in judged])

    tol_in = tolerance(level_rows(rows, model))["sigma_z"]
    cases = {r["case"] for r in rows}
    served = lambda r: r["models"][model]["sigma_z"]  # noqa: E731
    one_mm = tolerances().get(model, {}).get("sigma_z")
    out = {"scans": len(judged), "fell": int(sum(f.values())), "served": score(lambda r: served(r) > tol_in)}
    if len(cases) > 1:  # one case left out leaves none to measure a tolerance on
        loo = {c: tolerance(level_rows(rows, model, leave_out=c))["sigma_z"] for c in cases}
        out["served_left_out"] = score(lambda r: served(r) > loo[r["case"]])
    if one_mm is not None:
        out["one_mm_tolerance"] = one_mm
        out["own_grid_vs_1mm"] = score(lambda r: r["sigma_z_own_grid"] > one_mm)
        out["resampled_image_vs_1mm"] = score(lambda r: r["sigma_z_resampled"] > one_mm)
        out["served_vs_1mm"] = score(lambda r: served(r) > one_mm)
    return out


def slice_class(row: dict, split_mm: float) -> str:
    """"thick" for a scan whose largest voxel side (its slice thickness) is above `split_mm`, else "thin"."""
    return "thick" if max(row["voxel_mm"]) > split_mm else "thin"


def slice_class_record(rows: list[dict], model: str, split_mm: float) -> dict:
    """A tolerance per slice class (slice_class: thin, thick), each measured as the single one is on that class's
    cases, and how its flag fares with each case left out of its own class's tolerance, beside the single
    tolerance's (flag_record's served_left_out)."""
    f = fell(rows, model)
    judged = [r for r in rows if (r["case"], r["factor"]) in f]
    served = lambda r: r["models"][model]["sigma_z"]  # noqa: E731
    out: dict = {"split_mm": split_mm, "classes": {}}
    loo: dict = {}
    for cls in ("thin", "thick"):
        of = [r for r in rows if slice_class(r, split_mm) == cls]
        cases = sorted({r["case"] for r in of})
        if not cases:
            continue
        out["classes"][cls] = {"cases": len(cases), **tolerance(level_rows(of, model))}
        for c in cases:  # a class of one case has none left to measure its tolerance on
            loo[c] = tolerance(level_rows(of, model, leave_out=c))["sigma_z"] if len(cases) > 1 else None
    scored = [r for r in judged if loo.get(r["case"]) is not None]
    flags = [served(r) > loo[r["case"]] for r in scored]
    falls = [f[(r["case"], r["factor"])] for r in scored]
    out["left_out"] = {"scans": len(scored), "fell": int(sum(falls)), **score_flags(flags, falls)}
    return out


def slice_class_table(res: dict, splits=(1.8, 2.0, 2.2)) -> list[str]:
    """bench/README's third table: a tolerance per slice class (slice_class_record) at a few splits, beside the
    one tolerance, each judged with every case left out of its own tolerance."""
    lines = ["| model | tolerance | thin: cases, noise ×, σ_z | thick: cases, noise ×, σ_z | scans that fell | "
             "flagged | of them fell | flagged that held |", "|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        one = m["flags"].get("served_left_out")
        if one is not None:
            lines.append(f"| {name} | one for all (σ_z {m['sigma_z']:.3f}) | | | {m['flags']['fell']} | "
                         f"{one['flagged']} | {one['fell_and_flagged']} | {one['held_and_flagged']} |")
        for split in splits:
            rec = slice_class_record(res["cases"], name, split)
            cls = [rec["classes"].get(c) for c in ("thin", "thick")]
            cells = [f"{c['cases']}, {c['level']:g}, {c['sigma_z']:.3f}" if c else "–" for c in cls]
            lo = rec["left_out"]
            lines.append(f"| {name} | slices ≤ {split:g} mm / thicker | {cells[0]} | {cells[1]} | {lo['fell']} | "
                         f"{lo['flagged']} | {lo['fell_and_flagged']} | {lo['held_and_flagged']} |")
    return lines


def markdown_table(res: dict) -> list[str]:
    """bench/README's table: per case and factor the sigma_z estimates and each model's Dice."""
    names = list(res["models"])
    lines = ["| case (voxel mm) | noise × | σ_z true | own grid | resampled image | served (own grid × gain) | "
             + " | ".join(f"{n} WT / TC / ET" for n in names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for r in res["cases"]:
        lines.append(f"| {r['case']} ({' × '.join(f'{v:g}' for v in r['voxel_mm'])}) | {r['factor']:g} | "
                     f"{r['sigma_z_true']:.3f} | {r['sigma_z_own_grid']:.3f} | {r['sigma_z_resampled']:.3f} | "
                     f"{r['models'][names[0]]['sigma_z']:.3f} | "
                     + " | ".join(" / ".join(f"{r['models'][n]['dice'][k]:.3f}" for k in REGIONS) for n in names)
                     + " |")
    return lines


def flag_table(res: dict) -> list[str]:
    """bench/README's second table: how each flag fares on the scans noisier than the phantoms' own."""
    lines = ["| model | scans that fell | flag | flagged | of them fell | flagged that held |", "|---|---|---|---|---|---|"]
    words = {"served_left_out": "served σ_z > tolerance for resampled scans (case left out)",
             "served": "served σ_z > tolerance for resampled scans (in sample)",
             "served_vs_1mm": "served σ_z > 1 mm tolerance",
             "own_grid_vs_1mm": "own-grid σ_z > 1 mm tolerance",
             "resampled_image_vs_1mm": "resampled image's σ_z > 1 mm tolerance (before)"}
    for name, m in res["models"].items():
        fl = m["flags"]
        for key, what in words.items():
            if key in fl:
                s = fl[key]
                lines.append(f"| {name} | {fl['fell']} of {fl['scans']} | {what} | {s['flagged']} | "
                             f"{s['fell_and_flagged']} | {s['held_and_flagged']} |")
    return lines


def summary_lines(res: dict) -> list[str]:
    o, q, g = (res["estimates"][k] for k in ("own_grid_over_true", "resampled_over_true", "noise_gain"))
    lines = [f"sigma_z on the scan's own grid / true: median {o['median']:.3f} (range {o['min']:.3f}-{o['max']:.3f}); "
             f"on the resampled image / true: median {q['median']:.3f} (range {q['min']:.3f}-{q['max']:.3f}); "
             f"noise gain {g['median']:.3f} ({g['min']:.3f}-{g['max']:.3f})"]
    for n, m in res["models"].items():
        lines.append(f"{n}: holds up on resampled scans (Dice within {res['drop']}) to noise x{m['level']:g}, "
                     f"served sigma_z {m['sigma_z']:.3f}")
    return lines


def plot(res: dict, path: Path) -> None:
    """Left: the three estimates against the true sigma_z. Right: each scan's largest Dice drop of a region from
    its case at factor 1 against the served sigma_z, with each model's tolerance for resampled scans."""
    from ..preview import pyplot, save_png

    plt = pyplot()
    rows = res["cases"]
    names = list(res["models"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    t = [r["sigma_z_true"] for r in rows]
    a.plot(t, [r["sigma_z_own_grid"] for r in rows], "o", label="on the scan's own grid")
    a.plot(t, [r["sigma_z_resampled"] for r in rows], "x", label="on the resampled image (before)")
    a.plot(t, [r["models"][names[0]]["sigma_z"] for r in rows], "+", ms=9, label="served: own grid × noise gain")
    top = max(t) * 1.05
    a.plot([0, top], [0, top], "k--", lw=1, label="estimate = true")
    a.set_xlabel("true σ_z (largest channel)")
    a.set_ylabel("estimated σ_z")
    a.set_title("noise estimate of off-grid scans")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    for k, name in enumerate(names):
        m = res["models"][name]
        base = {r["case"]: r["models"][name]["dice"] for r in rows if r["factor"] == 1}
        drop = [max(base[r["case"]][g] - r["models"][name]["dice"][g] for g in REGIONS) for r in rows]
        b.plot([r["models"][name]["sigma_z"] for r in rows], drop, "o", color=f"C{k}", alpha=0.8, label=name)
        b.axvline(m["sigma_z"], color=f"C{k}", ls="--", lw=1, label=f"{name} tolerance σ_z {m['sigma_z']:.3f}")
    b.axhline(res["drop"], color="k", lw=1, label=f"a region {res['drop']} below its Dice at the phantom's noise")
    b.set_xlabel("served σ_z (own grid × noise gain)")
    b.set_ylabel("largest Dice drop of a region")
    b.set_title("shipped weights, white noise on the scan's own grid")
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    save_png(fig, path)


def main(argv=None) -> int:
    p = shipped_weights_parser(__doc__, DEFAULT_OUT, Path("bench/results/noise_grid.png"),
                               seed_help=" (off-grid seed = seed + 2000)")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--factors", type=float, nargs="+", default=[1.0, 3.0, 6.0, 10.0, 15.0],
                   help="noise sigma as multiples of the generator's own, increasing, starting at 1")
    a = p.parse_args(argv)
    if sorted(a.factors) != a.factors or a.factors[0] != 1:
        p.error("--factors must be increasing and start at 1")
    setup_process(a.threads)
    res = run(a.models, a.cases, a.factors, a.seed)
    publish(res, "noise_grid", argv, a.out, plot, a.plot, (markdown_table, flag_table, slice_class_table, summary_lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
