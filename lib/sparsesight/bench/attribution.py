"""Benchmark: attribution cost, memory and faithfulness for the served models (issue 5).

    python -m sparsesight.bench.attribution [--steps 8] [--weights shipped|train] [--crop 64] [--targets ...]
        [--full] [--out bench/results]

1. Cost of IG with n steps against its floor n x (forward + backward) of the same model and score, measured in
   the same run: one path point per pass (batch 1) and the chunked default (n points per pass, against
   ceil(n / b) batched passes). Aim <= 1.2x.
2. (--full) Peak memory on a full-size 240 x 240 x 155 x 4 volume (each in a fresh process, ru_maxrss): IG with
   n = 2 steps in chunks of one point against one forward + backward; working memory = peak - memory after loading.
3. Deletion / insertion AUC (Petsiuk et al. 2018) of every method for each served model (mlcsc, sum), target
   class(es) --targets over the predicted region, against two rankings of the same run: a random map and the
   image's Sobel edge map (gains: reference / method for deletion, method / reference for insertion; > 1 is
   better). --weights shipped (default): the shipped models on their cards' held-out phantoms at 1 mm, a --crop^3
   box around the tumour; --weights train: models trained briefly here on --downsample mm phantoms.
4. (shipped) Model randomisation (Adebayo et al. 2018, layers re-initialised from the model's own random
   initialisation): every method's map against the map of the fully randomised model, on every case and target,
   and the cascade (output -> input, one layer more each time) of IG and the gradient on the first case. Spearman
   rank correlation of the maps as the bundles show them (summed over modalities, signed) and of their
   magnitudes; aim |rho| <= 0.3.
5. (--data-randomisation, shipped) Data randomisation (Adebayo et al. 2018, Sec. 3.2) of every method: the same
   figures against the map of the shipped null model (apps/sparsesight/pretrained/null: the same recipe on permuted
   labels) on the held-out cases; with the null model's held-out Dice. Only this part runs; its rows are
   merged into the attribution.json in --out.

Writes attribution.json, attribution.csv and attribution.png under --out and prints the ratio tables.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import CLASSES, models
from ..data.io import load_image, load_label
from ..explain.attribution import METHODS, SHORT, TargetScore, attribute
from ..explain.faithfulness import (
    data_randomisation,
    deletion_insertion,
    gains,
    model_randomisation,
    passes,
    randomisation_check,
    reference_maps,
)
from ..explain.gradients import grad_and_score
from ..preview import pyplot, save_png
from ..runners.segmentation import normalise
from ..training import train
from . import setup_process
from .segmentation import BRATS_SHAPE, _dataset

logger = logging.getLogger(__name__)
TARGET = 3  # enhancing
#: methods whose maps get the cascading model-randomisation check (Adebayo et al. 2018) in the shipped run
SANITY_METHODS = ("integrated_gradients", "gradient")
#: the figures of a sanity-check row (explain.faithfulness._against)
CHECK_KEYS = ("spearman", "spearman_abs", "ssim_abs", "sane", "magnitude_sane", "shared")


def check_row(r: dict) -> dict:
    """A sanity check's result as a flat row: its CHECK_KEYS and what the two maps follow besides the model
    (faithfulness.follows: the map's, then the other model's as other_<key>)."""
    return {**{k: r[k] for k in CHECK_KEYS}, **r["follows"], **{f"other_{k}": v for k, v in r["other_follows"].items()}}


def ig_cost(model, x: torch.Tensor, steps: int, repeats: int = 3) -> dict:
    """IG time against n x (forward + backward), one point per pass and chunked; the floor and IG are timed
    alternately (after one warm-up of each) and the medians compared, so load changes hit both alike."""
    F = TargetScore(model.eval(), TARGET, None)
    b = steps
    xb = x.expand(b, *x.shape[1:]).contiguous()

    def floor1():
        for _ in range(steps):
            grad_and_score(F, x)

    def floorb():
        for _ in range(math.ceil(steps / b)):
            grad_and_score(F, xb)

    runs = {"floor_s": floor1, "ig_s": lambda: attribute(model, x, "ig", TARGET, region="all", steps=steps, batch=1),
            "floor_batched_s": floorb,
            "ig_batched_s": lambda: attribute(model, x, "ig", TARGET, region="all", steps=steps, batch=b)}
    for fn in runs.values():
        fn()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"steps": steps, "shape": list(x.shape[1:]), "fwd_bwd_s": med["floor_s"] / steps, **med,
            "batch": b, "fwd_bwd_batched_s": med["floor_batched_s"] / math.ceil(steps / b),
            "ratio": med["ig_s"] / med["floor_s"], "ratio_batched": med["ig_batched_s"] / med["floor_batched_s"]}


def _memory_child(kind: str, name: str, steps: int) -> dict:
    """Run in a fresh process: peak RSS of one forward+backward ('floor') or IG ('ig') on a full-size volume."""
    torch.manual_seed(0)
    model = models.build(name).eval()
    x = torch.randn(1, 4, *BRATS_SHAPE)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if kind == "floor":
        grad_and_score(TargetScore(model, TARGET, None), x)
    else:
        attribute(model, x, "ig", TARGET, region="all", steps=steps, batch=1, progress=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "model": name, "base_mb": base, "peak_mb": peak, "working_mb": peak - base,
            "seconds": time.perf_counter() - t}


def full_size_memory(name: str, steps: int = 2) -> dict:
    out = {}
    for kind in ("floor", "ig"):
        r = subprocess.run([sys.executable, "-m", "sparsesight.bench.attribution", "--_memory", kind,
                            "--_model", name, "--steps", str(steps)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"memory run {kind} failed:\n{r.stderr[-3000:]}")
        out[kind] = json.loads(r.stdout.strip().splitlines()[-1])
    out["ig_steps"] = steps
    out["ratio_working"] = out["ig"]["working_mb"] / max(out["floor"]["working_mb"], 1e-9)
    return out


def faithfulness_table(name: str, data: dict, epochs: int, steps: int, n_eval: int, patch: int,
                       seed: int = 0) -> list[dict]:
    """Rows of a model trained briefly here (`--weights train`, the first benchmark's way)."""
    torch.manual_seed(seed)
    model = models.build(name)
    train(model, data["train"], epochs=epochs, config={"patch_size": [patch] * 3, "seed": seed})
    model.eval()
    rows = []
    for it in data["test"][:n_eval]:
        img, _ = load_image(it["image"])
        rows += case_rows(name, model, normalise(img).as_subclass(torch.Tensor), load_label(it["label"])[0],
                          Path(it["image"]).name.split(".")[0], steps, [TARGET], seed)
    return rows


def tumour_crop(label: np.ndarray, size: int) -> tuple[slice, ...]:
    """A size^3 box (clipped to the image) centred on the tumour's centre of mass (the image centre without one)."""
    idx = np.argwhere(label > 0)
    centre = idx.mean(0) if len(idx) else (np.array(label.shape) - 1) / 2
    out = []
    for c, n in zip(centre, label.shape):
        lo = int(np.clip(round(c) - size // 2, 0, max(n - size, 0)))
        out.append(slice(lo, min(lo + size, n)))
    return tuple(out)


def case_rows(name: str, model, x: torch.Tensor, label: np.ndarray, case: str, steps: int, targets: list[int],
              seed: int, randomised: list[dict] | None = None) -> list[dict]:
    """Deletion / insertion of every method and of the random and Sobel rankings, per target class, on x; with a
    list `randomised`, each method's model-randomisation rows (every layer re-initialised) are appended to it."""
    rows = []
    refs = reference_maps(x, seed)
    for target in targets:
        maps = {}
        for m in METHODS:
            t = time.perf_counter()
            maps[m] = (attribute(model, x, m, target, steps=steps, progress=True,
                                 **({"samples": steps} if m == "smoothgrad" else {})), time.perf_counter() - t)
        if randomised is not None:
            for m in METHODS:
                kw = {"steps": steps, **({"samples": steps} if m == "smoothgrad" else {})}
                r = model_randomisation(model, x, maps[m][0], m, target, seed=seed, **kw)
                randomised.append({"model": name, "case": case, "target": CLASSES[target], "method": SHORT.get(m, m),
                                   **check_row(r)})
                logger.info("model randomisation %s", randomised[-1])
        maps.update({k: (v, 0.0) for k, v in refs.items()})
        for m, (a, secs) in maps.items():
            f = deletion_insertion(model, x, a, target, steps=10)
            rows.append({"model": name, "case": case, "target": CLASSES[target], "method": SHORT.get(m, m),
                         "deletion_auc": f["deletion_auc"], "insertion_auc": f["insertion_auc"], "seconds": secs,
                         "target_voxels": int((label == target).sum())})
    return rows


def held_out_crops(n_eval: int, crop: int, work: Path):
    """(case id, normalised image (1, C, crop^3), label (crop^3)) of the first n_eval held-out phantoms of the
    shipped cards' split (1 mm, seed 1000), each cut to a crop^3 box around the tumour."""
    from ..pretrain import eval_split, items_of

    for it in items_of(eval_split(max(n_eval, 2), 1, 0, work), "test")[:n_eval]:
        img, _ = load_image(it["image"])
        label = load_label(it["label"])[0]
        box = tumour_crop(label, crop)
        x = normalise(img).as_subclass(torch.Tensor)[(slice(None), slice(None), *box)].contiguous()
        yield Path(it["image"]).name.split(".")[0], x, label[box]


def shipped_table(name: str, steps: int, n_eval: int, crop: int, targets: list[int], work: Path,
                  seed: int = 0) -> tuple[list[dict], list[dict], list[dict], str]:
    """Rows of the shipped model (apps/sparsesight/pretrained) on the held-out phantoms of its card (1 mm),
    each cut to a crop^3 box around the tumour; every method's model-randomisation rows; the cascading rows of
    SANITY_METHODS on the first case; and the version of the weights measured (a test checks it is still the
    shipped one)."""
    from ..checkpoint import load
    from ..pretrain import PRETRAINED

    model, meta = load(PRETRAINED / f"{name}.pt")
    model.eval()
    rows, randomised, sanity = [], [], []
    for i, (case, x, label) in enumerate(held_out_crops(n_eval, crop, work)):
        rows += case_rows(name, model, x, label, case, steps, targets, seed, randomised)
        if i == 0:
            for method in SANITY_METHODS:
                for r in randomisation_check(model, x, method, targets[0], seed=seed, steps=steps, progress=True):
                    sanity.append({"model": name, "case": case, "method": SHORT[method], **r})
    return rows, randomised, sanity, meta["version"]


def data_randomisation_rows(name: str, steps: int, n_eval: int, crop: int, targets: list[int], work: Path,
                            seed: int = 0) -> tuple[list[dict], dict]:
    """Rows {model, case, target, method, check_row's figures} of every method on the shipped model against its
    null model (null_models.find), on the held-out phantoms of its card cut as shipped_table
    cuts them; and the null model's {version, held-out Dice, training command} from its card."""
    from ..checkpoint import load
    from ..explain import null_models
    from ..model_card import read
    from ..pretrain import PRETRAINED

    model, meta = load(PRETRAINED / f"{name}.pt")
    model.eval()
    null, info = null_models.find(name, model)
    if null is None:
        raise SystemExit(f"--data-randomisation: {info['note']}")
    card = read(null_models.NULL_DIR / f"{name}.pt") or {}
    null_info = {"version": info["version"], "command": card["training"]["command"],
                 "held_out_dice": card["evaluation"]["dice"]["held-out"], "served_version": meta["version"]}
    rows = _check_rows(name, model, lambda x, attr, m, target, kw: data_randomisation(model, null, x, attr, m,
                                                                                   target, **kw),
                       "data randomisation", steps, n_eval, crop, targets, work)
    return rows, null_info


def _check_rows(name: str, model, check, what: str, steps: int, n_eval: int, crop: int, targets: list[int],
                work: Path) -> list[dict]:
    """check_row of `check`(x, the method's map, method, target, options) for every method and target of `model`
    on the held-out crops (held_out_crops), one row each {model, case, target, method, ...}."""
    rows = []
    for case, x, _ in held_out_crops(n_eval, crop, work):
        for target in targets:
            for m in METHODS:
                kw = {"steps": steps, **({"samples": steps} if m == "smoothgrad" else {})}
                attr = attribute(model, x, m, target, progress=True, **kw)
                rows.append({"model": name, "case": case, "target": CLASSES[target], "method": SHORT[m],
                             **check_row(check(x, attr, m, target, kw))})
                logger.info("%s %s", what, rows[-1])
    return rows


def model_randomisation_rows(name: str, steps: int, n_eval: int, crop: int, targets: list[int], work: Path,
                             seed: int = 0) -> tuple[list[dict], str]:
    """The model-randomisation rows of shipped_table alone (every method against the same method on a copy of
    the shipped model with every layer re-initialised), and the version of the weights measured."""
    from ..checkpoint import load
    from ..pretrain import PRETRAINED

    model, meta = load(PRETRAINED / f"{name}.pt")
    model.eval()
    rows = _check_rows(name, model, lambda x, attr, m, target, kw: model_randomisation(model, x, attr, m, target,
                                                                                    seed=seed, **kw),
                       "model randomisation", steps, n_eval, crop, targets, work)
    return rows, meta["version"]


def _mean_rho(values: list) -> float | None:
    """The mean of a Spearman over cases; None (undefined) when a case's map was constant."""
    return None if any(v is None for v in values) else float(np.mean(values))


def _groups(rows: list[dict], lead: dict[str, str]):
    """(model, lead text, target, method, its rows over cases) of a check's rows, in their recorded order."""
    for name, text in lead.items():
        rs = [r for r in rows if r["model"] == name]
        for target, method in dict.fromkeys((r["target"], r["method"]) for r in rs):
            yield name, text, target, method, [r for r in rs if r["target"] == target and r["method"] == method]


def check_table(rows: list[dict], lead: dict[str, str]) -> list[str]:
    """A sanity check's rows (model, target, method: the mean over cases) as bench/README.md quotes them;
    `lead` {model: text} fills the column after the model's name (the null model, or the randomisation)."""
    lines = [r"| model | against | target | method | Spearman of the map as shown | passes (\|ρ\| ≤ 0.3) "
             r"| Spearman of \|map\| | passes | SSIM of \|map\| |", "|---|---|---|---|---|---|---|---|---|"]
    for name, text, target, method, sel in _groups(rows, lead):
        cells = []
        for key in ("spearman", "spearman_abs"):  # judged on the mean itself, not on its rounded text
            rho = _mean_rho([r[key] for r in sel])
            cells += ["undefined" if rho is None else f"{rho:.3f}", "yes" if passes(rho) else "no"]
        lines.append(f"| {name} | {text} | {target} | {method} | {' | '.join(cells)} | "
                     f"{np.mean([r['ssim_abs'] for r in sel]):.3f} |")
    return lines


def shared_table(rows: list[dict], lead: dict[str, str]) -> list[str]:
    """What a check's two maps follow besides the model (mean over cases; faithfulness.follows): the Spearman of
    |map| with minus the distance to the explained region, of |map| with |image| and of the map with the image,
    each for the served model's map / the other model's; and in how many cases a failed check's two maps shared
    each (faithfulness.shared_rankings)."""
    lines = [r"| model | against | target | method | \|map\| vs −distance to the region | \|map\| vs \|image\| "
             r"| map vs image | failed checks whose two maps share it |", "|---|---|---|---|---|---|---|---|"]
    for name, text, target, method, sel in _groups(rows, lead):
        if not all("vs_image" in r for r in sel):  # recorded before these figures existed
            continue
        cells = []
        for key in ("abs_vs_region_distance", "abs_vs_image", "vs_image"):
            pair = [_mean_rho([r[k] for r in sel]) for k in (key, f"other_{key}")]
            cells.append(" / ".join("undefined" if v is None else f"{v:.2f}" for v in pair))
        shared = [w for r in sel for w in r.get("shared", [])]
        why = ", ".join(f"{w} ({shared.count(w)} of {len(sel)})" for w in dict.fromkeys(shared)) or "—"
        lines.append(f"| {name} | {text} | {target} | {method} | {' | '.join(cells)} | {why} |")
    return lines if len(lines) > 2 else []


def shared_tables(res: dict) -> list[str]:
    """shared_table of the model- and then the data-randomisation rows of a recorded run (bench/README.md)."""
    rows = res.get("model_randomisation", [])
    out = shared_table(rows, {n: "random initialisation" for n in dict.fromkeys(r["model"] for r in rows)})
    d = res.get("data_randomisation") or {}
    return out + shared_table(d.get("rows", []), {n: "null model" for n in d.get("null_models", {})})[2:]


def data_randomisation_table(res: dict) -> list[str]:
    """The data-randomisation rows of a recorded run (mean over cases), as bench/README.md quotes them."""
    d = res.get("data_randomisation")
    if not d:
        return []
    lead = {name: f"null model {null['version'][:19]} (Dice " +
            " / ".join(f"{null['held_out_dice'][k]:.3f}" for k in ("WT", "TC", "ET")) + ")"
            for name, null in d["null_models"].items()}
    return check_table(d["rows"], lead)


def run_model_randomisation(names, steps: int, n_eval: int, crop: int, targets: tuple[str, ...], out: str,
                            seed: int = 0) -> dict:
    """Part 4's model-randomisation rows alone, for `names`, merged into --out's attribution.json (made with the
    same settings; every other part is kept as recorded); its command goes in `model_randomisation_commands`."""
    target_ids = [{v: k for k, v in CLASSES.items()}[t] for t in targets]
    path = Path(out) / "attribution.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    settings = {"steps": steps, "crop": crop, "targets": list(targets)}
    if {k: res.get(k) for k in settings} != settings:
        raise SystemExit(f"--model-randomisation: {path} was made with other settings than {settings}")
    rows = [r for r in res.get("model_randomisation", []) if r["model"] not in names]
    cmd = "python -m sparsesight.bench.attribution " + " ".join(sys.argv[1:])
    for n in names:
        r, version = model_randomisation_rows(n, steps, n_eval, crop, target_ids, Path("out/pretrain"), seed)
        if res.get("versions", {}).get(n) not in (None, version):
            raise SystemExit(f"--model-randomisation: {path} measured {n} {res['versions'][n]}, not {version}")
        rows += r
    res["model_randomisation"] = rows
    res["model_randomisation_commands"] = {**res.get("model_randomisation_commands", {}), **{n: cmd for n in names}}
    return _record(path, res, "Model randomisation (every layer re-initialised): Spearman with the trained "
                   "model's map (aim |rho| <= 0.3)", sanity_table(res))


def run_data_randomisation(names, steps: int, n_eval: int, crop: int, targets: tuple[str, ...], out: str,
                           seed: int = 0) -> dict:
    """Part 5 alone, merged into --out's attribution.json (the other parts' rows are kept as recorded)."""
    target_ids = [{v: k for k, v in CLASSES.items()}[t] for t in targets]
    path = Path(out) / "attribution.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    old = res.get("data_randomisation") or {"rows": [], "null_models": {}, "commands": {}}
    rows, nulls = [r for r in old["rows"] if r["model"] not in names], {
        k: v for k, v in old["null_models"].items() if k not in names}
    cmd = "python -m sparsesight.bench.attribution " + " ".join(sys.argv[1:])
    for n in names:
        r, info = data_randomisation_rows(n, steps, n_eval, crop, target_ids, Path("out/pretrain"), seed)
        rows, nulls[n] = rows + r, info
    res["data_randomisation"] = {"steps": steps, "crop": crop, "cases": n_eval, "rows": rows, "null_models": nulls,
                                 "commands": {**{k: v for k, v in old["commands"].items() if k not in names},
                                              **{n: cmd for n in names}}}
    return _record(path, res, "Data randomisation (Adebayo et al. 2018 Sec. 3.2): Spearman with the map of the "
                   "same model trained on permuted labels (aim |rho| <= 0.3)", data_randomisation_table(res))


def _record(path: Path, res: dict, title: str, table: list[str]) -> dict:
    """Write a check's merged attribution.json and print its table and what the maps share (shared_tables)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2))
    print(title)
    print("\n".join(table + [""] + shared_tables(res)))
    print(f"written: {path}")
    return res


#: the methods the distance picture draws: a plain gradient and a gradient times the input
PROFILE_METHODS = ("gradient", "integrated_gradients")


def distance_profile(amap: torch.Tensor, distance: np.ndarray, bins: int = 16) -> list[float]:
    """Mean |map| (summed over channels, as shown) of the voxels at each whole distance 0..bins-1 (voxels) from
    the explained region, as a share of its largest value (NaN where no voxel lies at that distance)."""
    m = np.abs(amap.detach().cpu().double().numpy().sum(0)).ravel()
    d = np.floor(distance).astype(np.int64).ravel()
    keep = d < bins
    sums, counts = np.bincount(d[keep], m[keep], bins), np.bincount(d[keep], minlength=bins)
    prof = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    top = np.nanmax(prof) if np.isfinite(prof).any() else 1.0
    return (prof / (top or 1.0)).tolist()


def run_distance_plot(names, steps: int, crop: int, targets: tuple[str, ...], out: str, seed: int = 0) -> dict:
    """The picture of what the magnitudes share (bench/README): on held-out case 0, |map| against the distance to
    the explained region for the shipped model and its fully randomised copy (fully_randomised), per model,
    target and PROFILE_METHODS; written to --out as attribution_distance.png and .json."""
    from ..checkpoint import load
    from ..explain.attribution import fixed_region
    from ..explain.faithfulness import fully_randomised, region_distance
    from ..pretrain import PRETRAINED

    target_ids = [{v: k for k, v in CLASSES.items()}[t] for t in targets]
    case, x, _ = next(held_out_crops(1, crop, Path("out/pretrain")))
    xb = x if x.ndim == 5 else x.unsqueeze(0)
    res: dict = {"command": "python -m sparsesight.bench.attribution " + " ".join(sys.argv[1:]), "case": case,
                 "steps": steps, "crop": crop, "profiles": []}
    for name in names:
        model, meta = load(PRETRAINED / f"{name}.pt")
        model.eval()
        rand = fully_randomised(model, seed)
        for t in target_ids:
            roi, _ = fixed_region(model, xb, t, "predicted")
            distance = region_distance(roi, xb.shape[2:])
            if distance is None:  # the model predicts none of this class on the case: no region to measure from
                continue
            for m in PROFILE_METHODS:
                for which, net in (("trained", model), ("randomised", rand)):
                    amap = attribute(net.eval(), xb, m, t, region=roi, steps=steps)[0]
                    res["profiles"].append({"model": name, "version": meta["version"], "target": CLASSES[t],
                                            "method": SHORT[m], "weights": which,
                                            "profile": distance_profile(amap, distance)})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attribution_distance.json").write_text(json.dumps(res, indent=1))
    _distance_png(res, out_dir / "attribution_distance.png")
    print(f"written: {out_dir / 'attribution_distance.json'}, {out_dir / 'attribution_distance.png'}")
    return res


def _distance_png(res: dict, path: Path):
    plt = pyplot()
    rows = res["profiles"]
    names, targets = list(dict.fromkeys(r["model"] for r in rows)), list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(len(names), len(targets), figsize=(4.2 * len(targets), 3.2 * len(names)), squeeze=False)
    for i, n in enumerate(names):
        for j, t in enumerate(targets):
            ax = axes[i][j]
            for r in (r for r in rows if r["model"] == n and r["target"] == t):
                ax.plot(r["profile"], ls="-" if r["weights"] == "trained" else "--",
                        color="C0" if r["method"] == "gradient" else "C3", label=f"{r['method']}, {r['weights']}")
            ax.set_title(f"{n}, {t} ({res['case']})", fontsize=9)
            ax.set_xlabel("distance to the explained region (voxels)", fontsize=8)
            ax.set_ylabel("mean |map| / its largest", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle("what the magnitudes share: the maps of the trained and of the randomised model\nboth fall off "
                 "within a few voxels of the explained region", fontsize=9)
    save_png(fig, path)


def _command_of(res: dict, name: str) -> str:
    """The command of a recorded run that stored its settings but not its command line."""
    cases = len({r["case"] for r in res["faithfulness_rows"] if r["model"] == name})
    return (f"python -m sparsesight.bench.attribution --models {name} --weights {res.get('weights')} --crop "
            f"{res.get('crop')} --steps {res['steps']} --eval {cases} --targets {' '.join(res.get('targets', []))}")


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    keys = dict.fromkeys((r["model"], r.get("target", CLASSES[TARGET])) for r in rows)
    for name, target in keys:
        rs = [r for r in rows if r["model"] == name and r.get("target", CLASSES[TARGET]) == target]
        mean = {m: {k: float(np.mean([r[k] for r in rs if r["method"] == m])) for k in
                    ("deletion_auc", "insertion_auc", "seconds")} for m in dict.fromkeys(r["method"] for r in rs)}
        for m, v in mean.items():
            row = {"model": name, "target": target, "method": m, **v}
            for ref in ("random", "sobel"):
                if ref in mean:
                    g = gains(v, mean[ref])
                    row.update({f"deletion_gain_vs_{ref}": g["deletion_gain"],
                                f"insertion_gain_vs_{ref}": g["insertion_gain"]})
            row["deletion_gain"], row["insertion_gain"] = row["deletion_gain_vs_random"], row["insertion_gain_vs_random"]
            out.append(row)
    return out


def markdown_table(res: dict) -> list[str]:
    """bench/README.md's table of a recorded run (tests/unit/test_readme_figures.py checks it is quoted)."""
    lines = ["| model | target | method | deletion AUC | gain vs random | gain vs Sobel | insertion gain vs random |",
             "|---|---|---|---|---|---|---|"]
    for r in res["faithfulness"]:
        if r["method"] in ("random", "sobel"):
            continue
        lines.append(f"| {r['model']} | {r['target']} | {r['method']} | {r['deletion_auc']:.4f} | "
                     f"{r['deletion_gain']:.2f} | {r.get('deletion_gain_vs_sobel', math.nan):.2f} | "
                     f"{r['insertion_gain']:.2f} |")
    return lines


def sanity_table(res: dict) -> list[str]:
    """The model-randomisation rows (every layer re-initialised; mean over cases) of a recorded run, as
    bench/README.md quotes them."""
    rows = res.get("model_randomisation", [])
    return check_table(rows, {n: "random initialisation" for n in dict.fromkeys(r["model"] for r in rows)})


def _plot(results: dict, path: Path):
    plt = pyplot()

    summ = results["faithfulness"]
    names = list(dict.fromkeys(r["model"] for r in summ))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, key, title in ((axes[0], "deletion_auc", "deletion AUC (lower is better)"),
                           (axes[1], "insertion_auc", "insertion AUC (higher is better)")):
        for j, n in enumerate(names):
            rs = [r for r in summ if r["model"] == n]
            ax.bar(np.arange(len(rs)) + j * 0.4, [r[key] for r in rs], 0.4, label=n)
            ax.set_xticks(np.arange(len(rs)) + 0.2)
            ax.set_xticklabels([r["method"] + (f"/{r['target'][:4]}" if len(rs) > len({q['method'] for q in rs})
                                else "") for r in rs], rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    cost = results["ig_cost"]
    labels, ig, floor = [], [], []
    for n, c in cost.items():
        labels += [f"{n}\nbatch 1", f"{n}\nbatch {c['batch']}"]
        ig += [c["ig_s"], c["ig_batched_s"]]
        floor += [c["floor_s"], c["floor_batched_s"]]
    xs = np.arange(len(labels))
    axes[2].bar(xs - 0.2, floor, 0.4, label="floor n x (fwd+bwd)")
    axes[2].bar(xs + 0.2, ig, 0.4, label="IG")
    axes[2].set_xticks(xs)
    axes[2].set_xticklabels(labels, fontsize=7)
    axes[2].set_ylabel("s")
    axes[2].set_title(f"IG cost, n = {next(iter(cost.values()))['steps']} steps", fontsize=9)
    axes[2].legend(fontsize=7)
    save_png(fig, path)


def run(steps: int = 8, epochs: int = 3, downsample: int = 4, n_cases: int = 4, n_eval: int = 1, patch: int = 32,
        full: bool = False, out: str = "bench/results", seed: int = 0, names=None, weights: str = "shipped",
        crop: int = 64, targets: tuple[str, ...] = ("enhancing",), merge: bool = False) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in (names or ("mlcsc", "sum")) if n in models.NAMES]
    target_ids = [{v: k for k, v in CLASSES.items()}[t] for t in targets]
    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__} (shared with other jobs while measured)",
           "steps": steps, "weights": weights, "ig_cost": {}, "memory": {}}
    rows, randomised, sanity = [], [], []
    if weights == "shipped":
        res.update(data=f"held-out phantoms of the model cards (1 mm), {crop}^3 voxels around the tumour",
                   crop=crop, targets=list(targets))
        res["versions"] = {}
        for n in names:
            r, mr, s_, res["versions"][n] = shipped_table(n, steps, n_eval, crop, target_ids, Path("out/pretrain"),
                                                          seed)
            rows, randomised, sanity = rows + r, randomised + mr, sanity + s_
        x = torch.randn(1, 4, crop, crop, crop, generator=torch.Generator().manual_seed(seed))
    else:
        res.update(downsample_mm=downsample, epochs=epochs)
        data = _dataset(Path("out/bench") / "data", n_cases, downsample, seed)
        img, _ = load_image(data["test"][0]["image"])
        x = normalise(img).as_subclass(torch.Tensor)
        for n in names:
            rows += faithfulness_table(n, data, epochs, steps, n_eval, patch, seed)
    for n in names:
        torch.manual_seed(seed)
        res["ig_cost"][n] = ig_cost(models.build(n), x, steps)
        if full:
            res["memory"][n] = full_size_memory(n)
    earlier = out_dir / "attribution.json"
    if merge and earlier.is_file():  # keep the other models' rows of an earlier run with the same settings
        old = json.loads(earlier.read_text())
        same = {k: old.get(k) for k in ("weights", "steps", "crop", "targets")} == \
            {k: res.get(k) for k in ("weights", "steps", "crop", "targets")}
        if not same:
            raise SystemExit(f"--merge: {earlier} was made with other settings; run every model instead")
        keep = [n for n in old["ig_cost"] if n not in names]
        rows = [r for r in old["faithfulness_rows"] if r["model"] in keep] + rows
        sanity = [r for r in old.get("sanity", []) if r["model"] in keep] + sanity
        randomised = [r for r in old.get("model_randomisation", []) if r["model"] in keep] + randomised
        res["ig_cost"] = {**{n: old["ig_cost"][n] for n in keep}, **res["ig_cost"]}
        res["memory"] = {**{n: v for n, v in old.get("memory", {}).items() if n in keep}, **res["memory"]}
        res["commands"] = {n: old.get("commands", {}).get(n) or _command_of(old, n) for n in keep}
        res["versions"] = {**{n: v for n, v in old.get("versions", {}).items() if n in keep}, **res.get("versions", {})}
        if old.get("model_randomisation_commands"):  # rows of kept models rerun alone (--model-randomisation)
            res["model_randomisation_commands"] = {n: c for n, c in old["model_randomisation_commands"].items()
                                                   if n in keep}
        if old.get("data_randomisation"):  # part 5 (its own command) is kept; it names the weights it measured
            res["data_randomisation"] = old["data_randomisation"]
    cmd = "python -m sparsesight.bench.attribution " + " ".join(sys.argv[1:])
    res["commands"] = {**res.get("commands", {}), **{n: cmd for n in names}}
    res["faithfulness_rows"] = rows
    res["faithfulness"] = _summary(rows)
    res["sanity"] = sanity  # the cascades
    res["model_randomisation"] = randomised
    (out_dir / "attribution.json").write_text(json.dumps(res, indent=2))
    lines = ["model,target,method,deletion_auc,insertion_auc,deletion_gain_vs_random,insertion_gain_vs_random,"
             "deletion_gain_vs_sobel,seconds"]
    lines += [f"{r['model']},{r['target']},{r['method']},{r['deletion_auc']:.4f},{r['insertion_auc']:.4f},"
              f"{r['deletion_gain']:.3f},{r['insertion_gain']:.3f},{r.get('deletion_gain_vs_sobel', math.nan):.3f},"
              f"{r['seconds']:.2f}" for r in res["faithfulness"]]
    (out_dir / "attribution.csv").write_text("\n".join(lines) + "\n")
    _plot(res, out_dir / "attribution.png")

    print(f"\nAttribution benchmark — {res['machine']}")
    print(f"IG cost, n = {steps} steps on {tuple(x.shape[1:])} x 4 (ratio IG / floor; aim <= 1.2)")
    print(f"{'model':<8}{'fwd+bwd s':>11}{'floor s':>9}{'IG s':>8}{'ratio':>7}"
          f"{'batched floor s':>17}{'IG s':>8}{'ratio':>7}")
    for n, c in res["ig_cost"].items():
        print(f"{n:<8}{c['fwd_bwd_s']:>11.3f}{c['floor_s']:>9.2f}{c['ig_s']:>8.2f}{c['ratio']:>7.2f}"
              f"{c['floor_batched_s']:>17.2f}{c['ig_batched_s']:>8.2f}{c['ratio_batched']:>7.2f}")
    for n, m in res["memory"].items():
        print(f"{n}: full-size {BRATS_SHAPE} x 4 peak RSS: forward+backward {m['floor']['peak_mb']:.0f} MB "
              f"(working {m['floor']['working_mb']:.0f}), IG {m['ig_steps']} steps in chunks of 1 "
              f"{m['ig']['peak_mb']:.0f} MB (working {m['ig']['working_mb']:.0f}); ratio {m['ratio_working']:.2f}")
    print("Deletion / insertion AUC (gains vs the random ranking and the Sobel edge map of the same run; > 1 is "
          "better)")
    print(f"{'model':<8}{'target':<12}{'method':<12}{'deletion':>9}{'gain':>7}{'vs Sobel':>9}{'insertion':>10}"
          f"{'gain':>7}{'s':>8}")
    for r in res["faithfulness"]:
        print(f"{r['model']:<8}{r['target']:<12}{r['method']:<12}{r['deletion_auc']:>9.4f}{r['deletion_gain']:>7.2f}"
              f"{r.get('deletion_gain_vs_sobel', math.nan):>9.2f}{r['insertion_auc']:>10.4f}"
              f"{r['insertion_gain']:>7.2f}{r['seconds']:>8.1f}")
    if res["model_randomisation"]:
        print("Model randomisation (every layer re-initialised): Spearman with the trained model's map (aim |rho| "
              "<= 0.3)")
        print("\n".join(sanity_table(res)))
    print(f"written: {out_dir / 'attribution.csv'}, {out_dir / 'attribution.json'}, {out_dir / 'attribution.png'}")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--downsample", type=int, default=4, help="phantom voxel size in mm (1 = BraTS grid)")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--eval", type=int, default=1, help="held-out cases for the AUC table")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--models", nargs="+", default=["mlcsc", "sum"])
    p.add_argument("--full", action="store_true", help="also measure peak memory on a full-size volume "
                   "(two fresh processes per model; minutes on a CPU)")
    p.add_argument("--weights", choices=("shipped", "train"), default="shipped",
                   help="shipped: the models of apps/sparsesight/pretrained on their cards' held-out phantoms "
                        "(1 mm, cropped around the tumour); train: models trained briefly here at --downsample")
    p.add_argument("--crop", type=int, default=64, help="shipped: voxels per side of the box around the tumour")
    p.add_argument("--targets", nargs="+", default=["enhancing"], choices=[c for c in CLASSES.values()])
    p.add_argument("--merge", action="store_true", help="keep the other models' results of the attribution.json "
                   "in --out (made with the same settings) and replace those of --models")
    p.add_argument("--data-randomisation", action="store_true",
                   help="only the data-randomisation check of every method against the shipped null models, merged "
                        "into the attribution.json in --out")
    p.add_argument("--model-randomisation", action="store_true",
                   help="only the model-randomisation check of every method on the shipped weights, merged into the "
                        "attribution.json in --out (made with the same --steps, --crop and --targets)")
    p.add_argument("--distance-plot", action="store_true",
                   help="only the picture of |map| against the distance to the explained region, shipped and fully "
                        "randomised weights, held-out case 0 (attribution_distance.png / .json in --out)")
    p.add_argument("--out", default="out/bench", help="where results go (recorded runs: --out bench/results)")
    p.add_argument("--_memory", help=argparse.SUPPRESS)
    p.add_argument("--_model", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    setup_process()
    if a._memory:
        print(json.dumps(_memory_child(a._memory, a._model, a.steps)))
        return
    if a.data_randomisation:
        run_data_randomisation(a.models, a.steps, a.eval, a.crop, tuple(a.targets), a.out)
        return
    if a.distance_plot:
        run_distance_plot(a.models, a.steps, a.crop, tuple(a.targets), a.out)
        return
    if a.model_randomisation:
        run_model_randomisation(a.models, a.steps, a.eval, a.crop, tuple(a.targets), a.out)
        return
    run(a.steps, a.epochs, a.downsample, a.cases, a.eval, a.patch, a.full, a.out, names=a.models,
        weights=a.weights, crop=a.crop, targets=tuple(a.targets), merge=a.merge)


if __name__ == "__main__":
    main()
