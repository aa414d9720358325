"""Benchmark: the noise of a PACS study's series that was resampled onto another series' grid.

    python -m sparsesight.bench.series_noise [--cases 2] [--factors 2 5] [--downsample 1] [--threads 2]

A PACS study becomes one 4-channel image on the FLAIR series' grid (data.dicom.study.assemble): a T2 acquired on
another grid is resampled (trilinear) onto it before the file is written, and then, with the file, onto the
model's grid. Interpolation correlates its white noise and moves it out of the finest Haar band where
input_noise estimates it, so estimated on the file the T2's noise reads low. The PACS datastore therefore records
each resampled series' own grid and sigma^ on it (series_grids), and the checks report sigma^ times the share of
white noise's sigma kept through both resamplings (runners.segmentation.chained_noise_gain).

Cases: plain held-out phantoms (seed --seed, made without noise). FLAIR, T1 and T1ce get the generator's Rician
noise on its 1 mm grid, stored with DICOM's LPS axes (a flip away from the model's RAS grid); the T2 is resampled
onto each grid of SERIES_GRIDS and given white Rician noise of factor x the generator's T2 sigma there, as a
scanner would. For each: the truth, the standard deviation on the model's grid of the T2 noise (the noisy minus
the clean T2, both through the same resamplings, over the brain eroded by 2 voxels: what the network sees), the
estimate on the file as before (input_noise.sigma_hat of the model-grid image) and the served one (the series'
own sigma^ x its chained gain, load_on_model_grid with the series_grids), each over the truth. Writes
bench/results/series_noise.json and a plot.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from . import publish, setup_process
from .noise_grid import ratios, score_flags

logger = logging.getLogger(__name__)

#: T2 series grids: name -> (voxel size in mm, rotation about the left-right axis in degrees)
SERIES_GRIDS = {  # (at --downsample k, k times these)
    "2 mm in plane": ((2.0, 2.0, 1.0), 0.0),
    "5 mm slices": ((1.0, 1.0, 5.0), 0.0),
    "0.9 x 0.9 x 3 mm, tilted 12 deg": ((0.9, 0.9, 3.0), 12.0),
}


def series_affine(shape, affine: np.ndarray, voxel, tilt_deg: float) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) of a grid of `voxel` size, its axes those of `affine` tilted by `tilt_deg` about the first,
    covering the field of view of (`shape`, `affine`) about its centre."""
    t = np.deg2rad(tilt_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    extent = np.abs(np.linalg.norm(affine[:3, :3], axis=0) * np.array(shape))
    out_shape = np.ceil(extent * (1.15 if tilt_deg else 1.0) / np.array(voxel)).astype(int)
    out = np.eye(4)
    out[:3, :3] = axes @ rot @ np.diag(voxel)
    out[:3, 3] = centre - out[:3, :3] @ ((out_shape - 1) / 2)
    return tuple(int(n) for n in out_shape), out


def _model_grid(mm: float):
    from types import SimpleNamespace

    from .. import MODALITIES

    return SimpleNamespace(spacing_mm=(float(mm),) * 3, n=len(MODALITIES))  # what load_on_model_grid reads


def run(cases: int, factors: list[float], seed: int, downsample: int = 1, models=()) -> dict:
    import nibabel as nib
    from nibabel.processing import resample_from_to
    from scipy import ndimage

    from .. import MODALITIES
    from ..data.dicom import study
    from ..data.phantom import make_case, rician_noise
    from ..data.phantom.dataset import case_seed
    from ..input_noise import sigma_hat
    from ..metrics import region_dice
    from ..runners.segmentation import load_on_model_grid, predict_file
    from . import load_shipped

    loaded = {name: load_shipped(name)[:2] for name in models}
    t2 = MODALITIES.index("T2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cases):
            case = make_case(case_seed(seed, i), downsample, noise=False)
            sigmas = list(case.params["noise_sigma"].values())
            rng = np.random.default_rng([seed, i])
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            flip[:2, 3] = np.array(case.image.shape[:2]) - 1
            lps = np.asarray(case.affine, dtype=float) @ flip  # DICOM's axes: the same voxels, rows and columns reversed
            clean = case.image[::-1, ::-1].astype(np.float32)
            truth_label = case.label[::-1, ::-1]
            brain = clean.any(-1)
            vols = {}
            for m, name in enumerate(MODALITIES[:t2]):
                chan = np.zeros(brain.shape, np.float32)
                chan[brain] = rician_noise(clean[..., m][brain], sigmas[m], rng)
                vols[name] = (chan, lps)
            for grid, (voxel, tilt) in SERIES_GRIDS.items():
                shape, aff = series_affine(brain.shape, lps, [v * downsample for v in voxel], tilt)
                t2_clean = resample_from_to(nib.Nifti1Image(clean[..., t2], lps), (shape, aff), order=1).get_fdata(
                    dtype=np.float32)
                inside = t2_clean > 0
                for factor in factors:
                    noisy = np.zeros(shape, np.float32)
                    noisy[inside] = rician_noise(t2_clean[inside], factor * sigmas[t2], rng)
                    on_grid = {}
                    for kind, series in (("noisy", noisy), ("clean", t2_clean)):
                        image, affine, grids = study.assemble(
                            "bench", {**vols, "T2": (series, aff)}, dict.fromkeys(MODALITIES, "for"))
                        path = Path(tmp) / f"{kind}.nii.gz"
                        nib.save(nib.Nifti1Image(image, affine), str(path))
                        # the clean study is only the truth's reference: no noise estimate of its own
                        on_grid[kind] = load_on_model_grid(_model_grid(downsample), path, noise=kind == "noisy",
                                                           series_grids=grids) + (grids,)
                    image, _, info, grids = on_grid["noisy"]
                    region = ndimage.binary_erosion(np.all(on_grid["clean"][0] != 0, 0), iterations=2)
                    truth = float((image[t2] - on_grid["clean"][0][t2])[region].std())
                    gain = info["series"]["T2"]["noise_gain"]
                    row = {"case": f"case_{i:03d}", "grid": grid, "voxel_mm": [v * downsample for v in voxel], "tilt_deg": tilt,
                           "factor": factor, "sigma_put_in": factor * sigmas[t2], "sigma_own_grid": grids["T2"]["sigma"],
                           "truth": truth, "before": float(sigma_hat(image)[t2]),
                           "served": grids["T2"]["sigma"] * gain, "noise_gain": gain}
                    row.update({f"{k}_over_truth": row[k] / truth for k in ("before", "served")})
                    # the served figure's two factors, each against its truth
                    row["own_grid_over_put_in"] = row["sigma_own_grid"] / row["sigma_put_in"]
                    row["truth_over_put_in_x_gain"] = truth / (row["sigma_put_in"] * gain)
                    logger.info("%s %s x%g: T2 noise on the model's grid %.1f; estimated on the file %.1f (%.2f), "
                                "served %.1f (%.2f; own grid %.1f x gain %.3f)", row["case"], grid, factor, truth,
                                row["before"], row["before_over_truth"], row["served"], row["served_over_truth"],
                                row["sigma_own_grid"], gain)
                    for name, (model, meta) in loaded.items():  # the served plain answer on the study
                        label, _, checks = predict_file(model.eval(), Path(tmp) / "noisy.nii.gz", series_grids=grids,
                                                        checks_for=(name, meta["version"]))
                        noise = checks["input_noise"]
                        row.setdefault("models", {})[name] = {
                            "dice": region_dice(label, truth_label), "sigma_z_T2": noise["sigma_z"]["T2"],
                            "tolerance_T2": (noise.get("tolerance_by_modality") or {}).get("T2", noise["tolerance"]),
                            "noise_flagged": bool(noise["flags"])}
                        logger.info("  %s: Dice %s, T2 sigma_z %.3f, noise flagged %s", name,
                                    {k: round(v, 3) for k, v in row["models"][name]["dice"].items()},
                                    noise["sigma_z"]["T2"], bool(noise["flags"]))
                    rows.append(row)
    out = {"data": f"{cases} plain held-out phantoms (seed {seed}, {downsample} mm) made without noise; FLAIR, T1, "
                   f"T1ce with the generator's Rician noise on its grid (LPS axes), the T2 on another grid with Rician noise "
                   f"of factor x the generator's T2 sigma there, assembled as a PACS study on FLAIR's grid",
           "grids": {g: {"voxel_mm": list(v), "tilt_deg": t} for g, (v, t) in SERIES_GRIDS.items()},
           "factors": factors, "rows": rows,
           "summary": {**{k: ratios(rows, f"{k}_over_truth", over=None) for k in ("before", "served")},
                       **{k: ratios(rows, k, over=None) for k in ("own_grid_over_put_in", "truth_over_put_in_x_gain")}}}
    out["summary"]["noise_gain"] = {g: ratios([r for r in rows if r["grid"] == g], "noise_gain", over=None)
                                    for g in SERIES_GRIDS}
    out["models"] = {name: {"version": meta["version"], **flag_record(rows, name)} for name, (_, meta) in loaded.items()}
    return out


def flag_record(rows: list[dict], model: str) -> dict:
    """How the T2 noise flag fares on the scans above the lowest factor: a scan *fell* when a region lost more than
    NOISE_DICE_DROP from the same case and T2 grid at the lowest factor; with the largest drop seen."""
    from ..input_noise import NOISE_DICE_DROP

    low = min(r["factor"] for r in rows)
    base = {(r["case"], r["grid"]): r["models"][model]["dice"] for r in rows if r["factor"] == low}
    judged = [r for r in rows if r["factor"] != low]
    drop = [max(base[(r["case"], r["grid"])][k] - r["models"][model]["dice"][k] for k in ("WT", "TC", "ET"))
            for r in judged]
    fell = [d > NOISE_DICE_DROP for d in drop]
    flag = [r["models"][model]["noise_flagged"] for r in judged]
    return {"scans": len(judged), "fell": int(sum(fell)), **score_flags(flag, fell),
            "largest_drop": round(float(max(drop)), 4) if drop else None}


def model_table(res: dict) -> list[str]:
    """Per model: the T2 noise flag on the scans above the lowest factor, against the Dice."""
    lines = ["| model | scans | fell | flagged | of them fell | flagged that held | largest Dice drop |",
             "|---|---|---|---|---|---|---|"]
    for name, m in res.get("models", {}).items():
        lines.append(f"| {name} | {m['scans']} | {m['fell']} | {m['flagged']} | {m['fell_and_flagged']} | "
                     f"{m['held_and_flagged']} | {m['largest_drop']:.3f} |")
    return lines


def summary_lines(res: dict) -> list[str]:
    s = res["summary"]

    def span(r):
        return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"

    return [f"T2 noise estimated on the assembled file: {span(s['before'])} of what the network sees",
            f"served (its own grid x chained gain): {span(s['served'])}",
            f"sigma^ on the series' own grid over the sigma put in: {span(s['own_grid_over_put_in'])}; the truth over "
            f"the sigma put in x the chained gain: {span(s['truth_over_put_in_x_gain'])}",
            "chained gain: " + ", ".join(f"{g} {r['median']:.3f}" for g, r in s["noise_gain"].items())]


def markdown_table(res: dict) -> list[str]:
    """Per T2 grid: the chained gain and the two estimates over the truth (median and range over cases and factors)."""
    out = ["| T2 series grid | chained gain | on the file / truth | served / truth |", "|---|---|---|---|"]
    for grid in res["grids"]:
        rows = [r for r in res["rows"] if r["grid"] == grid]
        cells = [ratios(rows, k, over=None) for k in ("noise_gain", "before_over_truth", "served_over_truth")]
        out.append(f"| {grid} | {cells[0]['median']:.3f} | "
                   + " | ".join(f"{c['median']:.2f} ({c['min']:.2f}-{c['max']:.2f})" for c in cells[1:]) + " |")
    return out


def plot(res: dict, path: Path) -> None:
    from ..preview import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for grid, marker in zip(res["grids"], "os^"):
        rows = [r for r in res["rows"] if r["grid"] == grid]
        t = [r["truth"] for r in rows]
        ax.scatter(t, [r["before"] for r in rows], marker=marker, color="C3", label=f"on the file: {grid}")
        ax.scatter(t, [r["served"] for r in rows], marker=marker, color="C0", label=f"served: {grid}")
    lim = max(max(r["truth"], r["served"]) for r in res["rows"]) * 1.1
    ax.plot([0, lim], [0, lim], "k--", lw=0.8)
    ax.set_xlabel("T2 noise sigma on the model's grid (truth)")
    ax.set_ylabel("estimated")
    ax.set_title("A PACS study's T2 resampled onto FLAIR's grid: its noise estimate", fontsize=9)
    ax.legend(fontsize=6)
    save_png(fig, path)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--factors", type=float, nargs="+", default=[2.0, 5.0])
    p.add_argument("--seed", type=int, default=1000, help="the cards' held-out seed")
    p.add_argument("--downsample", type=int, default=1, help="phantoms (and the model's grid) at this many mm")
    p.add_argument("--models", nargs="*", default=[], choices=["sum", "mlcsc"],
                   help="shipped weights to segment each study with (Dice and the noise flag)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/series_noise.json"))
    p.add_argument("--plot", type=Path, default=Path("bench/results/series_noise.png"))
    a = p.parse_args(argv)
    setup_process(a.threads)
    res = run(a.cases, a.factors, a.seed, a.downsample, a.models)
    publish(res, "series_noise", argv, a.out, plot, a.plot, (markdown_table, summary_lines, model_table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
