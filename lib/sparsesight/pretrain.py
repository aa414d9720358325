"""Make the shipped weights: train a segmentation model with the recipe on generated phantoms, evaluate it on a
held-out split made from other case seeds, and write `<model>.pt` with its model card (model_card.py).

    python -m sparsesight.pretrain mlcsc [--epochs 40] [--cases 12] [--eval-cases 2] [--out apps/sparsesight/pretrained]
    python -m sparsesight.pretrain mlcsc --variety-cases 16 --device cuda --minutes 4 --workers 16   (the shipped way)

The training split is cases 0..cases-1 of seed `seed` (the last one validates: best epoch kept), the held-out
split is `eval_cases` cases of seed `seed + EVAL_SEED_OFFSET`: other anatomy transforms, other tumours, never
seen in training. `make demo` evaluates the same held-out split through the server, so it prints the card's Dice.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from . import MODALITIES, checkpoint, model_card, models
from .data.io import load_image, load_label
from .data.phantom import write_dataset
from .errors import InvalidInput
from .memory import keep_freed_memory
from .models.dictionary import settle_norms
from .models.mlcsc import CLASS_NAMES
from .training import train
from .training.evaluation import evaluate, grid_ceiling
from .transforms import AUGMENT_LEVELS

logger = logging.getLogger(__name__)

PRETRAINED = Path(__file__).resolve().parents[2] / "apps" / "sparsesight" / "pretrained"
EVAL_SEED_OFFSET = 1000
OFF_GRID_SEED_OFFSET = 2000
OFF_GRID_CASES = 4
VARIETY_TRAIN_SEED_OFFSET = 3000
#: the recipe per model (training/segmentation.py keys); every other key keeps the trainer's default
RECIPES: dict[str, dict[str, Any]] = {
    "mlcsc": {"epochs": 40, "train_config": {"patch_size": [64, 64, 64], "warmup_epochs": 2, "patience": 15}},
    "sum": {"epochs": 12, "train_config": {"patch_size": [64, 64, 64], "warmup_epochs": 1, "patience": 6}},
}
LIMITS = {
    "common": [
        "trained and evaluated on generated BraTS-like phantoms (MNI152 anatomy), not on patient scans",
        "held-out split: 2 phantoms of other case seeds; Dice on so few cases is a rough figure",
    ],
    "mlcsc": ["design 2 (components that reconstruct the image, issue 16), its read-out learning at 20x and lam, mu "
              "at 10x the base rate, the deeper codes and the logits on a grid 2x coarser than the input's "
              "(readout_grid_ceiling: what the true labels keep on that grid): the whole tumour's boundary is "
              "looser than SUM's (full-resolution read-out), small lesions and thick slices lose the core and the "
              "enhancing rim (per-case Dice in the card), and a class's component can be less than 5x brighter "
              "inside the class than outside it (localisation figures)"],
    "sum": ["SUM_Rec (lambda_rec 0.35), thresholds b = |theta| >= 0, the read-out Omega learning at 20x the base "
            "rate (before that change it missed most of the oedema: WT 0.22); on the off-grid phantoms it still "
            "finds the whole tumour better than the core and the enhancing rim (table)"],
}


AUGMENTATION_NOTE = {"light": "light augmentation only (flips, intensity scale and shift)",
                     "full": "the recipe's full augmentation (rotation, scaling, elastic deformation, noise, blur, bias "
                             "field, gamma, coarser grids, flips)",
}
AUGMENTATION_NOTE["thick"] = AUGMENTATION_NOTE["full"] + " and thick slices along a random axis"


def card_limits(name: str, training: dict) -> list[str]:
    """The card's known limits: the common ones, the grid the training saw with its augmentation (a run without
    "augment" in its recipe predates it: light), then the model's own, or the null model's."""
    own = LIMITS.get(name, []) if "labels" not in training else [
        "a null model: trained on permuted labels, its Dice is that of a model that learned no relation between "
        "image and label; served only as the reference of the data-randomisation check"]
    augment = training.get("config", {}).get("augment", "light")
    return LIMITS["common"][:1] + [grid_limit(augment)] + LIMITS["common"][1:] + own


def grid_limit(augment: str) -> str:
    """The card's limit on grids: what the training saw (its augmentation) and what inference does with others."""
    return (f"trained on one grid, the plain phantoms', with {AUGMENTATION_NOTE.get(augment, augment)}: images on "
            "other voxel sizes or orientations are resampled to it at inference; the Dice on a 2x coarser grid and on "
            "off-grid phantoms (deformed anatomy, 1-3 lesions, random voxel sizes, slice thickness and orientation) "
            "is in the table")


def eval_split(cases: int, downsample: int, seed: int, root: Path, variety: bool = False, workers: int = 1) -> Path:
    """dataset.json of the held-out split (made once; the demo calls this with the card's figures). `variety`:
    the off-grid split (other seeds, data/phantom/variety.py: deformed anatomy, 1-3 lesions, random grids)."""
    s = seed + (OFF_GRID_SEED_OFFSET if variety else EVAL_SEED_OFFSET)
    ds = root / f"heldout_n{cases}_d{downsample}_s{s}{'_variety' if variety else ''}" / "dataset.json"
    if not ds.is_file():
        write_dataset(ds.parent, n_cases=cases, seed=s, downsample=downsample, n_test=cases, progress=False,
                      variety=variety, workers=workers)
    return ds


def off_grid_evaluation(model, cases: int, seed: int, work: Path) -> tuple[str, dict, list[dict]]:
    """(split name, mean Dice, per-case Dice) on `cases` off-grid phantoms: what the served model does with images
    on grids, orientations and anatomy it was not trained on (resampled to its grid and back)."""
    ds = eval_split(cases, 1, seed, Path(work), variety=True)
    logger.info("evaluating on %d off-grid phantoms", cases)
    dice, per_case = evaluate(model, items_of(ds, "test"))
    return f"off-grid: {cases} varied phantoms of seed {seed + OFF_GRID_SEED_OFFSET}", dice, per_case


def add_off_grid(source: Path, cases: int = OFF_GRID_CASES, work: Path = Path("out/pretrain")) -> dict:
    """Add the off-grid evaluation to the card of shipped weights (the weights are not touched, so their sha256
    and version stay) and bring its known limits up to date."""
    model, meta = checkpoint.load(source)
    card = model_card.read(source)
    if card is None:
        raise SystemExit(f"{source} has no card: it was not made by sparsesight.pretrain")
    model_card.verify(source, meta, card)  # checkpoint.load set the training grid from the file's train metadata
    name, dice, per_case = off_grid_evaluation(model, cases, card["training"]["seed"], work)
    ev = card["evaluation"]
    ev["dice"] = {k: v for k, v in ev["dice"].items() if not k.startswith("off-grid")} | {name: dice}
    ev["per_case_off_grid"] = per_case
    card["limits"] = LIMITS["common"] + LIMITS.get(meta["model"], [])
    model_card.write(source, {k: v for k, v in card.items() if k not in ("sha256", "schema")})
    logger.info("%s: off-grid Dice %s", source.name, dice)
    return card


def items_of(ds_json: Path, key: str) -> list[dict]:
    meta = json.loads(ds_json.read_text())
    return [{"image": str(ds_json.parent / t["image"]), "label": str(ds_json.parent / t["label"]),
             "id": Path(t["image"]).name.removesuffix(".nii.gz")} for t in meta[key]]


def variety_training_set(cases: int, downsample: int, seed: int, work: Path, workers: int = 1) -> list[dict]:
    """Training items of `cases` varied phantoms (other seeds than every held-out split), each resampled onto the
    RAS grid of the plain phantoms as the served model resamples its input (runners.segmentation): the network
    learns the anatomy, lesions, contrasts and the blur of thick slices it will meet, on its own grid. `workers`:
    processes that make and resample the cases (the same files as one)."""
    from .data.phantom.dataset import starmap

    s = seed + VARIETY_TRAIN_SEED_OFFSET
    ds = work / f"train_variety_n{cases}_d{downsample}_s{s}" / "dataset.json"
    on_grid = ds.parent / f"on_grid_{downsample}mm"
    if not ds.is_file():
        logger.info("generating %d varied training phantoms (seed %d)", cases, s)
        write_dataset(ds.parent, n_cases=cases, seed=s, downsample=downsample, n_test=0, progress=False, variety=True,
                      workers=workers)
    items = [{"image": str(on_grid / f"{it['id']}_image.nii.gz"), "label": str(on_grid / f"{it['id']}_label.nii.gz"),
              "id": it["id"], "source": it} for it in items_of(ds, "training")]
    todo = [(it["source"], it["image"], it["label"], downsample) for it in items if not Path(it["label"]).is_file()]
    if todo:
        on_grid.mkdir(parents=True, exist_ok=True)
        list(starmap(_onto_plain_grid, todo, workers))
    return [{k: v for k, v in it.items() if k != "source"} for it in items]


def _onto_plain_grid(source: dict, image_out: str, label_out: str, downsample: int) -> None:
    """Write a varied case's image (trilinear) and label (nearest) resampled onto the plain phantoms' RAS grid of
    `downsample` mm, as the served model resamples its input."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from .runners.segmentation import load_on_model_grid

    grid = SimpleNamespace(spacing_mm=(float(downsample),) * 3, n=len(MODALITIES))  # what load_on_model_grid reads
    image, affine, _ = load_on_model_grid(grid, source["image"], noise=False)  # no torch in a forked worker
    ref = nib.load(source["label"])
    label = resample_from_to(ref, (image.shape[1:], affine), order=0).get_fdata().astype(np.uint8)
    nib.save(nib.Nifti1Image(np.moveaxis(np.round(image), 0, -1).astype(np.int16), affine), image_out)
    nib.save(nib.Nifti1Image(label, affine), label_out)


def training_data(cases: int, eval_cases: int, downsample: int, seed: int, work: Path, variety_cases: int = 0,
                  workers: int = 1) -> tuple[list[dict], list[dict]]:
    """(training items, validation items), every phantom a run needs made first (once, under `work`): the
    training cases (the last validates), the held-out, 2x coarser and off-grid splits (the same for every model),
    and `variety_cases` varied ones plus one more that validates. `workers`: processes that make them."""
    train_ds = work / f"train_n{cases}_d{downsample}_s{seed}" / "dataset.json"
    if not train_ds.is_file():
        logger.info("generating %d training phantoms (%d mm, seed %d)", cases, downsample, seed)
        write_dataset(train_ds.parent, n_cases=cases, seed=seed, downsample=downsample, n_test=1, progress=False,
                      workers=workers)
    eval_split(eval_cases, downsample, seed, work, workers=workers)
    eval_split(eval_cases, 2 * downsample, seed, work, workers=workers)
    eval_split(OFF_GRID_CASES, 1, seed, work, variety=True, workers=workers)
    train_items, val_items = items_of(train_ds, "training"), items_of(train_ds, "test")
    if variety_cases:
        varied = variety_training_set(variety_cases + 1, downsample, seed, work, workers)
        train_items, val_items = train_items + varied[:-1], val_items + varied[-1:]
    return train_items, val_items


@dataclass(frozen=True)
class RunOptions:
    """What one `run` trains and where it writes (the command line's options, same names).

    `train_seed` (default `seed`): the seed of the initial weights, patches and augmentation alone, the data and
    held-out split staying those of `seed` (the seed-spread check). `model_config`: hyperparameters over the
    model's defaults (models.build), recorded in the card. `permute_labels`: the null model of the
    data-randomisation check instead (every image paired with another case's label map, permuted_labels; written
    under `out`/null). `device`: where it trains (the held-out evaluation runs on the CPU, as served). `minutes`
    (with no `epochs`): the epochs that fit that budget, from a 2-epoch probe (probe_epochs); with `epochs`: a
    guard, training stops after the epoch that passes 1.2x `minutes`. `train_config`: trainer settings over the
    recipe's. `workers`: processes that make the phantoms. With `variety_cases`, one more varied phantom joins the
    validation. `evaluate_now` False: weights and a card with the evaluation pending, for republish() elsewhere
    (a GPU lease spent on training, the CPU evaluation later)."""

    epochs: int | None = None
    cases: int = 12
    eval_cases: int = 2
    downsample: int = 1
    seed: int = 0
    out: Path = PRETRAINED
    work: Path = Path("out/pretrain")
    resume: Path | None = None
    lr: float | None = None
    variety_cases: int = 0
    augment: str = "full"
    permute_labels: bool = False
    train_seed: int | None = None
    model_config: dict | None = None
    device: str = "cpu"
    minutes: float | None = None
    train_config: dict | None = None
    workers: int = 1
    evaluate_now: bool = True

    def command(self, name: str, epochs: int) -> str:
        """The command line that trains these weights again (recorded in the card)."""
        def as_json(d: dict) -> str:
            return json.dumps(d, separators=(",", ":"))
        train_seed = self.seed if self.train_seed is None else self.train_seed
        return (f"python -m sparsesight.pretrain {name} --epochs {epochs} --cases {self.cases} "
                f"--eval-cases {self.eval_cases} --downsample {self.downsample} --seed {self.seed} "
                f"--augment {self.augment}"
                + (f" --variety-cases {self.variety_cases}" if self.variety_cases else "")
                + (f" --lr {self.lr}" if self.lr else "")
                + (f" --device {self.device}" if self.device != "cpu" else "")
                + (f" --train-config '{as_json(self.train_config)}'" if self.train_config else "")
                + (" --resume <the earlier run's checkpoint>" if self.resume else "")
                + (" --permute-labels" if self.permute_labels else "")
                + (f" --train-seed {train_seed}" if train_seed != self.seed else "")
                + (f" --model-config '{as_json(self.model_config)}'" if self.model_config else ""))

    def data(self, validates: bool) -> str:
        """The card's description of the training data."""
        varied = (f" and {self.variety_cases} varied ones (--variety, seed {self.seed + VARIETY_TRAIN_SEED_OFFSET}, "
                  f"resampled onto that grid)" if self.variety_cases else "")
        held = ((", 1 more of each for validation" if self.variety_cases else ", 1 more for validation")
                if validates else ", no validation case (none is used)")
        return (f"{self.cases - 1} generated phantoms (sparsesight sample-data, seed {self.seed}, cases "
                f"0..{self.cases - 2}, {self.downsample} mm)" + varied + held)


def run(name: str, options: RunOptions | None = None, **changes) -> dict:
    """Train `name` with its recipe (from `resume`'s weights when given: a second cosine cycle, the card then
    records both runs) on `cases` plain phantoms plus `variety_cases` varied ones, augmented (`augment`), and
    publish it with its card. `options` (RunOptions; its defaults when None), with `changes` over them."""
    o = replace(options or RunOptions(), **changes)
    recipe = RECIPES[name]
    if o.permute_labels and o.variety_cases:
        raise InvalidInput("--permute-labels pairs each image with another case's label map, which needs one grid; "
                           "the varied phantoms each keep their own field of view: train the null model without "
                           "--variety-cases")
    work, out = Path(o.work), Path(o.out)
    train_items, val_items = training_data(o.cases, o.eval_cases, o.downsample, o.seed, work, o.variety_cases,
                                           o.workers)
    if o.permute_labels:  # no validation: the null task has no Dice to select an epoch by; the last is kept
        train_items, val_items = permuted_labels(train_items), []
        out = out / "null"
    train_seed = o.seed if o.train_seed is None else o.train_seed
    torch.manual_seed(train_seed)  # the initial weights
    earlier = None
    if o.resume is not None:
        model, meta = checkpoint.load(o.resume, expect=name)
        earlier = model_card.read(o.resume)
        model.train()
    else:
        model = models.build(name, o.model_config)
    cfg = {**recipe["train_config"], "seed": train_seed, "augment": o.augment, **({"lr": o.lr} if o.lr else {}),
           **(o.train_config or {})}
    probe, epochs = None, o.epochs
    if epochs is None and o.minutes:
        probe = probe_epochs(model, train_items, val_items, cfg, o.device, o.minutes)
        epochs = probe["epochs"]
    epochs = epochs or recipe["epochs"]
    logger.info("training %s on %s for up to %d epochs on %d cases (validation %d)", name, o.device, epochs,
                len(train_items), len(val_items))
    stats = train(model, train_items, epochs=epochs, device=o.device, config=cfg, val_items=val_items,
                  show_progress=False, max_minutes=1.2 * o.minutes if o.minutes else None,
                  progress=lambda d: logger.info("%s epoch %d/%d loss %.4f val %.3f (%.0f s, eta %.0f s)", name,
                                                 d["epoch"], d["epochs"], d["loss"], d.get("val", float("nan")),
                                                 d["seconds"], d["eta_s"]))
    model.cpu()
    model.eval()
    training = {
        "command": o.command(name, epochs), "commit": model_card.commit(), "seed": o.seed, "train_seed": train_seed,
        "epochs": stats["epochs"], "best_epoch": stats.get("best_epoch"),
        "best_validation_dice": stats.get("best_val"), "seconds": round(stats["seconds"], 1), "device": o.device,
        **({"epochs_from_probe": probe} if probe else {}), "config": cfg, "spacing_mm": stats["spacing_mm"],
        "data": o.data(bool(val_items)),
        "loss": [round(v, 5) for v in stats["loss"]], "validation_dice": [round(v, 4) for v in stats.get("val", [])],
    }
    if o.permute_labels:
        training["labels"] = PERMUTED_NOTE
    if earlier is not None:  # the card records every run the weights went through
        training["continued_from"] = {k: earlier["training"].get(k) for k in
                                      ("command", "commit", "epochs", "best_epoch", "best_validation_dice", "seconds",
                                       "config", "loss", "validation_dice", "continued_from")
                                      if earlier["training"].get(k) is not None}
        training["continued_from"]["version"] = earlier["version"]
    return publish(model, name, training, o.eval_cases, o.downsample, o.seed, out, work, o.evaluate_now)


def probe_epochs(model, items: list[dict], val_items: list[dict], cfg: dict, device: str, minutes: float) -> dict:
    """{"epochs", "seconds_per_epoch", "minutes"}: how many epochs of the recipe fit in `minutes`, from the second
    of two epochs trained on a copy of `model` (the first pays for starting the data workers)."""
    import copy

    ends: list[float] = []
    train(copy.deepcopy(model), items, epochs=2, device=device, config=cfg, val_items=val_items, show_progress=False,
          progress=lambda d: ends.append(d["seconds"]))
    per_epoch = ends[-1] - ends[0] if len(ends) > 1 else ends[-1]
    epochs = max(2, int(60 * minutes / max(per_epoch, 1e-3)))
    logger.info("probe: %.2f s per epoch -> %d epochs in %.1f minutes", per_epoch, epochs, minutes)
    return {"epochs": epochs, "seconds_per_epoch": round(per_epoch, 3), "minutes": minutes}


PERMUTED_NOTE = ("permuted: every training image paired with the label map of the next case (a cyclic shift, no "
                 "image keeps its own), no validation (the last epoch kept): the null model of the data-randomisation "
                 "check (Adebayo et al. 2018), not a segmentation model")


def permuted_labels(items: list[dict]) -> list[dict]:
    """Items whose label maps are shifted by one case (item i gets item i+1's label, cyclically): no image keeps
    its own label. Phantoms share one grid."""
    import nibabel as nib

    shapes = {tuple(nib.load(str(it["label"])).shape[:3]) for it in items}
    if len(shapes) > 1:
        raise InvalidInput(f"permuted labels need the cases on one grid; these have {len(shapes)} shapes "
                           f"({', '.join('x'.join(map(str, s)) for s in sorted(shapes)[:3])}...)")
    labels = [it["label"] for it in items]
    return [{**it, "label": labels[(i + 1) % len(labels)]} for i, it in enumerate(items)]


def explanation_figures(model, item: dict) -> dict:
    """The explanation-quality figures of one held-out case (what the bundle's manifest reports): ML-CSC the
    relative reconstruction error of sum_c Phi_c gamma_c in the brain (mean over modalities) and the localisation
    ratios, SUM the share of coefficients its shrinkages zero at alpha = 1, the negative thresholds and the
    relative error of its reconstruction ED_{alpha=0}(x), the filter banks alone (mean over modalities)."""
    from .explain import quality
    from .runners.segmentation import normalise

    image, _ = load_image(item["image"], channels=4)
    label, _ = load_label(item["label"], spatial_shape=image.shape[1:])
    x = normalise(image)
    with torch.no_grad():
        interp = model.interpret(x)
    brain = quality.brain_mask(image)

    def reconstruction_error(recon) -> float:
        rec = quality.assess_reconstruction(recon[0].numpy(), x[0].numpy(), brain, list(MODALITIES))
        return round(float(np.mean([m["relative_error"] for m in rec["per_modality"].values()])), 4)

    if name_of(model) == "sum":
        s = quality.shrinkage_activity(interp["sparsity"].tolist(), list(interp["masks"]), model.parameter_table())
        return {"zeroed_share_mean": round(s["zeroed_share_mean"], 4), "negative_thresholds": s["negative_thresholds"],
                "thresholds": s["thresholds"], "linear_reconstruction_relative_error":
                    reconstruction_error(interp["ed_linear"])}
    pred = interp["logits"][0].argmax(0).numpy()
    loc = quality.assess_localisation(interp["components"][0].numpy(), pred, brain,
                                      {c: n for c, n in enumerate(CLASS_NAMES) if c})
    return {"reconstruction_relative_error": reconstruction_error(interp["reconstruction"]),
            **{f"localisation_{n}": _finite(v["localisation_ratio"], 2) for n, v in loc["per_class"].items()}}


def readout_ceiling(model, items: list[dict]) -> dict | None:
    """For a model whose logits live on a coarser grid (MLCSC: 1/prod(strides)): the held-out labels' mean Dice after
    a trip through that grid (metrics.grid_ceiling_dice), the card's measure of what the read-out grid costs."""
    factor = int(getattr(model, "readout_factor", 1))
    if factor <= 1:
        return None
    return {"factor": factor, "dice": grid_ceiling(items, factor)[0]}


def _finite(v, digits: int):
    """A figure for JSON: rounded, None where it is undefined (nan: e.g. no voxel of that class predicted)."""
    v = float(v)
    return round(v, digits) if np.isfinite(v) else None


def name_of(model) -> str:
    return {"MLCSC": "mlcsc", "SUM": "sum"}[type(model).__name__]


def publish(model, name: str, training: dict, eval_cases: int, downsample: int, seed: int, out: Path,
            work: Path, evaluate_now: bool = True) -> dict:
    """Evaluate `model` on the held-out split and write `<out>/<name>.pt` with its card; returns the card.
    `evaluate_now` False: the weights and a card whose evaluation is pending (republish() fills it in)."""
    model.spacing_mm = tuple(float(v) for v in training["spacing_mm"])  # as checkpoint.load sets it when served
    path = Path(out) / f"{name}.pt"  # saved first: weights that took long to train outlive a failed evaluation
    version = checkpoint.save(path, model, name, model.config,
                              meta={"train": {"epochs": training["epochs"], "spacing_mm": training["spacing_mm"]}})
    card = {"model": name, "version": version, "config": checkpoint.load(path)[1]["config"],
            "description": (type(model).__doc__ or name).strip().splitlines()[0],
            "parameters": int(sum(p.numel() for p in model.parameters())), "training": training,
            "evaluation": {"seed": seed + EVAL_SEED_OFFSET, "cases": eval_cases, "downsample": downsample},
            "limits": card_limits(name, training), **({"kind": "null"} if "labels" in training else {})}
    if not evaluate_now:
        card["evaluation"]["data"] = f"pending: python -m sparsesight.pretrain {name} --republish {path.name}"
        model_card.write(path, card)
        logger.info("wrote %s (%s), evaluation pending", path, version)
        return card
    eval_ds = eval_split(eval_cases, downsample, seed, Path(work))
    logger.info("evaluating on %d held-out phantoms", eval_cases)
    dice, per_case = evaluate(model, items_of(eval_ds, "test"))
    # the same phantoms on a grid twice as coarse: resampled to the model's grid and the label back
    coarse = eval_split(eval_cases, 2 * downsample, seed, Path(work))
    coarse_dice, coarse_cases = evaluate(model, items_of(coarse, "test"))
    off_name, off_dice, off_cases = off_grid_evaluation(model, OFF_GRID_CASES, seed, Path(work))
    figures = explanation_figures(model, items_of(eval_ds, "test")[0])
    ceiling = readout_ceiling(model, items_of(eval_ds, "test"))
    card["evaluation"].update({
        "data": f"{eval_cases} held-out phantoms of seed {seed + EVAL_SEED_OFFSET} ({downsample} mm), never seen in "
                f"training",
        "dice": {"held-out": dice, f"held-out, {2 * downsample} mm grid": coarse_dice, off_name: off_dice},
        "per_case": per_case, "per_case_coarse_grid": coarse_cases, "per_case_off_grid": off_cases,
        "quality": figures, "quality_case": per_case[0]["case"],
        **({"readout_grid_ceiling": ceiling} if ceiling else {})})
    model_card.write(path, card)
    logger.info("wrote %s (%s) and its card: held-out Dice %s, explanation figures %s", path, version, dice, figures)
    return card


def settled(model, rtol: float = 0.01):
    """`model` with its dictionaries' norm estimates converged (settle_norms), for a checkpoint saved before
    training settled them (issue 16: a class's norm up to 7 % above the estimate); the model itself when settling
    again moves no estimate by more than `rtol` (train() settled it; each further settle still creeps up by about
    0.2 % on the shipped ML-CSC, whose largest singular values lie close), so that evaluating shipped weights again
    leaves their weights and version as they are."""
    import copy

    from .models.dictionary import ResizeDictionary

    def sigmas(m) -> list[float]:
        with torch.no_grad():
            return [float(d.sigma()) for d in m.modules() if isinstance(d, ResizeDictionary)]

    trial = copy.deepcopy(model)
    settle_norms(trial)
    before, after = sigmas(model), sigmas(trial)
    if all(abs(a - b) <= rtol * abs(a) for a, b in zip(after, before)):
        return model
    logger.info("norm estimates settled (they moved by up to %.2g relative)",
                max(abs(a - b) / abs(a) for a, b in zip(after, before)))
    return trial


def republish(source: Path, out: Path, work: Path) -> dict:
    """Evaluate and card again a checkpoint that `run` trained (its card beside it gives the training record)."""
    model, meta = checkpoint.load(source)
    old = model_card.read(source)
    if old is None:
        raise SystemExit(f"{source} has no card: it was not made by sparsesight.pretrain")
    ev = old["evaluation"]
    model = settled(model)
    training = {**old["training"], "spacing_mm": old["training"].get("spacing_mm", [float(ev["downsample"])] * 3)}
    return publish(model, meta["model"], training, ev["cases"], ev["downsample"], old["training"]["seed"], out, work)


def parser() -> argparse.ArgumentParser:
    """The command line (its option names are RunOptions' fields)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(RECIPES))
    p.add_argument("--epochs", type=int, default=None, help="default: the model's recipe")
    p.add_argument("--cases", type=int, default=12, help="training phantoms (+1 validation)")
    p.add_argument("--eval-cases", type=int, default=2)
    p.add_argument("--downsample", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-seed", type=int, default=None,
                   help="seed of the weights, patches and augmentation only (default --seed; the data stay --seed's)")
    p.add_argument("--out", type=Path, default=PRETRAINED)
    p.add_argument("--work", type=Path, default=Path("out/pretrain"))
    p.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="continue from a checkpoint made by this "
                                                                      "command (a second cosine cycle)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    p.add_argument("--variety-cases", type=int, default=0,
                   help="also train on this many varied phantoms (sample-data --variety), resampled onto the grid")
    p.add_argument("--augment", choices=AUGMENT_LEVELS, default="full", help="training augmentation (default full)")
    p.add_argument("--permute-labels", action="store_true",
                   help="train the null model of the data-randomisation check (labels of other cases; written to "
                        "<out>/null)")
    p.add_argument("--model-config", type=json.loads, default=None, metavar="JSON",
                   help='hyperparameters over the model\'s defaults, e.g. \'{"strides": [1, 2, 1, 1]}\'')
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1 (evaluation stays on the CPU)")
    p.add_argument("--minutes", type=float, default=None,
                   help="without --epochs: as many epochs as fit in this many minutes (measured by a 2-epoch probe)")
    p.add_argument("--train-config", type=json.loads, default=None, metavar="JSON",
                   help='trainer settings over the recipe\'s, e.g. \'{"num_workers": 6, "patience": 60}\'')
    p.add_argument("--workers", type=int, default=1, help="processes that make the phantoms")
    p.add_argument("--data-only", action="store_true", help="make the phantoms a run needs, then stop")
    p.add_argument("--no-eval", action="store_true",
                   help="train and save the weights with a card whose evaluation is pending (run --republish later)")
    p.add_argument("--republish", type=Path, metavar="CHECKPOINT",
                   help="evaluate and card again a checkpoint made by this command (no training)")
    p.add_argument("--add-off-grid", type=Path, metavar="CHECKPOINT",
                   help="add the off-grid evaluation to a shipped checkpoint's card (weights untouched)")
    return p


def options_of(a: argparse.Namespace) -> RunOptions:
    """The RunOptions of parsed command-line arguments."""
    names = {f.name for f in fields(RunOptions)} - {"evaluate_now"}
    return RunOptions(**{k: v for k, v in vars(a).items() if k in names}, evaluate_now=not a.no_eval)


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    keep_freed_memory()  # the server's malloc settings (memory.py)
    t0 = time.time()
    if a.data_only:
        training_data(a.cases, a.eval_cases, a.downsample, a.seed, a.work, a.variety_cases, a.workers)
    elif a.add_off_grid:
        add_off_grid(a.add_off_grid, work=a.work)
    elif a.republish:
        republish(a.republish, a.out, a.work)
    else:
        try:
            run(a.model, options_of(a))
        except InvalidInput as e:  # options that cannot work together (run checks them before any slow work)
            p.error(str(e))
    logger.info("done in %.0f s", time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
