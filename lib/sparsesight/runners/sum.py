"""Inference runner of SUM (seed 003): segmentation with the denoising explanations in the result bundle.

The infer task `sum` calls predict_file (label, as for every segmentation model) and run_bundle (the bundle) with
the model option `alpha`, the factor that scales every learned threshold (1: the trained model, 0: the linear
filter banks only). Normalisation, sliding-window prediction and the label/probability volumes come from
runners/segmentation.py; this module adds what makes SUM a denoiser: ED_alpha(x) and ED_0(x), the shrinkage masks, the
impulse/frequency responses with their SDS/FDS/FDV table, and the alpha sweep; and the explanation-quality metrics
of ED_alpha(x) as a reconstruction of x (explain/quality.py: manifest `explanation_quality`, `quality` table).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .. import MODALITIES, REGIONS
from ..bundle import BundleWriter
from ..errors import InvalidInput
from ..explain import response
from ..explain.served import INFER_OPTIONS
from ..models.sum import check_alpha, train_defaults
from ..preview import png_bytes, pyplot
from ..training import default_train_config as _segmentation_train_config
from . import segmentation

logger = logging.getLogger(__name__)

#: every output the SUM bundle can hold; `outputs=None` means all of them
BUNDLE_OUTPUTS = ("label", "probabilities", "regions", "reconstruction", "linear_reconstruction", "shrinkage", "response",
                  "response_metrics", "alpha_sweep", "alpha_sweep_plot", "params", "params_plot", "quality")
#: the model's own infer options: `alpha` scales every threshold; attribution maps (explain/served.py)
OPTIONS = {"alpha": 1.0, **INFER_OPTIONS}
SWEEP_CROP = 64  # the alpha sweep runs on a cube of this side around the predicted tumour (10 passes)


#: predict_file(..., checks_for=(name, version)) also gives the input checks (segmentation.input_checks)
INPUT_CHECKS = True


def default_train_config() -> dict:
    """The segmentation training defaults with SUM's optimiser (Section 4.3: AdamW, weight decay 0.25)."""
    return {**_segmentation_train_config(), **train_defaults()}


def predict_file(model, image_path, device="cpu", alpha=None, **options) -> tuple[np.ndarray, np.ndarray]:
    """Label map (X, Y, Z) uint8 and affine of a 4-channel image file, thresholds scaled by `alpha`; an attribution
    map instead when `options` ask for one (explain.served: attribution=..., attribution_nifti)."""
    a = None if alpha is None else check_alpha(alpha)
    with model.using_alpha(a):
        return segmentation.predict_file(model, image_path, device, **options)


def _sweep_crop(x: torch.Tensor, label: np.ndarray, side: int) -> torch.Tensor:
    """A cube of `side` (or the whole axis when shorter) centred on the predicted tumour, else on the image."""
    shape = x.shape[2:]
    fg = np.argwhere(label > 0)
    centre = fg.mean(0) if len(fg) else np.array(shape) / 2
    sl = []
    for c, s in zip(centre, shape):
        n = min(side, s)
        start = int(np.clip(round(c - n / 2), 0, s - n))
        sl.append(slice(start, start + n))
    return x[(..., *sl)]


def params_plot(rows: list[dict]) -> bytes:
    """Bars of the learned thresholds b per shrinkage layer (mean, with the channels' min-max range)."""
    plt = pyplot()

    layers = [r for r in rows if r["layer"] != "alpha"]
    alpha = next((r["b_mean"] for r in rows if r["layer"] == "alpha"), 1.0)
    mean = np.array([r["b_mean"] for r in layers])
    err = np.array([[r["b_mean"] - r["b_min"] for r in layers], [r["b_max"] - r["b_mean"] for r in layers]])
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(layers)), 3.4))
    ax.bar(range(len(layers)), mean, yerr=err, capsize=3, color=["C3" if m < 0 else "C0" for m in mean])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([r["layer"] for r in layers], rotation=60, fontsize=7)
    ax.set_ylabel("threshold b (mean, min-max)")
    ax.set_title(f"SUM: learned soft-shrinkage thresholds (applied as alpha b, alpha = {alpha:g}); red: b < 0 boosts",
                 fontsize=9)
    return png_bytes(fig, dpi=80)


def run_bundle(model, name: str, version: str, image_path, image_id: str, out_path, outputs=None, device="cpu",
               alpha=None, series_grids: dict | None = None, **options) -> Path:
    """Segment `image_path` with SUM and write the result bundle (docs/ARCHITECTURE.md) with its denoising explanations.

    `outputs` selects from BUNDLE_OUTPUTS (None: all); `alpha` scales the thresholds (default: the model's, 1).
    `options`: attribution maps with their faithfulness (explain.served.INFER_OPTIONS), computed at that alpha.
    Volumes share the input's affine and shape; the manifest records alpha.
    `series_grids`: the own grids of series a PACS study had resampled onto one (segmentation.load_on_model_grid).
    """
    from ..explain import quality, served

    attribution = served.parse_options(options)  # bad attribution options fail before any work
    a = float(model.alpha) if alpha is None else check_alpha(alpha)
    wanted = list(BUNDLE_OUTPUTS) if outputs is None else list(outputs)
    unknown = sorted(set(wanted) - set(BUNDLE_OUTPUTS))
    if unknown:
        raise InvalidInput(f"unknown bundle outputs {unknown}; choose from {list(BUNDLE_OUTPUTS)}")
    image, affine, resampled = segmentation.load_on_model_grid(model, image_path,  # on the model's grid
                                                                series_grids=series_grids)
    w = BundleWriter(name, version, image_id, affine, image.shape[1:], modalities=list(MODALITIES), alpha=a)
    if resampled:
        w.manifest["resampled"] = resampled
    model = model.to(device).eval()
    x = segmentation.normalise(image).to(device)
    logger.info("%s: interpreting %s %s at alpha %g", name, image_id, tuple(image.shape[1:]), a)
    interp = model.interpret(x, alpha=a)  # one whole-volume pass: the label is the argmax of what is shown
    label = interp["logits"][0].argmax(0).cpu().numpy().astype(np.uint8)
    trained = abs(a - float(model.alpha)) < 1e-9
    segmentation.add_label(w, label, image, resampled=resampled,
                           mirrored=segmentation.mirror_label(model, x, affine, alpha=a),
                           consistency_note=None if trained else f"the thresholds were measured at the trained "
                           f"alpha {float(model.alpha):g}, not at {a:g}")
    # explanation quality (explain/quality.py): the reconstruction is ED_{alpha=0}(x), what the filter banks alone
    # pass (eq. 14-15, SUM_Rec's R_Rec); ED_alpha(x) is the signal the output layer reads, not a reconstruction
    table = model.parameter_table()
    shrinkage = quality.shrinkage_activity(interp["sparsity"].tolist(), list(interp["masks"]), table)
    xn, brain = x[0].cpu().numpy(), quality.brain_mask(image)
    ed, lin = interp["ed"][0].cpu().numpy(), interp["ed_linear"][0].cpu().numpy()
    signal = quality.assess_output_signal(ed, lin, xn, label > 0, brain, MODALITIES[: model.n])
    eq = quality.assess(xn, lin, MODALITIES[: model.n], brain=brain, shrinkage=shrinkage, output_signal=signal)
    eq["reconstruction"]["of"] = "ED at alpha 0, the filter banks alone"
    eq = quality.jsonable(eq)
    w.manifest["explanation_quality"] = eq
    if "quality" in wanted:
        w.add_table("quality", quality.table_rows(eq), description="explanation quality against the aims of issue 16 "
                    "(status FAIL: not faithful on that measure): reconstruction = ED_{alpha=0}(x), output_signal = "
                    "ED_alpha(x), the signal entering the output layer")
    if "probabilities" in wanted:
        segmentation.add_probabilities(w, interp["probabilities"][0].cpu().numpy(),
                                  description="class membership min(q_k, 1 - q_{k+1}) of the clipped region maps")
    if "regions" in wanted:
        for k, region in enumerate(list(REGIONS)[: model.m - 1]):
            w.add_volume(f"region/{region}", interp["region_probabilities"][0, k].cpu().numpy(),
                         colormap="probability", range=[0.0, 1.0], dtype=np.int16,
                         description=f"{region}: the output layer C_{{0,1}}(K_Omega ED_alpha(x) + b_Omega) (eq. 12), "
                                     "decided at 0.5")
    for key, out, what, measured in (
            ("ed", "reconstruction", f"ED_alpha(x), alpha = {a:g}: the signal entering the output layer (normalised "
                                     "units; the paper's 'Inp. sig. O.L.': the shrinkages keep the tumour and push the "
                                     "rest down, so it is not held to the reconstruction aim)", "output_signal"),
            ("ed_linear", "linear_reconstruction", "ED_{alpha=0}(x): what the filter banks alone reconstruct (eq. 15)",
             "reconstruction")):
        if out in wanted:
            for i, mod in enumerate(MODALITIES[: model.n]):
                w.add_volume(f"{out}/{mod}", interp[key][0, i].cpu().numpy(), dtype=np.int16, description=what,
                             quality=eq[measured]["per_modality"][mod])
    if "shrinkage" in wanted:
        surv = interp["survival"][0].cpu().numpy()
        for k, layer in enumerate(model.survival_names()):
            w.add_volume(f"shrinkage/{layer}", surv[k], dtype=np.int16, colormap="probability", range=[0.0, 1.0],
                         description=f"fraction of the {layer} coefficients that survive the shrinkage "
                                     f"|z| > alpha b (per voxel, over channels and the level's layers)",
                         quality=quality.jsonable(quality.shrinkage_level(shrinkage, table, layer)))
    del interp
    if "response" in wanted or "response_metrics" in wanted:
        size = response.response_size(model)
        logger.info("%s: impulse responses on %s", name, size)
        r = response.impulse_response(lambda t: model(t, alpha=0.0, output="ed"), model.n, size, device=device)
        rows = response.response_metrics(r, MODALITIES[: model.n])
        if "response_metrics" in wanted:
            w.add_table("response_metrics", rows, description="SDS, FDS, FDV (App. C) of the impulse response of "
                                                              "ED with zero thresholds, per input/output channel")
        if "response" in wanted:
            w.add_plot("response", response.plot_response(r, MODALITIES[: model.n], rows))
    if "alpha_sweep" in wanted or "alpha_sweep_plot" in wanted:
        crop = _sweep_crop(x, label, SWEEP_CROP)
        logger.info("%s: alpha sweep %s on a %s crop", name, list(response.DEFAULT_ALPHAS), tuple(crop.shape[2:]))
        rows, images = response.alpha_sweep(model, crop, response.DEFAULT_ALPHAS)
        if "alpha_sweep" in wanted:
            w.add_table("alpha_sweep", rows, description="per alpha: surviving coefficients, noise let through "
                                                         "and detail kept relative to alpha = 0")
        if "alpha_sweep_plot" in wanted:
            w.add_plot("alpha_sweep_plot", response.plot_alpha_sweep(rows, images, 0, MODALITIES[0]))
    if "params" in wanted or "params_plot" in wanted:
        table = model.parameter_table()
        if "params" in wanted:
            w.add_table("params", table, description="learned thresholds b per shrinkage layer and alpha")
        if "params_plot" in wanted:
            w.add_plot("params_plot", params_plot(table))
    with model.using_alpha(a):
        served.add_attributions(w, model, x, attribution, model_name="sum")
    return w.write(out_path)
