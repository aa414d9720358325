"""`make demo`: the shipped weights on held-out phantoms through the real MONAI Label server -> Dice, bundles, PNG.

Default (`run`): the held-out split of the shipped models' cards (apps/sparsesight/pretrained/*.card.json) is
generated, a server serves the shipped weights, every case is segmented over REST and its Dice printed beside the
card's, and one result bundle per model shows the explanations. `make demo RETRAIN=1` (`run(retrain=True)`) trains
ML-CSC and SUM from scratch over REST on generated sample data instead.

Everything goes through the server's REST API, as a client (3D Slicer, the CLI) would use it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import requests

from .bundle import read, validate
from .data.io import load_label
from .explain.quality import summary
from .metrics import region_dice
from .server import MonaiLabelServer

#: what the demo asks the server for (every output, with the components of T1ce only, as in Fig. 1 of the paper)
DEMO_OUTPUTS = ["label", "probabilities", "components:T1ce", "reconstruction", "residual", "sparsity", "params",
                "params_plot", "preview", "quality"]


#: the SUM bundle's pictures the demo saves next to the bundle (impulse/frequency responses, alpha sweep, thresholds)
SUM_DEMO_PLOTS = ["response", "alpha_sweep_plot", "params_plot"]


def prepare_datastore(dataset_json: Path, datastore: Path) -> tuple[list[str], list[dict]]:
    """MONAI Label local datastore from an MSD dataset: training images with their labels as `final`
    labels, held-out images without labels. Returns (training ids, held-out items)."""
    root = dataset_json.parent
    meta = json.loads(dataset_json.read_text())
    (datastore / "labels" / "final").mkdir(parents=True, exist_ok=True)
    train_ids = []
    for it in meta["training"]:
        name = Path(it["image"]).name
        for src, dst in ((root / it["image"], datastore / name), (root / it["label"], datastore / "labels" / "final" / name)):
            if not dst.exists():
                shutil.copyfile(src, dst)
        train_ids.append(name.removesuffix(".nii.gz"))
    held_out = []
    for it in meta["test"]:
        name = Path(it["image"]).name
        if not (datastore / name).exists():
            shutil.copyfile(root / it["image"], datastore / name)
        held_out.append({"id": name.removesuffix(".nii.gz"), "label": str(root / it["label"])})
    return train_ids, held_out


def _train(url: str, model: str, epochs: int, poll: float = 2.0):
    r = requests.post(f"{url}/train/{model}", json={"epochs": epochs}, timeout=60)
    if r.status_code >= 400:
        raise RuntimeError(f"train request refused ({r.status_code}): {r.text}")
    printed = set()  # the status keeps only the latest lines: remember what was shown, not how many
    while True:
        time.sleep(poll)
        st = requests.get(f"{url}/train/", timeout=30).json()
        st = st[-1] if isinstance(st, list) else st
        details = st.get("details", [])
        for line in details:
            if line not in printed and any(k in line for k in ("epoch", "train", "loss", "version", "rror")):
                print("  server:", line.rstrip()[-160:], flush=True)
            printed.add(line)
        if st.get("status") in ("DONE", "ERROR", "STOPPED"):
            if st.get("status") != "DONE":
                raise RuntimeError(f"training ended with {st.get('status')}: {details[-20:]}")
            return st


def _sum_demo(url: str, model_dir: Path, case: dict, out_dir: Path, epochs: int, retrain: bool) -> dict:
    """SUM (seed 003) over REST: train `sum` if needed, infer its bundle on `case`; returns what to print."""
    ckpt = model_dir / "sum.pt"
    if retrain and ckpt.exists():
        ckpt.unlink()
    if not ckpt.exists():
        print(f"      sum: no checkpoint: training SUM_Rec for {epochs} epochs")
        _train(url, "sum", epochs)
    print(f"      sum: inference on {case['id']} over REST (bundle, alpha = 1)")
    got = _bundle(url, "sum", case, out_dir, {"alpha": 1.0}, SUM_DEMO_PLOTS)
    path, manifest, pngs = got["path"], got["manifest"], got["pngs"]
    return {"bundle": path, "outputs": len(manifest["outputs"]), "version": manifest["model_version"], "pngs": pngs,
            "dice": _bundle_dice(path, case), "quality": manifest.get("explanation_quality", {})}


#: the shipped models the demo shows, in order
SHIPPED = ("mlcsc", "sum")
#: the most a Dice the demo measures may differ from its model card's before the demo says so
CARD_TOLERANCE = 0.02


def _label_dice(url: str, model: str, case: dict) -> dict:
    """Dice of the label the server returns for `case` (the plain infer, as every MONAI Label client asks)."""
    import tempfile

    r = requests.post(f"{url}/infer/{model}", params={"image": case["id"], "output": "image"}, timeout=1800)
    if r.status_code != 200:
        raise RuntimeError(f"{model} infer failed ({r.status_code}): {r.text[:2000]}")
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as f:
        f.write(r.content)
        f.flush()
        pred, _ = load_label(f.name)
    ref, _ = load_label(case["label"])
    return region_dice(pred, ref)


def _bundle_dice(path: Path, case: dict) -> dict:
    """Dice of the label a result bundle holds (the same segmentation as the plain infer's: one inference less)."""
    b = read(path)
    try:
        pred, _ = b.volume("label")
    finally:
        b.close()
    ref, _ = load_label(case["label"])
    return region_dice(pred, ref)


def _bundle(url: str, model: str, case: dict, out_dir: Path, params: dict, pictures: list) -> dict:
    """Infer `model`'s result bundle on `case`, save its `pictures` as PNG; the manifest and the PNG paths."""
    r = requests.post(f"{url}/infer/{model}", params={"image": case["id"], "output": "image"},
                      data={"params": json.dumps({"bundle": True, **params})}, timeout=1800)
    if r.status_code != 200:
        raise RuntimeError(f"{model} bundle failed ({r.status_code}): {r.text[:2000]}")
    path = out_dir / f"{model}_{case['id']}.zip"
    path.write_bytes(r.content)
    manifest = validate(path)
    b = read(path)
    pngs = []
    for name in pictures:
        png = out_dir / f"{model}_{case['id']}_{name}.png"
        png.write_bytes(b.read_bytes(name))
        pngs.append(png)
    b.close()
    return {"path": path, "manifest": manifest, "pngs": pngs}


def _label_entry(manifest: dict, key: str) -> dict:
    """The label output's `key` object in a bundle manifest ({} when absent)."""
    return next((o.get(key) for o in manifest["outputs"] if o["name"] == "label"), None) or {}


def noise_line(manifest: dict) -> str:
    """The label's input_noise in a line: the estimate, the tolerance measured for the weights, the flags."""
    n = _label_entry(manifest, "input_noise")
    if n.get("sigma_z_max") is None:
        return "not estimated (no 2x2x2 block of the image lies wholly inside the brain)" if n else "not estimated"
    tol = n.get("tolerance")
    gain = n.get("noise_gain")
    where = f" (on the scan's own grid x {gain:.3f}, what resampling it kept)" if gain is not None else ""
    return (f"sigma_z {n['sigma_z_max']:.3f}{where}; " + (f"held up to {tol:.3f} on {n['tolerance_from']}"
                                                          if tol is not None else n.get("note", "tolerance not measured"))
            + ("; FLAGGED: " + "; ".join(n["flags"]) if n.get("flags") else ""))


def grid_line(manifest: dict) -> str:
    """The label's input_grid in a line: the input's voxel size, the slice thickness measured to hold up, the flags."""
    g = _label_entry(manifest, "input_grid")
    if not g:
        return "not reported"
    tol = g.get("tolerance_mm")
    return (" x ".join(f"{v:g}" for v in g["voxel_mm"]) + " mm; "
            + (f"held up to {tol:g} mm slices on held-out phantoms (bench/slice_tolerance)" if tol is not None
               else g.get("note", "tolerance not measured"))
            + apparent_part(g)
            + ("; FLAGGED: " + "; ".join(g["flags"]) if g.get("flags") else ""))


def apparent_part(g: dict) -> str:
    """The slice thickness the input's noise says (input_grid.apparent_slice) and the reading measured to hold up on
    upsampled scans (or on smoothed scans, when it reads alike along every axis), as a clause of grid_line ("" when
    the bundle has no reading)."""
    if g.get("apparent_slice_mm") is None:
        return ""
    tol = g.get("apparent_tolerance_mm")
    kind = ("smoothed", "smoothed_scans") if g.get("apparent_pattern") == "smoothed" else (
        "upsampled", "upsampled_slices")
    return (f"; its noise reads {g['apparent_slice_mm']:g} mm slices"
            + (" (smoothed in 3D)" if kind[0] == "smoothed" else "") + ", "
            + (f"held up to {tol:g} on {kind[0]} phantoms (bench/{kind[1]})" if tol is not None
               else g.get("apparent_note", "tolerance not measured")))


def consistency_line(manifest: dict) -> str:
    """The label's label_consistency in a line: its agreement with the mirrored scan's label per region, the least
    agreement of a good segmentation measured for the weights, the flags."""
    c = _label_entry(manifest, "label_consistency")
    if not c:
        return "not reported"
    t = c.get("threshold")
    return ("agreement with the mirrored scan " + " / ".join(f"{r} {v:.3f}" for r, v in c["agreement"].items())
            + "; " + ("good segmentations agreed at least " + " / ".join(
                f"{r} {v:.3f}" for r, v in t.items() if v is not None) + " (bench/label_consistency)"
                if t is not None else c.get("note", "thresholds not measured"))
            + ("; FLAGGED: " + "; ".join(c["flags"]) if c.get("flags") else ""))


def shipped_cards(folder: Path | None = None) -> dict:
    """{model: card} of the shipped weights; RuntimeError naming what is missing."""
    from . import model_card
    from .pretrain import PRETRAINED

    folder = folder or PRETRAINED
    cards = {m: model_card.read(folder / f"{m}.pt") for m in SHIPPED}
    missing = [m for m, c in cards.items() if c is None]
    if missing:
        raise RuntimeError(f"no shipped weights with a model card for {', '.join(missing)} in {folder}: "
                           f"run `make demo RETRAIN=1` to train them, or `python -m sparsesight.pretrain MODEL`")
    return cards


def quality_record(manifest: dict) -> dict:
    """What the demo printed of a bundle's explanation quality, for the record the README quotes: the verdict, the
    flags, the summary lines and each measured set's per-modality figures."""
    eq = manifest.get("explanation_quality", {})
    return {"faithful": eq.get("faithful"), "summary": summary(eq),
            "flags": [f for v in eq.values() if isinstance(v, dict) for f in v.get("flags", [])],
            **{k: {part: {key: v for key, v in m.items() if key not in ("flags", "faithful")}
                   for part, m in eq[k].get("per_modality", eq[k].get("per_class", {})).items()}
               for k in ("reconstruction", "output_signal", "localisation", "code_localisation") if k in eq}}


def run_shipped(out: str = "out/demo", port: int | None = None, max_cases: int | None = None,
                pretrained: Path | None = None, record: Path | None = None) -> dict:
    """The shipped models on their cards' held-out split; returns {model: {"dice", "card_dice", "per_case",
    "bundle"}, "seconds"}. `max_cases` limits the cases (compared with the card's per-case Dice); `pretrained`:
    another folder of weights with cards (default apps/sparsesight/pretrained)."""
    from .pretrain import eval_split, items_of

    t0 = time.time()
    out_dir = Path(out).resolve()
    cards = shipped_cards(pretrained)
    ev, seed = cards["mlcsc"]["evaluation"], cards["mlcsc"]["training"]["seed"]
    splits = {m: tuple(c["evaluation"].get(k) for k in ("seed", "cases", "downsample")) for m, c in cards.items()}
    if len(set(splits.values())) > 1:
        raise RuntimeError(f"the shipped models' cards were evaluated on different held-out splits {splits}: "
                           f"make them with the same --eval-cases, --downsample and --seed")
    print(f"[1/4] held-out phantoms of the model cards: {ev['data']}")
    ds = eval_split(ev["cases"], ev["downsample"], seed, out_dir / "sample_data")
    cases = items_of(ds, "test")[:max_cases]
    datastore = out_dir / "datastore_heldout"
    datastore.mkdir(parents=True, exist_ok=True)
    for c in cases:
        if not (datastore / Path(c["image"]).name).exists():
            shutil.copyfile(c["image"], datastore / Path(c["image"]).name)
    conf = {"model_dir": out_dir / "model_shipped", **({"pretrained": Path(pretrained).resolve()} if pretrained else {})}
    server = MonaiLabelServer(datastore, port=port, conf=conf,
                              log_path=out_dir / "server_shipped.log")
    print(f"[2/4] starting MONAI Label on the shipped weights: {' '.join(server.command())}")
    results: dict = {}
    with server as url:
        models_info = requests.get(f"{url}/info/", timeout=30).json()["models"]
        for m in SHIPPED:
            info = models_info[m]
            print(f"      {m}: {info.get('source')} weights {info.get('version')}"
                  + (f" (error: {info['error']})" if info.get("error") else ""))
        case = cases[0]
        print(f"[3/4] segmenting {len(cases)} held-out case(s) over REST; {case['id']} as a result bundle with its "
              f"explanations")
        bundles = {"mlcsc": _bundle(url, "mlcsc", case, out_dir, {"outputs": DEMO_OUTPUTS}, ["preview"]),
                   "sum": _bundle(url, "sum", case, out_dir, {"alpha": 1.0}, SUM_DEMO_PLOTS)}
        for m in SHIPPED:
            per_case = ([{"case": case["id"], **_bundle_dice(bundles[m]["path"], case)}]
                        + [{"case": c["id"], **_label_dice(url, m, c)} for c in cases[1:]])
            card = cards[m]["evaluation"]
            card_cases = {d["case"]: d for d in card.get("per_case", [])}
            dice = {r: float(np.mean([d[r] for d in per_case])) for r in ("WT", "TC", "ET")}
            ref = (card["dice"]["held-out"] if len(cases) == card["cases"] else
                   {r: float(np.mean([card_cases[d["case"]][r] for d in per_case])) for r in dice})
            off = [r for r in dice if abs(dice[r] - ref[r]) > CARD_TOLERANCE]
            print(f"      {m} Dice on held-out: " + ", ".join(f"{r} {v:.3f}" for r, v in dice.items())
                  + "   (model card: " + ", ".join(f"{r} {ref[r]:.3f}" for r in dice) + ")"
                  + (f"   DIFFERS from the card in {', '.join(off)}" if off else ""))
            results[m] = {"dice": dice, "card_dice": ref, "per_case": per_case, "differs": off,
                          "bundle": bundles[m]}
    print(f"[4/4] explanations of {case['id']}: result bundles")
    for m in SHIPPED:
        b = results[m]["bundle"]
        print(f"      {m} bundle: {b['path']} ({len(b['manifest']['outputs'])} outputs); pictures: "
              + ", ".join(str(p) for p in b["pngs"]))
        for line in summary(b["manifest"].get("explanation_quality", {})):
            print(f"      {m} explanation quality: {line}")
        print(f"      {m} input noise: {noise_line(b['manifest'])}")
        print(f"      {m} input grid: {grid_line(b['manifest'])}")
        print(f"      {m} label consistency: {consistency_line(b['manifest'])}")
    seconds = time.time() - t0
    results["seconds"] = seconds
    print(f"      demo on shipped weights: {seconds:.0f} s; server log: {server.log_path}")
    if record is not None:  # what the README quotes (bench/results/demo.json)
        import platform

        from .atomic import replace_atomically
        summary_ = {"command": "make demo", "seconds": round(seconds, 1), "cases": [c["id"] for c in cases],
                    "platform": platform.platform(), "cpus": os.cpu_count(),
                    "models": {m: {**{k: results[m][k] for k in ("dice", "card_dice", "differs")},
                                   "explanation_quality": quality_record(results[m]["bundle"]["manifest"])}
                               for m in SHIPPED}}
        replace_atomically(record, (json.dumps(summary_, indent=1) + "\n").encode())
    return results


def run(out: str = "out/demo", port: int | None = None, cases: int = 12, downsample: int = 1, epochs: int = 40,
        seed: int = 0, retrain: bool = False, sum_epochs: int | None = None) -> Path:
    """`make demo RETRAIN=1`: sample data, train ML-CSC and SUM over REST when no checkpoint exists (retrain:
    always), infer their bundles on a held-out case; the ML-CSC bundle's path."""
    from .data.phantom import write_dataset

    out_dir = Path(out).resolve()
    data_root = out_dir / "sample_data"
    ds_json = data_root / "dataset.json"
    if not ds_json.is_file():
        print(f"[1/5] generating {cases} phantom cases ({downsample} mm) in {data_root}")
        write_dataset(data_root, n_cases=cases, seed=seed, downsample=downsample, n_test=2)
    else:
        print(f"[1/5] sample data present: {data_root}")
    datastore = out_dir / "datastore"
    train_ids, held_out = prepare_datastore(ds_json, datastore)
    model_dir = out_dir / "model"
    if retrain and (model_dir / "mlcsc.pt").exists():
        (model_dir / "mlcsc.pt").unlink()
    # from scratch: the shipped weights are not served (pretrained false), so a missing checkpoint is trained
    server = MonaiLabelServer(datastore, port=port, conf={"model_dir": model_dir, "pretrained": "false"},
                              log_path=out_dir / "server.log")
    print(f"[2/5] starting MONAI Label: {' '.join(server.command())}")
    with server as url:
        info = requests.get(f"{url}/info/", timeout=30).json()
        print(f"      {url} serves models {sorted(info.get('models', {}))}, strategies {sorted(info.get('strategies', {}))}")
        if not (model_dir / "mlcsc.pt").exists():
            print(f"[3/5] no checkpoint: training mlcsc on {len(train_ids)} labelled cases for {epochs} epochs")
            _train(url, "mlcsc", epochs)
        else:
            print(f"[3/5] checkpoint present: {model_dir / 'mlcsc.pt'} (make demo RETRAIN=1 to train again)")
        case = held_out[0]
        print(f"[4/5] inference on held-out {case['id']} over REST (bundle)")
        r = requests.post(f"{url}/infer/mlcsc", params={"image": case["id"], "output": "image"},
                          data={"params": json.dumps({"bundle": True, "outputs": DEMO_OUTPUTS})}, timeout=1800)
        if r.status_code != 200:
            raise RuntimeError(f"infer failed ({r.status_code}): {r.text[:2000]}")
        bundle_path = out_dir / f"mlcsc_{case['id']}.zip"
        bundle_path.write_bytes(r.content)
        sum_result = _sum_demo(url, model_dir, case, out_dir, sum_epochs or min(10, epochs), retrain)
    manifest = validate(bundle_path)
    b = read(bundle_path)
    preview = out_dir / f"mlcsc_{case['id']}_preview.png"
    preview.write_bytes(b.read_bytes("preview"))
    pred, _ = b.volume("label")
    ref, _ = load_label(case["label"])
    b.close()
    dice = region_dice(pred, ref)
    print(f"[5/5] bundle: {bundle_path} ({len(manifest['outputs'])} outputs, model {manifest['model_version']})")
    print(f"      preview: {preview}")
    print("      Dice vs the phantom's true label: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    for line in summary(manifest.get("explanation_quality", {})):
        print(f"      explanation quality: {line}")
    print(f"      sum bundle: {sum_result['bundle']} ({sum_result['outputs']} outputs, model {sum_result['version']}); "
          "Dice " + ", ".join(f"{k} {v:.3f}" for k, v in sum_result["dice"].items()))
    print("      sum plots: " + ", ".join(str(p) for p in sum_result["pngs"]))
    for line in summary(sum_result["quality"]):
        print(f"      sum explanation quality: {line}")
    print(f"      server log: {server.log_path}")
    return bundle_path
