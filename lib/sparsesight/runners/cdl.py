"""CDL-Lambda reconstruction of image volumes, slice by slice, and its result bundle (the `cdl` infer runner).

Input: an image file (4D FLAIR/T1/T1ce/T2 volume, a chosen channel, or a 3D single-channel volume): k-space is
simulated for every axial slice with the chosen mask, keep/acceleration and noise (data/lfmri.py); or k-space
itself: a complex-valued (X, Y, Z) NIfTI, one centred 2D k-space per axial slice, unmeasured samples 0.
Output: |x*| per slice in the input's intensity units (times the slice's k-space scale).
Runner contract: runners/__init__.py (Runner).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import MODALITIES, metrics
from ..bundle import BundleWriter
from ..data import convdict, lfmri
from ..data.io import _read, load_image
from ..errors import InvalidInput
from ..preview import png_bytes, pyplot
from ..training.cdl import default_train_config as default_train_config  # the Runner protocol's train defaults

logger = logging.getLogger(__name__)

#: every output the reconstruction bundle can hold; `outputs=None` means all of them
BUNDLE_OUTPUTS = ("reconstruction", "zero_filled", "reference", "lambda", "lambda_summary", "code_energy",
                  "lambda_stats", "metrics", "preview")
#: infer options and their defaults (the app shows them in /info)
OPTIONS = {"channel": "T2", "mask": "lowres", "keep": 0.5, "acceleration": 4.0, "sigma": 0.15, "seed": 0,
           "dictionary": "", "batch": 4}


def _options(channel="T2", mask="lowres", keep=0.5, acceleration=4.0, sigma=0.15, seed=0, dictionary="",
             batch=4) -> dict:
    try:
        keep, acceleration, seed, batch = float(keep), float(acceleration), int(seed), int(batch)
    except (TypeError, ValueError):
        raise InvalidInput("'keep' and 'acceleration' must be numbers, 'seed' and 'batch' whole numbers") from None
    if batch < 1:
        raise InvalidInput(f"'batch' must be >= 1; got {batch}")
    if mask not in lfmri.MASKS:
        raise InvalidInput(f"unknown mask {mask!r}; choose from {list(lfmri.MASKS)}")
    lfmri.sampling_mask((8, 8), mask, keep, acceleration)  # validates keep / acceleration
    return {"channel": lfmri.channel_index(channel), "mask": mask, "keep": keep, "acceleration": acceleration,
            "sigma": lfmri.check_sigma(sigma), "seed": seed, "dictionary": dictionary or None, "batch": batch}


def acquire(image_path, opts: dict) -> dict:
    """k-space (X, Y, Z) complex, masks, per-slice scales, the reference (None for k-space input) and affine."""
    data, affine = _read(image_path, "image")
    if np.iscomplexobj(data):
        ks = np.asarray(data)
        if ks.ndim == 4 and ks.shape[3] == 1:
            ks = ks[..., 0]
        if ks.ndim != 3:
            raise InvalidInput(f"k-space input must be (X, Y, Z) complex, one 2D k-space per axial slice; "
                               f"got shape {ks.shape}")
        masks = lfmri.kspace_masks(ks)
        return {"kspace": ks.astype(np.complex64), "masks": masks, "scales": np.ones(ks.shape[2]),
                "reference": None, "affine": affine}
    if np.asarray(data).ndim == 3:
        image, affine = load_image(image_path, channels=1)
        vol = image[0]
    else:
        image, affine = load_image(image_path, channels=len(MODALITIES))
        vol = image[opts["channel"]]
    ks, masks, scales = lfmri.simulate_volume(vol, opts["mask"], opts["keep"], opts["acceleration"],
                                              opts["sigma"], opts["seed"])
    return {"kspace": ks, "masks": masks, "scales": scales, "reference": vol, "affine": affine}


def _dictionary(model, name):
    return None if not name else torch.as_tensor(convdict.load(name))


def reconstruct_volume(model, ks: np.ndarray, masks: np.ndarray, scales: np.ndarray, d=None, device="cpu",
                       batch: int = 4, keep_maps: bool = True, progress: bool = False) -> dict:
    """CDL-Lambda on every measured axial slice of k-space (X, Y, Z). Returns (X, Y, Z) float32 volumes
    reconstruction, zero_filled (input units), code_energy (sum over filters) and, with keep_maps,
    lambda and code_energy_k (K, X, Y, Z); slices without data stay 0."""
    device = torch.device(device)
    model = model.to(device).eval()
    d = None if d is None else torch.as_tensor(d, dtype=torch.float32, device=device)
    k = model.num_filters if d is None else d.shape[0]
    shape = ks.shape
    out: dict[str, Any] = {n: np.zeros(shape, np.float32) for n in ("reconstruction", "zero_filled", "code_energy")}
    if keep_maps:
        out["lambda"] = np.zeros((k,) + shape, np.float32)
        out["code_energy_k"] = np.zeros((k,) + shape, np.float32)
    zs = [z for z in range(shape[2]) if np.any(ks[..., z])]
    out["slices"] = zs
    out["sparsity"] = np.zeros(k)
    for i in range(0, len(zs), batch):
        idx = zs[i:i + batch]
        if progress:
            logger.info("cdl: slices %d-%d of %d", i + 1, i + len(idx), len(zs))
        y = torch.as_tensor(np.moveaxis(ks[..., idx], -1, 0)).to(device)
        m = torch.as_tensor(np.moveaxis(masks[..., idx], -1, 0)).to(device)
        r = {n: v.cpu().numpy() for n, v in model.interpret(y, m, d).items()}
        sc = np.asarray(scales)[idx].astype(np.float32)
        out["reconstruction"][..., idx] = np.moveaxis(r["reconstruction"] * sc[:, None, None], 0, -1)
        out["zero_filled"][..., idx] = np.moveaxis(r["zero_filled"] * sc[:, None, None], 0, -1)
        out["code_energy"][..., idx] = np.moveaxis(r["code_energy"].sum(1), 0, -1)
        out["sparsity"] += r["sparsity"].sum(0)
        if keep_maps:
            out["lambda"][..., idx] = np.moveaxis(r["lambda"], 0, -1)
            out["code_energy_k"][..., idx] = np.moveaxis(r["code_energy"], 0, -1)
    out["sparsity"] /= max(len(zs), 1)
    return out


def predict_file(model, image_path, device="cpu", **options) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction (X, Y, Z) float32 and affine of `image_path` (the infer task's plain answer)."""
    opts = _options(**options)
    acq = acquire(image_path, opts)
    rec = reconstruct_volume(model, acq["kspace"], acq["masks"], acq["scales"], _dictionary(model, opts["dictionary"]),
                             device, opts["batch"], keep_maps=False, progress=True)
    return rec["reconstruction"], acq["affine"]


def metric_rows(rec: dict, reference: np.ndarray) -> list[dict]:
    """MSE, SSIM and blur of the zero-filled and CDL-Lambda images against the reference, in reference units
    scaled to max 1, on the brain (reference > 0) of the reconstructed slices (averaged over slices)."""
    top = float(reference.max()) or 1.0
    rows = []
    for name in ("zero_filled", "reconstruction"):
        vals = {"mse": [], "ssim": [], "blur": [], "blur_reference": []}
        for z in rec["slices"]:
            ref, x = reference[..., z] / top, rec[name][..., z] / top
            m = ref > 0
            if m.sum() < 49 or min(ref.shape) < 7:
                continue
            vals["mse"].append(metrics.mse(x, ref, m))
            vals["ssim"].append(metrics.ssim(x, ref, m, data_range=1.0))
            vals["blur"].append(metrics.blur(x, m))
            vals["blur_reference"].append(metrics.blur(ref, m))
        rows.append({"image": name, "slices": len(vals["mse"]),
                     **{k: round(float(np.mean(v)), 6) if v else None for k, v in vals.items()}})
    return rows


def lambda_stats(lam: np.ndarray, sparsity: np.ndarray, slices) -> list[dict]:
    """Per filter: mean, std and variance of Lambda_k over the reconstructed slices, its rank by variance
    (Fig. 3 of the paper shows the maps of largest variance) and the fraction of non-zero codes."""
    vals = lam[..., slices].reshape(lam.shape[0], -1) if len(slices) else lam.reshape(lam.shape[0], -1)
    var = vals.var(1)
    rank = np.empty(len(var), int)
    rank[np.argsort(-var)] = np.arange(1, len(var) + 1)
    return [{"filter": k, "lambda_mean": round(float(vals[k].mean()), 6), "lambda_std": round(float(vals[k].std()), 6),
             "lambda_var": round(float(var[k]), 8), "variance_rank": int(rank[k]),
             "code_nonzero_fraction": round(float(sparsity[k]), 6)} for k in range(len(var))]


def preview_png(rec: dict, reference, filters: np.ndarray, stats: list[dict]) -> bytes:
    """Middle reconstructed slice: reference, zero-filled, CDL-Lambda, mean Lambda, code energy; the four Lambda
    maps of largest variance with their filters."""
    plt = pyplot()

    zs = rec["slices"]
    z = zs[len(zs) // 2] if zs else rec["reconstruction"].shape[2] // 2
    top = sorted(stats, key=lambda r: r["variance_rank"])[:4]
    fig, axes = plt.subplots(2, 5, figsize=(13, 5.6))
    hi = float(np.percentile(rec["reconstruction"][..., z], 99.5)) or 1.0
    row = [("reference", None if reference is None else reference[..., z], True),
           ("zero-filled A^H y", rec["zero_filled"][..., z], True),
           ("CDL-Λ |D s + x_L|", rec["reconstruction"][..., z], True),
           ("mean Λ over filters", rec["lambda"][..., z].mean(0), False),
           ("code energy Σ|s_k|²", rec["code_energy"][..., z], False)]
    for ax, (title, img, grey) in zip(axes[0], row):
        if img is not None:
            im = ax.imshow(np.rot90(img), **({"cmap": "gray", "vmin": 0, "vmax": hi} if grey else {"cmap": "magma"}))
            if not grey:
                fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    for ax, r in zip(axes[1, :4], top):
        im = ax.imshow(np.rot90(rec["lambda"][r["filter"], ..., z]), cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(f"Λ_{r['filter']} (variance rank {r['variance_rank']})", fontsize=9)
        ax.axis("off")
        inset = ax.inset_axes([0.0, 0.0, 0.28, 0.28])
        inset.imshow(filters[r["filter"]], cmap="RdBu_r")
        inset.axis("off")
    ax = axes[1, 4]
    k = filters.shape[0]
    cols = int(np.ceil(np.sqrt(k)))
    ks = filters.shape[1]
    tile = np.full((cols * (ks + 1), cols * (ks + 1)), np.nan)
    for i in range(k):
        r, c = divmod(i, cols)
        tile[r * (ks + 1):r * (ks + 1) + ks, c * (ks + 1):c * (ks + 1) + ks] = filters[i]
    ax.imshow(tile, cmap="RdBu_r")
    ax.set_title(f"dictionary: {k} filters {ks}×{ks}", fontsize=9)
    ax.axis("off")
    return png_bytes(fig, dpi=80)


def run_bundle(model, name: str, version: str, image_path, image_id: str, out_path, outputs=None, device="cpu",
               **options) -> Path:
    """Reconstruct `image_path` and write the result bundle: reconstruction, zero-filled input, reference (when the
    input is an image), Lambda per filter (lambda/kNN) and summarised (lambda_mean, lambda_min), code energy
    (sum and per filter), per-filter Lambda statistics, metrics against the reference, and a PNG preview."""
    opts = _options(**options)
    wanted = list(BUNDLE_OUTPUTS) if outputs is None else list(outputs)
    unknown = sorted(set(wanted) - set(BUNDLE_OUTPUTS))
    if unknown:
        raise InvalidInput(f"unknown bundle outputs {unknown}; choose from {list(BUNDLE_OUTPUTS)}")
    acq = acquire(image_path, opts)
    d = _dictionary(model, opts["dictionary"])
    filters = (model.filters.detach().cpu() if d is None else d).numpy()
    rec = reconstruct_volume(model, acq["kspace"], acq["masks"], acq["scales"], d, device, opts["batch"], progress=True)
    ref = acq["reference"]
    w = BundleWriter(name, model_version=version, image=image_id, affine=acq["affine"],
                     spatial_shape=acq["kspace"].shape,
                     acquisition={**{k: v for k, v in opts.items() if k != "channel"},
                                  "channel": MODALITIES[opts["channel"]] if ref is not None else None,
                                  "input": "image" if ref is not None else "kspace",
                                  "dictionary": opts["dictionary"] or getattr(model, "config", {}).get("dictionary")})
    if "reconstruction" in wanted:
        w.add_volume("reconstruction", rec["reconstruction"], description="CDL-Lambda |D s* + x_L| (input units)")
    if "zero_filled" in wanted:
        w.add_volume("zero_filled", rec["zero_filled"], description="zero-filled |A^H y|, the network's input")
    if "reference" in wanted and ref is not None:
        w.add_volume("reference", ref, description="the image k-space was simulated from")
    k = filters.shape[0]
    if "lambda" in wanted:
        for i in range(k):
            w.add_volume(f"lambda/k{i:02d}", rec["lambda"][i], dtype=np.int16, colormap="viridis",
                         description=f"sparsity level map Lambda_{i} of filter {i}")
    if "lambda_summary" in wanted:
        w.add_volume("lambda_mean", rec["lambda"].mean(0), colormap="viridis", description="mean over filters of Lambda_k")
        w.add_volume("lambda_min", rec["lambda"].min(0), colormap="viridis",
                     description="min over filters of Lambda_k: where some filter is allowed to be active")
    if "code_energy" in wanted:
        w.add_volume("code_energy", rec["code_energy"], dtype=np.int16, colormap="magma",
                     description="sum_k |s_k|^2: where the dictionary represents detail")
        for i in range(k):
            w.add_volume(f"code_energy/k{i:02d}", rec["code_energy_k"][i], dtype=np.int16, colormap="magma",
                         description=f"|s_{i}|^2, code energy of filter {i}")
    stats = lambda_stats(rec["lambda"], rec["sparsity"], rec["slices"])
    if "lambda_stats" in wanted:
        w.add_table("lambda_stats", stats, description="per-filter Lambda mean/std/variance, variance rank, sparsity")
    if "metrics" in wanted and ref is not None:
        w.add_table("metrics", metric_rows(rec, ref), description="MSE, SSIM, blur against the reference (brain)")
    if "preview" in wanted:
        w.add_plot("preview", preview_png(rec, ref, filters, stats))
    return w.write(out_path)
