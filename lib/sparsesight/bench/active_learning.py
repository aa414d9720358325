"""Labelling-efficiency benchmark: Dice against the number of labelled images, per active-learning strategy.

    python -m sparsesight.bench.active_learning [--strategies random,sparse_residual,epistemic] [--seeds 2]
        [--pool 10] [--test 3] [--initial 2] [--rounds 3] [--batch 2] [--epochs 15] [--initial-epochs 60]
        [--downsample 4] [--model sum|mlcsc] [--model-config JSON] [--first-seed 0] [--out bench/results]
    python -m sparsesight.bench.active_learning --combine DIR [DIR ...] --out bench/results

Everything goes through the real MONAI Label server with apps/sparsesight (started once, as a child process):
a simulated annotator starts from `initial` labelled phantoms of the pool and then, for `rounds` rounds, asks
the strategy for the next image `batch` times (POST /activelearning/<strategy>, submitting each image's true
label with PUT /datastore/label before asking again), retrains (POST /train/<model>: incremental from the
current checkpoint on all final labels, `epochs` epochs; the training process refreshes the strategy's
cached scores before it ends) and measures Dice on a fixed held-out set that never enters the datastore,
by segmenting each held-out image through POST /infer/<model> (its result bundle: label and probabilities).
The model is `mlcsc` (sparse codes' residual Phi gamma) or `sum` (ED_{alpha=0} reconstruction residual).
Per seed the initial labelled set, the initial model (trained once, its checkpoint restored before every
strategy) and the training seed are the same for every strategy, so the curves differ only by the images the
strategies pick. Reported per strategy: the area under the Dice-vs-labels curve (normalised: the mean Dice
over the budget), mean and spread over the seeds, and its ratio to `random` measured in the same run; the
same for the soft Dice of the probabilities, which moves even while the hard Dice is still 0.

Seeds are first-seed, first-seed + 1, ... (each seed's start set, network and training draws depend on it
alone), so runs of other seeds can go on side by side or in other sessions. --combine writes one record of the
finished runs recorded in those folders: the same settings and strategies, no seed twice, and the same code (each
record names its commit; the code under CODE_PATHS must not differ between them, nor have been edited uncommitted).

Writes active_learning.{csv,json,png} under --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from scipy.stats import t as t_dist

from .. import REGIONS, model_card
from ..active_learning import area_under_curve
from ..data.io import load_label
from ..metrics import region_dice
from ..preview import pyplot
from . import setup_process

logger = logging.getLogger(__name__)

MODEL = "mlcsc"  # the annotator's default served model
#: the benchmark's default: SUM learns the 4 mm phantoms within the budget of a round; ML-CSC's deepest codes sit
#: at 16 mm there and it did not segment within 3 epochs a round (`--model mlcsc` runs it anyway)
BENCH_MODEL = "sum"
METRICS = {"dice": "Dice", "soft_dice": "soft Dice"}
STRATEGIES = ("random", "sparse_residual", "epistemic", "hybrid")
#: bootstrap resamples of the seeds for the 95 % interval of an AUC ratio
BOOTSTRAP = 10000
#: one CPU epoch in seconds on the 4 mm phantoms (60 x 60 x 39 voxels)
FAST_TRAIN = {"patch_size": [32, 32, 32], "samples_per_image": 2, "batch_size": 2}


# ------------------------------------------------------------------------------------------- the annotator
class Annotator:
    """A simulated annotator talking to the server's REST API; true labels come from `labels/<id>.nii.gz`."""

    def __init__(self, url: str, labels_dir, model: str = MODEL, timeout: float = 600):
        self.url, self.labels_dir, self.model, self.timeout = url.rstrip("/"), Path(labels_dir), model, timeout

    def _ok(self, r: requests.Response) -> requests.Response:
        if r.status_code != 200:
            raise RuntimeError(f"{r.request.method} {r.url}: {r.status_code} {r.text[:500]}")
        return r

    def objects(self) -> dict:
        return self._ok(requests.get(f"{self.url}/datastore/", params={"output": "all"}, timeout=60)).json()["objects"]

    def labelled(self) -> set:
        return {k for k, v in self.objects().items() if "final" in v.get("labels", {})}

    def unlabelled(self) -> set:
        return set(self.objects()) - self.labelled()

    def version(self):
        return self._ok(requests.get(f"{self.url}/info/", timeout=60)).json()["models"][self.model]["version"]

    def pick(self, strategy: str, **params) -> dict:
        """POST /activelearning/<strategy>: the server's answer (id None when nothing is left)."""
        params = {"model": self.model, **params}  # the strategy scores with the benchmarked model
        return self._ok(requests.post(f"{self.url}/activelearning/{strategy}", json=params, timeout=self.timeout)).json()

    def annotate(self, image_id: str) -> None:
        """Submit the true label of image_id as its final label."""
        path = self.labels_dir / f"{image_id}.nii.gz"
        self._ok(requests.put(f"{self.url}/datastore/label", params={"image": image_id, "tag": "final"},
                              files={"label": (path.name, path.read_bytes())}, timeout=120))

    def unlabel(self, image_ids) -> None:
        """Remove the final labels of image_ids and wait until the datastore lists them as unlabelled."""
        for image_id in image_ids:
            self._ok(requests.delete(f"{self.url}/datastore/label", params={"id": image_id, "tag": "final"},
                                     timeout=60))
        deadline = time.time() + 60
        while set(image_ids) & self.labelled():  # the datastore catches up through its file watcher
            if time.time() > deadline:
                raise TimeoutError(f"labels of {sorted(image_ids)} still listed after removal")
            time.sleep(0.3)

    def train(self, epochs: int, train_config: dict | None = None) -> dict:
        """POST /train/<model> and wait for it; returns the final task status (raises unless DONE)."""
        r = self._ok(requests.post(f"{self.url}/train/{self.model}",
                                   json={"epochs": epochs, "train_config": train_config or FAST_TRAIN}, timeout=120))
        task_id, deadline = r.json()["id"], time.time() + self.timeout
        while time.time() < deadline:
            status = requests.get(f"{self.url}/train/", timeout=60).json()
            if status.get("id") == task_id and status["status"] not in ("SUBMITTED", "RUNNING"):
                if status["status"] != "DONE":
                    raise RuntimeError("training failed:\n" + "\n".join(status.get("details", [])))
                return status
            time.sleep(0.5)
        raise TimeoutError(f"training did not finish in {self.timeout} s")

    def segment(self, image_path) -> tuple[np.ndarray, np.ndarray]:
        """The served model's label map (X, Y, Z) and class probabilities (K, X, Y, Z) of an image file, from its
        result bundle (uploaded: held-out images stay out of the datastore)."""
        from .. import CLASSES, bundle

        path = Path(image_path)
        r = self._ok(requests.post(f"{self.url}/infer/{self.model}", params={"output": "image"},
                                   data={"params": json.dumps({"bundle": True, "outputs": ["label", "probabilities"]})},
                                   files={"file": (path.name, path.read_bytes())}, timeout=self.timeout))
        with tempfile.TemporaryDirectory(prefix="sparsesight-al-") as d:
            zip_path = Path(d) / "bundle.zip"
            zip_path.write_bytes(r.content)
            b = bundle.read(zip_path)
            try:
                label = b.volume("label")[0]
                fg = np.stack([b.volume(f"probability/{CLASSES[c]}")[0] for c in range(1, len(CLASSES))])
            finally:
                b.close()
        return label, np.concatenate([np.clip(1 - fg.sum(0, keepdims=True), 0, 1), fg])

    def evaluate(self, cases) -> dict:
        """Over held-out [(image path, label path)]: mean region Dice (WT, TC, ET) of the label map and their mean
        ("dice"), and the mean soft Dice of the probabilities ("soft_dice", moves with any change of the model)."""
        per, soft = [], []
        for image, label in cases:
            truth, _ = load_label(label)
            pred, prob = self.segment(image)
            per.append(region_dice(pred, truth))
            soft.append(np.mean(list(region_soft_dice(prob, truth).values())))
        out = {k: float(np.mean([d[k] for d in per])) for k in REGIONS}
        out["dice"] = float(np.mean([out[k] for k in REGIONS]))
        out["soft_dice"] = float(np.mean(soft))
        return out


def soft_dice(p: np.ndarray, y: np.ndarray) -> float:
    """2 sum p y / (sum p + sum y) for a probability map p and a binary mask y; 1 when both are empty."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    s = p.sum() + y.sum()
    return 1.0 if s == 0 else float(2 * (p * y).sum() / s)


def region_soft_dice(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Soft Dice of each BraTS region: the region's probability is the sum of its classes' (prob (K, X, Y, Z))."""
    return {r: soft_dice(prob[list(c)].sum(0), np.isin(label, c)) for r, c in REGIONS.items()}


# ------------------------------------------------------------------------------------------- the run
def _dataset(root: Path, pool: int, test: int, downsample: int, seed: int) -> dict:
    from ..data.phantom import write_dataset

    folder = root / f"phantom_p{pool}_t{test}_d{downsample}_s{seed}"
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        write_dataset(folder, n_cases=pool + test, seed=seed, downsample=downsample, n_test=test)
    meta = json.loads(meta_path.read_text())
    ids = [Path(it["image"]).name.split(".")[0] for it in meta["training"]]
    tests = [(folder / it["image"], folder / it["label"]) for it in meta["test"]]
    return {"folder": folder, "pool": ids, "test": tests}


def _restore(src: Path, dst: Path) -> None:
    """Put a saved checkpoint back in place atomically (the server reloads it on its next use)."""
    tmp = dst.with_name(f".{dst.name}.restore.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def run(strategies=STRATEGIES, seeds: int = 2, pool: int = 10, test: int = 3,
        initial: int = 2, rounds: int = 3, batch: int = 2, epochs: int = 15, initial_epochs: int | None = 60,
        downsample: int = 4, model_config: dict | None = None, data_seed: int = 0, out: str = "bench/results",
        work: str | None = None, model: str = BENCH_MODEL, first_seed: int = 0) -> dict:
    """Run the benchmark (see the module docstring); `model_config` overrides the model's default hyperparameters
    of the fresh network each seed starts from (default: the served model's defaults); seeds first_seed ..
    first_seed + seeds - 1."""
    import torch

    from .. import checkpoint, models
    from ..server import MonaiLabelServer

    if "random" not in strategies:
        strategies = ("random", *strategies)  # the baseline of the ratio table
    if initial < 1 or batch < 1 or initial + rounds * batch > pool:
        raise ValueError(f"need initial >= 1, batch >= 1 and initial + rounds x batch <= pool; got "
                         f"{initial} + {rounds} x {batch} > {pool}")
    initial_epochs = initial_epochs or 4 * epochs
    model_config = dict(model_config or {})
    config = {**models.default_config(model), **model_config}
    out_dir = Path(out)
    settings = {"pool": pool, "test": test, "initial": initial, "rounds": rounds,
                "batch": batch, "epochs": epochs, "initial_epochs": initial_epochs, "downsample_mm": downsample,
                "model": model, "model_config": model_config, "train_config": FAST_TRAIN, "data_seed": data_seed,
                "commit": code_commit(),
                "command": "python -m sparsesight.bench.active_learning " + " ".join(sys.argv[1:])}
    seed_list = list(range(first_seed, first_seed + seeds))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _dataset(Path(work or "out/bench") / "data", pool, test, downsample, data_seed)
    tmp = Path(tempfile.mkdtemp(prefix="sparsesight-al-"))
    studies, model_dir = tmp / "datastore", tmp / "model"
    (studies / "labels" / "final").mkdir(parents=True)
    for image_id in data["pool"]:
        shutil.copy(data["folder"] / "imagesTr" / f"{image_id}.nii.gz", studies / f"{image_id}.nii.gz")
    ckpt = model_dir / f"{model}.pt"

    rows, t_start = [], time.time()
    server = MonaiLabelServer(studies, conf={"model_dir": model_dir, "pretrained": "false"},  # AL from scratch
                              log_path=tmp / "server.log")
    logger.info(f"active learning ({model}): {len(data['pool'])} pool / {len(data['test'])} held-out phantoms at "
          f"{downsample} mm, start {initial}, {rounds} rounds x {batch} labels, {epochs} epochs per round, {seeds} seed(s), "
          f"strategies {', '.join(strategies)}; server log {tmp / 'server.log'}")
    try:
        url = server.start(timeout=300)
        ann = Annotator(url, data["folder"] / "labelsTr", model)
        for seed in seed_list:
            rng = np.random.default_rng(1000 + seed)
            start_ids = sorted(rng.choice(data["pool"], size=initial, replace=False).tolist())
            ann.unlabel(sorted(ann.labelled()))
            shutil.rmtree(model_dir / "scores", ignore_errors=True)
            torch.manual_seed(seed)  # the fresh network of this seed; the server trains it from here
            checkpoint.save(ckpt, models.build(model, config), model, config)
            for image_id in start_ids:
                ann.annotate(image_id)
            train_config = {**FAST_TRAIN, "seed": seed}
            ann.train(initial_epochs, train_config)
            saved = tmp / f"initial_seed{seed}.pt"
            shutil.copyfile(ckpt, saved)
            d0, v0 = ann.evaluate(data["test"]), ann.version()
            logger.info(f"seed {seed}: initial {start_ids} -> {v0}, Dice {d0['dice']:.3f}, soft Dice {d0['soft_dice']:.3f}")
            for strategy in strategies:
                ann.unlabel(sorted(ann.labelled() - set(start_ids)))
                _restore(saved, ckpt)
                shutil.rmtree(model_dir / "scores", ignore_errors=True)  # only this strategy's scores refresh
                rows.append({"strategy": strategy, "seed": seed, "round": 0, "n_labels": initial, "image": "",
                             "score": None, "model_version": v0, "seconds": 0.0, **d0})
                for r in range(1, rounds + 1):
                    t = time.time()
                    picked, scores = [], []
                    for _ in range(batch):
                        before = ann.unlabelled()
                        answer = ann.pick(strategy)
                        image_id = str(answer.get("id"))
                        if image_id not in before:
                            raise RuntimeError(f"{strategy} suggested {image_id!r}, not an unlabelled image: {answer}")
                        ann.annotate(image_id)
                        picked.append(image_id)
                        scores.append(answer.get("score"))
                    version_before = ann.version()
                    ann.train(epochs, train_config)
                    version = ann.version()
                    if version == version_before:
                        raise RuntimeError("training did not change the model version")
                    d = ann.evaluate(data["test"])
                    rows.append({"strategy": strategy, "seed": seed, "round": r, "n_labels": initial + r * batch,
                                 "image": " ".join(picked),
                                 "score": " ".join(f"{x:.6g}" for x in scores if x is not None) or None,
                                 "model_version": version, "seconds": round(time.time() - t, 1), **d})
                    logger.info(f"seed {seed} {strategy:>15} round {r}/{rounds}: labelled {', '.join(picked)} -> "
                          f"Dice {d['dice']:.3f} (WT {d['WT']:.3f} TC {d['TC']:.3f} ET {d['ET']:.3f}), soft Dice "
                          f"{d['soft_dice']:.3f} [{time.time() - t:.0f} s, {time.time() - t_start:.0f} s total]")
            if seed != seed_list[-1]:  # the seeds so far, in case the run is stopped
                write(_results(rows, strategies, t_start, settings), out_dir, partial=True)
    finally:
        server.stop()
    results = _results(rows, strategies, t_start, settings)
    write(results, out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


#: the settings two runs must share to be combined into one record
COMBINE_KEYS = ("pool", "test", "initial", "rounds", "batch", "epochs", "initial_epochs", "downsample_mm", "model",
                "model_config", "train_config")
#: the code a run's figures depend on (the loop, the server app, the models, the trainer, the pinned packages)
CODE_PATHS = ("lib/sparsesight", "apps/sparsesight", "requirements.lock")
REPO = Path(__file__).resolve().parents[3]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)


def code_commit() -> str:
    """The commit the run's code is at, '+dirty' when CODE_PATHS hold uncommitted edits, 'unknown' outside git."""
    head = model_card.commit()
    if head == "unknown":
        return head
    return head + ("+dirty" if _git("diff", "--quiet", "HEAD", "--", *CODE_PATHS).returncode else "")


def same_code(a: str | None, b: str | None) -> bool:
    """Whether runs at commits a and b ran the same code: both committed and clean, and CODE_PATHS equal."""
    if not a or not b or "unknown" in (a, b) or a.endswith("+dirty") or b.endswith("+dirty"):
        return False
    return a == b or _git("diff", "--quiet", a, b, "--", *CODE_PATHS).returncode == 0


def _runs(rec: dict) -> list[dict]:
    """A record's runs: {command, seeds, seconds, machine, commit} of each run it holds."""
    return rec.get("runs") or [{"command": rec["command"], "seeds": sorted({r["seed"] for r in rec["rows"]}),
                                "seconds": rec["seconds"], "machine": rec["machine"], "commit": rec.get("commit")}]


def combine(dirs, out: str) -> dict:
    """One record (active_learning.{json,csv,png} in `out`) of the finished runs recorded in `dirs`; ValueError
    naming the reason when a run is partial, or differs from the first in settings, strategies or code, or when
    two hold the same seed."""
    recs = []
    for d in dirs:
        path = Path(d) / "active_learning.json"
        if not path.is_file():
            raise ValueError(f"--combine: no recorded run at {path}")
        rec = json.loads(path.read_text())
        if "partial" in rec:
            raise ValueError(f"--combine: the run at {path} did not finish ({rec['partial']})")
        recs.append((path, rec))
    (first_path, first), seen = recs[0], set()
    for path, rec in recs:
        differ = [k for k in COMBINE_KEYS if rec.get(k) != first.get(k)]
        differ += ["data_seed"] if rec.get("data_seed", 0) != first.get("data_seed", 0) else []
        differ += ["strategies"] if list(rec["strategies"]) != list(first["strategies"]) else []
        if differ:
            raise ValueError(f"--combine: {path} differs from {first_path} in {', '.join(differ)}")
        for run in _runs(rec):
            if not same_code(run.get("commit"), first.get("commit")):
                raise ValueError(f"--combine: {path} ran other code ({run.get('commit')}) than {first_path} "
                                 f"({first.get('commit')}) under {', '.join(CODE_PATHS)}, or code not committed")
        seeds = {r["seed"] for r in rec["rows"]}
        if seeds & seen:
            raise ValueError(f"--combine: seed(s) {sorted(seeds & seen)} of {path} are in another run too")
        seen |= seeds
    settings = {**{k: first.get(k) for k in (*COMBINE_KEYS, "data_seed", "commit")},
                "command": "python -m sparsesight.bench.active_learning " + " ".join(sys.argv[1:])}
    results = _record([r for _, rec in recs for r in rec["rows"]], [run for _, rec in recs for run in _runs(rec)],
                      settings, list(first["strategies"]))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write(results, out_dir)
    return results


def _record(rows, runs, settings, strategies) -> dict:
    """The record of `rows` made by `runs`: the summary, the number of seeds, the runs' seconds and machines."""
    results = summarise(rows, strategies)
    results.update({"seeds": len({r["seed"] for r in rows}), "seconds": round(sum(r["seconds"] for r in runs), 1),
                    "machine": "; ".join(dict.fromkeys(r["machine"] for r in runs)), "rows": rows, **settings,
                    "runs": runs})
    return results


def _results(rows, strategies, t_start, settings) -> dict:
    """The record of this run's rows so far."""
    run = {"command": settings["command"], "seeds": sorted({r["seed"] for r in rows}),
           "seconds": round(time.time() - t_start, 1), "commit": settings["commit"],
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, load average "
                      f"{os.getloadavg()[0]:.1f} at the end"}
    return _record(rows, [run], settings, strategies)


def summarise(rows: list[dict], strategies) -> dict:
    """Per strategy and metric (Dice, soft Dice): AUC per seed, its mean and standard deviation over the seeds,
    the mean curve, and the AUC ratio to random."""
    out: dict[str, Any] = {"strategies": {}}
    for s in strategies:
        res: dict[str, Any] = {}
        seeds = sorted({r["seed"] for r in rows if r["strategy"] == s})
        for metric in METRICS:
            aucs, curves = [], []
            for seed in seeds:
                pts = sorted((r["n_labels"], r[metric]) for r in rows if r["strategy"] == s and r["seed"] == seed)
                aucs.append(area_under_curve([p[0] for p in pts], [p[1] for p in pts]))
                curves.append([p[1] for p in pts])
            c = np.array(curves)
            res[metric] = {"auc": aucs, "auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs)),
                           "mean": c.mean(0).tolist(), "std": c.std(0).tolist(), "final_mean": float(c[:, -1].mean())}
        res["n_labels"] = sorted({r["n_labels"] for r in rows if r["strategy"] == s})
        out["strategies"][s] = res
    for metric in METRICS:
        base = out["strategies"]["random"][metric]
        for r in out["strategies"].values():
            m = r[metric]
            m["auc_ratio_vs_random"] = m["auc_mean"] / base["auc_mean"] if base["auc_mean"] > 0 else None
            m["auc_ratio_ci95"] = ratio_interval(m["auc"], base["auc"])
            m["auc_ci95"] = mean_interval(m["auc"])
    return out


def ratio_interval(a, b, n_boot: int = BOOTSTRAP, seed: int = 0) -> list[float] | None:
    """95 % percentile-bootstrap interval of mean(a) / mean(b) over paired seeds (a[i], b[i] from seed i: the
    same start set and initial model), resampling the seeds with replacement; None with fewer than 2 seeds or a
    resample whose mean(b) is 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or a.shape != b.shape:
        return None
    idx = np.random.default_rng(seed).integers(0, a.size, (n_boot, a.size))
    den = b[idx].mean(1)
    if np.any(den <= 0):
        return None
    lo, hi = np.percentile(a[idx].mean(1) / den, [2.5, 97.5])
    return [float(lo), float(hi)]


def mean_interval(x) -> list[float] | None:
    """95 % Student-t interval of the mean over the seeds (None with fewer than 2)."""
    x = np.asarray(x, np.float64)
    if x.size < 2:
        return None
    h = t_dist.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return [float(x.mean() - h), float(x.mean() + h)]


def markdown_table(results: dict) -> list[str]:
    """bench/README.md's table of a recorded run: per strategy the mean Dice at each label count, the Dice AUC with
    its 95 % interval and its ratio to random with the paired-bootstrap interval, the same for the soft Dice."""
    first = next(iter(results["strategies"].values()))
    counts = " / ".join(str(n) for n in first["n_labels"])
    lines = [f"| strategy | Dice at {counts} labels (mean of {results['seeds']} seeds) | Dice AUC [95 % interval] "
             f"| × random [95 % interval] | soft-Dice AUC | soft Dice × random [95 % interval] |",
             "|---|---|---|---|---|---|"]

    def ci(x):
        return f"[{x[0]:.3f}, {x[1]:.3f}]" if x else "n/a"

    def ratio(m, name):  # None when random's AUC is 0
        x = m["auc_ratio_vs_random"]
        return ("n/a" if x is None else f"{x:.3f}") + (f" {ci(m['auc_ratio_ci95'])}" if name != "random" else "")

    for name, r in results["strategies"].items():
        d, sd = r["dice"], r["soft_dice"]
        lines.append(f"| {name} | {' / '.join(f'{v:.3f}' for v in d['mean'])} | {d['auc_mean']:.3f} {ci(d['auc_ci95'])} "
                     f"| {ratio(d, name)} | {sd['auc_mean']:.3f} | {ratio(sd, name)} |")
    return lines


def write(results: dict, out_dir: Path, partial: bool = False) -> None:
    """active_learning.{json,csv,png} under out_dir (partial: the seeds so far, json and csv only, marked)."""
    if partial:
        results = {**results, "partial": f"{results['seeds']} seed(s) so far; the run was still going"}
    plt = pyplot()

    (out_dir / "active_learning.json").write_text(json.dumps(results, indent=2, default=str))
    keys = ["strategy", "seed", "round", "n_labels", "image", "score", "dice", "soft_dice", "WT", "TC", "ET",
            "model_version", "seconds"]
    lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r[k]) for k in keys) for r in results["rows"]]
    (out_dir / "active_learning.csv").write_text("\n".join(lines) + "\n")
    if partial:
        logger.info(f"{results['partial']}: wrote {out_dir / 'active_learning.json'}")
        return

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.6 * len(METRICS), 4.2))
    for ax, metric in zip(axes, METRICS):
        for i, (s, r) in enumerate(results["strategies"].items()):
            n, m, sd = np.array(r["n_labels"]), np.array(r[metric]["mean"]), np.array(r[metric]["std"])
            k = results["seeds"]
            h = t_dist.ppf(0.975, k - 1) * sd * np.sqrt(k / (k - 1)) / np.sqrt(k) if k > 1 else 0 * sd
            ci = r[metric].get("auc_ratio_ci95")
            ax.plot(n, m, "o-", color=f"C{i}",
                    label=f"{s}: AUC {r[metric]['auc_mean']:.3f}, {r[metric]['auc_ratio_vs_random'] or 0:.2f}× random"
                          + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and s != "random" else ""))
            ax.fill_between(n, m - h, m + h, color=f"C{i}", alpha=0.15)
        ax.set_xlabel("labelled images")
        ax.set_ylabel(f"mean {METRICS[metric]} (WT, TC, ET), held-out phantoms")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.suptitle(f"labelling efficiency of {results.get('model', MODEL)} through the MONAI Label server: "
                 f"{results['seeds']} seeds, mean and 95 % interval of the mean, pool {results['pool']}, "
                 f"{results['downsample_mm']} mm phantoms", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "active_learning.png", dpi=100)
    plt.close(fig)

    print(f"\nactive learning, {results['seeds']} seeds, {results['initial']} + {results['rounds']} x "
          f"{results['batch']} labels, {results['epochs']} epochs/round, {results['seconds']:.0f} s; "
          f"{results['machine']}")
    print(f"{'strategy':<17}" + "".join(f"{'AUC ' + m:>16}{'sd':>8}{'final':>8}{'/ random':>10}{'95 % interval':>16}"
                                        for m in METRICS))
    for s, r in results["strategies"].items():
        cells = []
        for m in METRICS:
            ratio = r[m]["auc_ratio_vs_random"]
            ci = r[m].get("auc_ratio_ci95")
            cells.append(f"{r[m]['auc_mean']:>16.4f}{r[m]['auc_std']:>8.4f}{r[m]['final_mean']:>8.4f}"
                         + (f"{ratio:>10.3f}" if ratio is not None else f"{'n/a':>10}")
                         + (f"{'[' + f'{ci[0]:.3f}, {ci[1]:.3f}' + ']':>16}" if ci else f"{'n/a':>16}"))
        print(f"{s:<17}" + "".join(cells))
    print("\n".join(markdown_table(results)))
    print(f"wrote {out_dir / 'active_learning.csv'}, .json, .png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--test", type=int, default=3)
    p.add_argument("--initial", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=2, help="labels per round (one training per round)")
    p.add_argument("--epochs", type=int, default=15, help="epochs per round (each visits every labelled image)")
    p.add_argument("--initial-epochs", type=int, default=60, help="epochs on the initial labels")
    p.add_argument("--downsample", type=int, default=4)
    p.add_argument("--model", default=BENCH_MODEL, choices=["sum", "mlcsc"], help="the served model in the loop")
    p.add_argument("--model-config", default=None, help="JSON overriding the fresh model's hyperparameters")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (seeds first-seed, first-seed + 1, ...)")
    p.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                   help="write one record in --out of the finished runs recorded in these folders (no run)")
    p.add_argument("--out", default="out/bench", help="where results go (recorded runs: --out bench/results)")
    p.add_argument("--work", default="out/bench", help="where the phantom data are cached")
    a = p.parse_args(argv)
    setup_process()
    if a.combine:
        combine(a.combine, a.out)
        return
    run(tuple(s.strip() for s in a.strategies.split(",") if s.strip()), seeds=a.seeds, pool=a.pool, test=a.test,
        initial=a.initial, rounds=a.rounds, batch=a.batch, epochs=a.epochs, initial_epochs=a.initial_epochs,
        downsample=a.downsample, model_config=json.loads(a.model_config) if a.model_config else None,
        data_seed=a.data_seed, out=a.out, work=a.work, model=a.model, first_seed=a.first_seed)


if __name__ == "__main__":
    main()
