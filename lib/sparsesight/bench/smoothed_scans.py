"""Benchmark: scans smoothed or denoised before they were uploaded, or with almost no noise: what their noise says,
and whether the shipped weights hold up on them (the tolerance their bundles flag against).

    python -m sparsesight.bench.smoothed_scans [--models sum mlcsc] [--cases 2] [--sigmas 0.5 0.75 1 1.25 1.5 2]
        [--nlmeans 1 2] [--threads 1] [--out lib/sparsesight/data/smoothed_tolerance.json]

input_grid.apparent_factor reads over how many voxels a scan's noise is correlated. A scan upsampled from thick
slices reads high along the slice axis and less along the others (bench/upsampled_slices); a scan whose noise was
filtered in 3D reads high along every axis, and so does one with almost no noise, whose high frequencies are the
anatomy's. On the held-out phantoms of the shipped models' cards (1 mm, case seeds never trained on), each case is
also made without noise (the generator's `noise=False`), denoised by non-local means (DIPY's `nlmeans`, Rician,
with the generator's sigma of each sequence times each `--nlmeans` factor: 2 over-smooths) and smoothed by a
Gaussian of each `--sigmas` (voxels). Per input: the reading on the scan as the server loads it
(upsampled_slices.reading), whether input_grid.smoothed calls its pattern smoothed (every axis read alike) and the
served label's Dice against the 1 mm truth. Each (kind, level) is one group, its reading and Dice the means over the
cases. A model's tolerance is chosen by upsampled_slices.tolerance's rule (the largest reading of a group that held,
below the lowest reading of a group that fell). Writes the JSON the package ships (input_grid.smoothed_tolerances)
and a plot in bench/results (--plot).
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .. import MODALITIES
from ..input_grid import smoothed
from . import publish, setup_process, shipped_weights_parser
from .noise_tolerance import REGIONS
from .upsampled_slices import flag_counts, plot_readings, reading, segmented, tolerance

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "smoothed_tolerance.json"
KIND_NAMES = {"as made": "1 mm scan", "noise-free": "no noise", "nlmeans": "non-local means (x sigma)",
              "gaussian": "Gaussian (sigma, voxels)"}


def variants(image: np.ndarray, noise_free: np.ndarray, sigma: list[float], sigmas: list[float],
             nlmeans_factors: list[float]) -> list[tuple[str, float, np.ndarray]]:
    """(kind, level, image) of one case (C, X, Y, Z): as made, without noise, denoised by DIPY's non-local means
    (Rician, each channel with its noise `sigma` times each factor, inside the brain) and Gaussian-smoothed."""
    from dipy.denoise.nlmeans import nlmeans

    brain = np.any(image != 0, axis=0)
    out = [("as made", 0.0, image), ("noise-free", 0.0, noise_free)]
    for k in nlmeans_factors:
        out.append(("nlmeans", k, np.stack([nlmeans(c, sigma=s * k, mask=brain, patch_radius=1, block_radius=3,
                                                    rician=True) for c, s in zip(image, sigma)]).astype(np.float32)))
    out += [("gaussian", s, np.stack([ndi.gaussian_filter(c, s) for c in image])) for s in sigmas]
    return out


def make_inputs(ds_json: Path, sigmas: list[float], nlmeans_factors: list[float], work: Path) -> list[dict]:
    """Every input, written once as NIfTI under `work`, with its reading and pattern; the held-out cases are
    re-made from their seeds without noise (the same anatomy, tumour, contrast and bias field)."""
    from ..data.io import load_image, load_label
    from ..data.phantom import make_case
    from ..pretrain import items_of

    seeds = json.loads(ds_json.read_text())["sparsesight"]["case_seeds"]
    inputs = []
    for it, seed in zip(items_of(ds_json, "test"), seeds):
        img, aff = load_image(it["image"])
        lab = load_label(it["label"], spatial_shape=img.shape[1:])[0]
        clean = make_case(seed, 1, noise=False)
        if clean.label.shape != lab.shape or not np.array_equal(clean.label, lab):
            raise ValueError(f"{it['id']}: the case re-made from seed {seed} is not the held-out file's")
        sigma = [float(clean.params["noise_sigma"][m]) for m in MODALITIES]
        noise_free = np.moveaxis(clean.image, -1, 0).astype(np.float32)
        for kind, level, x in variants(img, noise_free, sigma, sigmas, nlmeans_factors):
            path = Path(it["image"]) if kind == "as made" else work / f"{it['id']}_{kind}_{level:g}.nii.gz"
            if kind != "as made":
                nib.save(nib.Nifti1Image(np.moveaxis(x, 0, -1), aff), str(path))
            factor, mm, axis = reading(x, list(nib.affines.voxel_sizes(aff)))
            inputs.append({"case": it["id"], "kind": kind, "level": level, "path": path, "label": lab,
                           "affine": aff, "factor": factor, "apparent_mm": mm, "apparent_axis": axis,
                           "smoothed": smoothed(factor)})
            logger.info("%s, %s %g: reads %s voxels (%s)", it["id"], kind, level, factor,
                        "smoothed" if inputs[-1]["smoothed"] else "not smoothed")
    return inputs


def groups(per_input: list[dict]) -> list[dict]:
    """One row per (kind, level), the scans as made first: mean reading, the share read as smoothed and the mean
    Dice per region over the cases."""
    order = list(KIND_NAMES)
    keys = sorted({(r["kind"], r["level"]) for r in per_input}, key=lambda k: (order.index(k[0]), k[1]))
    rows = []
    for kind, level in keys:
        rs = [r for r in per_input if r["kind"] == kind and r["level"] == level]
        rows.append({"kind": kind, "level": level,
                     "apparent_mm": round(float(np.mean([r["apparent_mm"] for r in rs])), 3),
                     "smoothed": round(float(np.mean([r["smoothed"] for r in rs])), 3),
                     "dice": {k: float(np.mean([r["dice"][k] for r in rs])) for k in REGIONS}})
    return rows


def as_upsampled(rows: list[dict], name: str, version: str) -> dict | None:
    """What these groups would get against the tolerance of upsampled scans (input_grid.upsampled_tolerances, the
    one every reading was compared with before smoothed scans were told apart): how many that fell and how many
    that held read above it. None when that tolerance was measured on other weights."""
    from ..input_grid import upsampled_tolerances

    up = upsampled_tolerances().get(name, {})
    if up.get("version") != version:
        return None
    counts = flag_counts(rows, up["apparent_mm"])
    return {"apparent_mm": up["apparent_mm"], "caught": counts["caught"], "false_flags": counts["false_flags"]}


def run(models: list[str], cases: int, sigmas: list[float], nlmeans_factors: list[float], seed: int,
        work: Path) -> dict:
    from ..pretrain import eval_split

    ds = eval_split(cases, 1, seed, work)
    out: dict = {"sigmas": sigmas, "nlmeans": nlmeans_factors,
                 "data": f"{cases} held-out phantoms of the model cards (pretrain.eval_split, seed {seed}, 1 mm): "
                         f"as made, made without noise, denoised by non-local means (DIPY nlmeans, Rician, the "
                         f"generator's sigma times {nlmeans_factors}) and smoothed by Gaussians of sigma {sigmas} "
                         f"voxels", "models": {}}
    with tempfile.TemporaryDirectory(prefix="smoothed_scans_") as tmp:
        inputs = make_inputs(ds, sigmas, nlmeans_factors, Path(tmp))
        out["readings"] = [{k: i[k] for k in ("case", "kind", "level", "factor", "apparent_mm", "apparent_axis",
                                               "smoothed")} for i in inputs]
        for name in models:
            version, per_input = segmented(name, inputs, ("case", "kind", "level", "apparent_mm", "smoothed"))
            rows = groups(per_input)
            out["models"][name] = {"version": version, **tolerance(rows), "rows": rows,
                                   "as_upsampled": as_upsampled(rows, name, version), "per_input": per_input}
    return out


def markdown_table(res: dict) -> list[str]:
    """bench/README's table: per model and input kind, the reading, the share read as smoothed, the Dice."""
    lines = ["| model | input | level | reads mm | read as smoothed | WT | TC | ET |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for r in m["rows"]:
            d = r["dice"]
            level = f"{r['level']:g}" if r["kind"] in ("nlmeans", "gaussian") else ""
            lines.append(f"| {name} | {KIND_NAMES[r['kind']]} | {level} | {r['apparent_mm']:.2f} | "
                         f"{r['smoothed']:.0%} | {d['WT']:.3f} | {d['TC']:.3f} | {d['ET']:.3f} |")
    return lines


def summary(res: dict) -> list[str]:
    return [f"{name}: holds up to a reading of {m['apparent_mm']:g} mm on smoothed scans; of {m['fell']} groups that "
            f"fell, {m['caught']} read above it (flagged), {m['missed']} did not; {m['false_flags']} that held are "
            f"flagged" + ("" if m.get("as_upsampled") is None else
                          f". Against the upsampled scans' tolerance ({m['as_upsampled']['apparent_mm']:g} mm) "
                          f"{m['as_upsampled']['false_flags']} that held would be flagged, as upsampled")
            for name, m in res["models"].items()]


def plot(res: dict, path: Path) -> None:
    """upsampled_slices.plot_readings with a marker per kind of input (the Gaussians joined by a line)."""
    series = {KIND_NAMES[k]: (mk, ("kind", k), k == "gaussian")
              for k, mk in {"as made": "s", "noise-free": "D", "nlmeans": "v", "gaussian": "o"}.items()}
    plot_readings(res, path, series, "reading: apparent voxel size (mm)", "smoothed or noise-free scans")


def main(argv=None) -> int:
    p = shipped_weights_parser(__doc__, DEFAULT_OUT, Path("bench/results/smoothed_scans.png"),
                               seed_help=" (held-out seed = seed + 1000)")
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
                   help="Gaussian sigmas in voxels")
    p.add_argument("--nlmeans", type=float, nargs="*", default=[1.0, 2.0],
                   help="non-local means' sigma as multiples of the generator's noise sigma (none: leave it out)")
    a = p.parse_args(argv)
    if any(v <= 0 for v in a.sigmas + a.nlmeans):
        p.error("--sigmas and --nlmeans must be positive")
    setup_process(a.threads)
    res = run(a.models, a.cases, sorted(a.sigmas), sorted(a.nlmeans), a.seed, a.work)
    publish(res, "smoothed_scans", argv, a.out, plot, a.plot, (markdown_table, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
