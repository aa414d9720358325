"""Runner of ML-CSC (seed 000, the `mlcsc` infer task): the label, and the result bundle with the model's
morphological components, reconstruction, residual, code energy, sparsity and learned parameters, and the
explanation-quality metrics of explain/quality.py (manifest `explanation_quality`, entries' `quality`, table)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import CLASSES, MODALITIES
from ..bundle import BundleWriter
from ..errors import InvalidInput
from ..explain.served import INFER_OPTIONS
from ..preview import png_bytes, pyplot
from ..training import default_train_config
from .segmentation import (
    add_label,
    add_probabilities,
    load_on_model_grid,
    mirror_label,
    normalise,
    predict,
    predict_file,
)

__all__ = ["BUNDLE_OUTPUTS", "INPUT_CHECKS", "OPTIONS", "default_train_config", "predict_file", "run_bundle"]

#: predict_file(..., checks_for=(name, version)) also gives the input checks (segmentation.input_checks)
INPUT_CHECKS = True

#: the model's own infer options and their defaults (attribution maps, explain/served.py)
OPTIONS = dict(INFER_OPTIONS)
#: every output the segmentation bundle can hold; `outputs=None` means all of them
BUNDLE_OUTPUTS = ("label", "probabilities", "components", "reconstruction", "residual", "code_energy",
                  "sparsity", "params", "params_plot", "preview", "quality")


def _params_plot(rows: list[dict]) -> bytes:
    """Grouped bars of the learned thresholds and step sizes per class; negative values hatched in red."""
    plt = pyplot()

    keys = [k for k in rows[0] if k not in ("class", "negative", "consistent")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, prefix, title in ((axes[0], "lam", "thresholds λ"), (axes[1], "mu", "step sizes μ")):
        ks = [k for k in keys if k.startswith(prefix)]
        width = 0.8 / len(rows)
        for j, r in enumerate(rows):
            vals = [r[k] for k in ks]
            bars = ax.bar(np.arange(len(ks)) + j * width, vals, width, label=r["class"])
            for b, v in zip(bars, vals):
                if v < 0:
                    b.set_hatch("//")
                    b.set_edgecolor("red")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(ks)) + 0.4 - width / 2)
        ax.set_xticklabels(ks)
        ax.set_title(title + " (hatched red: negative, inconsistent with sparse coding)", fontsize=8)
    axes[0].legend(fontsize=7)
    return png_bytes(fig, dpi=90)


def run_bundle(model, name: str, version: str, image_path, image_id: str, out_path, outputs=None,
               device="cpu", series_grids: dict | None = None, **options) -> Path:
    """Segment `image_path` and write the result bundle (docs/ARCHITECTURE.md) with the model's interpretable outputs.

    `outputs` selects from BUNDLE_OUTPUTS (None: all). Volumes share the input's affine and shape.
    `series_grids`: the own grids of series a PACS study had resampled onto one (segmentation.load_on_model_grid).
    `options`: attribution maps with their faithfulness (explain.served.INFER_OPTIONS).
    """
    from ..explain import quality, served
    from ..preview import preview_png

    attribution = served.parse_options(options)  # bad attribution options fail before any work
    wanted = list(BUNDLE_OUTPUTS) if outputs is None else list(outputs)
    # "components:T1ce" narrows the components to some modalities (all of them are 4 x m full-size volumes)
    comp_mods = [o.split(":", 1)[1] for o in wanted if o.startswith("components:")]
    if comp_mods:
        bad = sorted(set(comp_mods) - set(MODALITIES))
        if bad:
            raise InvalidInput(f"unknown modality in components:{bad[0]}; choose from {list(MODALITIES)}")
        wanted = [o for o in wanted if not o.startswith("components:")] + ["components"]
    comp_mods = comp_mods or list(MODALITIES)
    unknown = sorted(set(wanted) - set(BUNDLE_OUTPUTS))
    if unknown:
        raise InvalidInput(f"unknown bundle outputs {unknown}; choose from {list(BUNDLE_OUTPUTS)} "
                           f"(components:<modality> for one modality's components)")
    image, affine, resampled = load_on_model_grid(model, image_path,  # the bundle lives on the model's grid
                                                series_grids=series_grids)
    shape = image.shape[1:]
    w = BundleWriter(name, version, image_id, affine, shape, modalities=list(MODALITIES))
    if resampled:
        w.manifest["resampled"] = resampled
    interp = None
    xn = normalise(image)
    if any(o in wanted for o in ("probabilities", "components", "reconstruction", "residual", "code_energy",
                                 "sparsity", "preview", "quality")) and hasattr(model, "interpret"):
        with torch.no_grad():
            interp = model.to(device).interpret(xn.to(device), contributions=False)
        interp = {k: v.cpu() for k, v in interp.items()}
        # one whole-volume pass gives every output, so the label is the argmax of the probabilities shown
        label = interp["logits"][0].argmax(0).numpy().astype(np.uint8)
    else:
        label = predict(model, image, device)
    add_label(w, label, image, resampled=resampled,
              mirrored=mirror_label(model.to(device), xn.to(device), affine))
    classes = [CLASSES[c] for c in range(len(CLASSES))]
    # explanation quality (explain/quality.py, issue 16): in the manifest, in the entries it qualifies, as a table
    eq = quality.jsonable(quality.assess(
        xn[0].numpy(), None if interp is None else interp["reconstruction"][0].numpy(), MODALITIES,
        components=None if interp is None else interp["components"][0].numpy(), label=label,
        classes={c: CLASSES[c] for c in range(1, len(CLASSES))}, brain=quality.brain_mask(image),
        parameters=quality.mlcsc_parameter_check(model) if hasattr(model, "learned") else None,
        step_residuals=None if interp is None else interp.get("step_residuals", torch.zeros(0)).tolist(),
        code_energy=None if interp is None else interp["code_energy"][0].numpy()))
    w.manifest["explanation_quality"] = eq
    if interp is not None:
        if "probabilities" in wanted:
            add_probabilities(w, interp["probabilities"][0].numpy())
        if "components" in wanted:
            comps = interp["components"][0].numpy()
            for c, cname in enumerate(classes):
                for i, mod in enumerate(MODALITIES):
                    if mod not in comp_mods:
                        continue
                    w.add_volume(f"component/{cname}/{mod}", comps[c, i], dtype=np.float32,
                                 description=f"morphological component Phi_c^(i) gamma_c, class {cname}, modality {mod} (eq. 2)",
                                 **({"quality": eq["localisation"]["per_class"][cname]} if c else {}))
        if "reconstruction" in wanted:
            for i, mod in enumerate(MODALITIES):
                w.add_volume(f"reconstruction/{mod}", interp["reconstruction"][0, i].numpy(), dtype=np.float32,
                             description="sum over classes of the components (normalised intensity units)",
                             quality=eq["reconstruction"]["per_modality"][mod])
        if "residual" in wanted:
            w.add_volume("residual_energy", interp["residual_energy"][0].numpy(), dtype=np.int16,
                         description="sum_i (x_i - reconstruction_i)^2: how poorly the dictionaries explain each voxel",
                         quality=eq["reconstruction"])
        if "code_energy" in wanted:
            for c, cname in enumerate(classes):
                w.add_volume(f"code_energy/{cname}", interp["code_energy"][0, c].numpy(), dtype=np.int16,
                             description="||gamma_{c,L}||^2 per voxel (deepest sparse code energy: the evidence "
                                         "the class's non-negative read-out sums)",
                             **({"quality": eq["code_localisation"]["per_class"][cname]} if c else {}))
        if "sparsity" in wanted:
            sp = interp["sparsity"].numpy()
            layers = ["gamma_c"] + [f"gamma_c{l}" for l in range(1, sp.shape[0])]
            w.add_table("sparsity", [{"layer": layers[l], **{classes[c]: round(float(sp[l, c]), 6)
                                                          for c in range(sp.shape[1])}} for l in range(sp.shape[0])],
                        description="fraction of non-zero coefficients per layer and class")
    if hasattr(model, "parameter_table"):
        rows = model.parameter_table()
        if "params" in wanted:
            w.add_table("params", rows, description="learned thresholds and step sizes (Table III) with sign check")
        if "params_plot" in wanted:
            w.add_plot("params_plot", _params_plot(rows))
    if "quality" in wanted:
        w.add_table("quality", quality.table_rows(eq), description="explanation quality against the aims of "
                    "issue 16 (status FAIL: the explanation is not faithful on that measure)")
    if "preview" in wanted and interp is not None:
        w.add_plot("preview", preview_png(image, label, interp["components"][0].numpy()))
    served.add_attributions(w, model.to(device), normalise(image).to(device), attribution, model_name="mlcsc")
    return w.write(out_path)
