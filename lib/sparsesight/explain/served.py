"""Attribution maps as served outputs: the infer options, the bundle outputs and the plain-NIfTI map.

Infer options (INFER_OPTIONS, declared by each model's config in apps/sparsesight/configs/<model>.py):
  attribution           method(s), comma-separated: gradient, smoothgrad, ig, guided_ig, blur_ig, xrai ("" = none)
  attribution_target    class name(s) or index(es), or BraTS region(s) WT / TC / ET (a set of classes: the score is
                        log sum_{c in S} exp z_c), comma-separated (default "enhancing")
  attribution_steps     path points of the path methods / SmoothGrad samples (default 16)
  attribution_baseline  zero (default, the seed's choice), min, max, blur, or a number
  attribution_region    predicted (default: the voxels labelled with the target), all, or a voxel "i,j,k" of the
                        grid the model saw (the bundle's)
  attribution_point     a point "x,y,z" in world millimetres (the image's RAS, as a viewer's cursor gives it): the
                        region is the voxel of the bundle's grid that holds it, whatever grid the image came on
  attribution_nifti     true: the plain NIfTI answer is the (first) map instead of the label, for stock clients
  attribution_sanity    true: also the sanity checks of every map (Adebayo et al. 2018): model randomisation (the
                        same method on a copy of the model with every layer re-initialised) and data randomisation
                        (the same method on the shipped null model: the same architecture and recipe trained on
                        permuted labels, explain/null_models.py, when one matches the served configuration): one
                        or two more maps each

Each map becomes the bundle output "attribution/<method>/<class>" (kind scalar, the map summed over modalities,
float32) whose manifest entry carries method, target, steps, baseline, region, modality_share,
"faithfulness": {"deletion_auc", "insertion_auc"} (faithfulness.deletion_insertion) and "quality"
(faithfulness.assess: the gains over a random ranking and over the image's Sobel edge map measured on the same
image and region, `faithful` false and a flag when the map ranks voxels no better than chance). The bundle also
has the table "attribution/quality" (one row per map and figure, with aim and status) and the plot
"attribution/faithfulness" with every map's deletion and insertion curves beside the references'.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .. import CLASSES, MODALITIES, REGIONS
from ..errors import InvalidInput
from ..options import check_known, flag
from .attribution import SHORT, attribute, fixed_region, method_name, plain
from .faithfulness import (
    FAITHFUL_MIN_GAIN,
    SANITY_MAX_SPEARMAN,
    SHARED,
    assess,
    curves_png,
    data_randomisation,
    deletion_insertion,
    model_randomisation,
    passes,
    reference_maps,
)
from .gradients import BASELINES

INFER_OPTIONS = {"attribution": "", "attribution_target": "enhancing", "attribution_steps": 16,
                 "attribution_baseline": "zero", "attribution_region": "predicted", "attribution_point": None,
                 "attribution_nifti": False, "attribution_sanity": False}
#: points of the deletion / insertion curves of a served map
FAITHFULNESS_STEPS = 10


def _list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v not in ("", None)]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _class_index(value, classes: dict) -> int | tuple[int, ...]:
    """A class index, or the class set of a BraTS region (when the model has the BraTS classes)."""
    names = {v.lower(): k for k, v in classes.items()}
    s = str(value).strip().lower()
    if s in names:
        return names[s]
    if s.lstrip("-").isdigit() and int(s) in classes:
        return int(s)
    regions = {r.lower(): c for r, c in REGIONS.items() if set(c) <= set(classes)}
    if s in regions:
        return regions[s]
    raise InvalidInput(f"unknown attribution_target {value!r}; choose a class name {list(classes.values())}, "
                       f"index {list(classes)}" + (f" or region {list(REGIONS)}" if regions else ""))


def target_name(target, classes: dict) -> str:
    """A class's name, or a region's (WT / TC / ET) for a class set."""
    if isinstance(target, tuple):
        return next((r for r, c in REGIONS.items() if c == target), "+".join(classes[c] for c in target))
    return classes[target]


def parse_options(options: dict, classes: dict | None = None) -> dict | None:
    """The attribution request in `options` (INFER_OPTIONS keys), checked: None when no method is asked for.
    InvalidInput names the bad option (an unknown key too) and what is allowed."""
    check_known(options, INFER_OPTIONS, "infer options")
    classes = classes or CLASSES
    methods = [method_name(m) for m in _list(options.get("attribution"))]
    if not methods:
        if flag(options.get("attribution_nifti", False)):
            raise InvalidInput("attribution_nifti asks for a map: name the method in 'attribution', e.g. \"ig\"")
        return None
    targets = [_class_index(t, classes) for t in _list(options.get("attribution_target", "enhancing"))]
    if not targets:
        raise InvalidInput("attribution_target is empty; name a class, e.g. \"enhancing\"")
    steps = options.get("attribution_steps", INFER_OPTIONS["attribution_steps"])
    try:
        steps_i = int(steps)
    except (TypeError, ValueError):
        steps_i = None
    if steps_i is None or steps_i != float(steps) or not 1 <= steps_i <= 512:
        raise InvalidInput(f"attribution_steps must be an integer in [1, 512]; got {steps!r}")
    baseline = options.get("attribution_baseline", "zero")
    if str(baseline) not in BASELINES:
        try:
            baseline = float(baseline)
        except (TypeError, ValueError):
            raise InvalidInput(f"unknown attribution_baseline {baseline!r}; choose from {list(BASELINES)} "
                               f"or a number") from None
    region = options.get("attribution_region", "predicted")
    if isinstance(region, str) and region not in ("predicted", "all"):
        try:
            region = tuple(int(v) for v in region.split(","))
        except ValueError:
            raise InvalidInput(f"attribution_region must be 'predicted', 'all' or a voxel 'i,j,k'; "
                               f"got {region!r}") from None
    elif isinstance(region, list):
        region = tuple(int(v) for v in region)
    point = parse_point(options.get("attribution_point"))
    if point is not None and region != "predicted":
        raise InvalidInput("give attribution_point or attribution_region, not both")
    return {"methods": methods, "targets": targets, "steps": steps_i, "baseline": baseline, "region": region,
            "point": point,
            "nifti": flag(options.get("attribution_nifti", False)),
            "sanity": flag(options.get("attribution_sanity", False))}


def voxel_map(attr: torch.Tensor, method: str) -> np.ndarray:
    """(C, *spatial) map -> (*spatial): summed over modalities (XRAI's map is one value per region already)."""
    a = attr[0] if method == "xrai" else attr.sum(0)
    return a.detach().cpu().numpy().astype(np.float32)


def _method_kw(req: dict, method: str) -> dict:
    kw = {"steps": req["steps"], "baseline": req["baseline"]}
    if method == "smoothgrad":
        kw["samples"] = req["steps"]
    return kw


def compute(model, x: torch.Tensor, req: dict, method: str, target, progress: bool = True) -> torch.Tensor:
    """One map (C, *spatial) of the batched input x (1, C, *spatial) as `req` (parse_options) asks."""
    return attribute(model, x, method, target, progress=progress, spatial_dims=x.ndim - 2, region=req["region"],
                     **_method_kw(req, method))[0]


def _null_for(model, model_name: str | None) -> tuple:
    """(a private copy of the null model or None, what the manifest says about it) for the data randomisation;
    a SUM null model runs at the served model's alpha."""
    from . import null_models

    if model_name is None:
        return None, {"version": None, "note": "no model name given: no data-randomisation check"}
    null, info = null_models.find(model_name, model)
    if null is not None:
        null = copy.deepcopy(null)  # requests run in parallel; the copy's alpha and autograd state are its own
        alpha = getattr(null, "alpha", None)
        if isinstance(alpha, torch.Tensor) and isinstance(getattr(model, "alpha", None), torch.Tensor):
            alpha.copy_(model.alpha)
    return null, info


def _rho(v) -> str:
    return "undefined (a constant map)" if v is None else f"{v:.2f}"


def _record_check(q: dict, key: str, sane_key: str, result: dict, check: str, against: str) -> None:
    """A sanity check's figures and verdicts in a map's quality object q (the map as shown: `sane_key`; its
    magnitude: magnitude_`sane_key`), and a flag for each that fails."""
    q[f"{key}_spearman"], q[f"{key}_spearman_abs"] = result["spearman"], result["spearman_abs"]
    q[sane_key], q[f"magnitude_{sane_key}"] = result["sane"], result["magnitude_sane"]
    for k, v in result["follows"].items():  # model-free: the same for every check of this map
        if v is not None:
            q[k] = v
    f, g = result["follows"], result["other_follows"]
    shared = {verdict: [(key, words) for key, v, name, words in SHARED if v == verdict and name in result["shared"]]
              for verdict in ("sane", "magnitude_sane")}
    if not result["sane"]:
        q["flags"].append(f"fails the {check}: Spearman {_rho(result['spearman'])} (aim |rho| <= "
                          f"{SANITY_MAX_SPEARMAN:g}) with the map of {against}"
                          + "".join(f"; both maps {words} (Spearman with it {_rho(f[key])} and {_rho(g[key])}): "
                                    f"what they share is the input" for key, words in shared["sane"]))
    elif not result["magnitude_sane"]:
        q["flags"].append(f"its magnitude fails the {check} (Spearman of |map| {_rho(result['spearman_abs'])} > "
                          f"{SANITY_MAX_SPEARMAN:g}): the strength of the map is much the same for {against}"
                          + "".join(f" (both {words}: Spearman {_rho(f[key])} and {_rho(g[key])})"
                                    for key, words in shared["magnitude_sane"])
                          + f"; its sign (Spearman {_rho(result['spearman'])}) is what differs")


def parse_point(value) -> tuple[float, float, float] | None:
    """attribution_point as three finite millimetre coordinates (None when not given), or InvalidInput."""
    if value is None or value == "":
        return None
    try:
        xyz = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else str(value).split(",")))
    except (TypeError, ValueError):
        xyz = ()
    if len(xyz) != 3 or not all(np.isfinite(xyz)):
        raise InvalidInput(f"attribution_point must be three finite coordinates 'x,y,z' in mm; got {value!r}")
    return xyz  # type: ignore[return-value]


def point_voxel(point, affine: np.ndarray, shape) -> tuple[int, ...]:
    """The voxel (i, j, k) of the grid (affine, shape) whose centre is nearest the world point, or InvalidInput
    when the point lies outside that grid."""
    ijk = np.linalg.solve(np.asarray(affine, dtype=np.float64), np.r_[np.asarray(point, dtype=np.float64), 1.0])[:3]
    vox = tuple(int(v) for v in np.rint(ijk))
    if not all(0 <= v < s for v, s in zip(vox, shape)):
        raise InvalidInput(f"attribution_point {list(point)} mm lies outside the image (it falls at voxel "
                           f"{[round(float(v), 1) for v in ijk]} of a {list(shape)} grid)")
    return vox


def placed(req: dict, affine: np.ndarray | None, shape) -> dict:
    """`req` (parse_options) whose attribution_point, when given, is its region: the voxel of the grid (affine,
    shape) that holds it (point_voxel); unchanged without a point."""
    if req.get("point") is None:
        return req
    if affine is None:
        raise InvalidInput("attribution_point needs the image's grid; give attribution_region 'i,j,k' instead")
    return {**req, "region": point_voxel(req["point"], affine, shape)}


def add_attributions(writer, model, x: torch.Tensor, options: dict | None, classes: dict | None = None,
                     progress: bool = True, model_name: str | None = None) -> list[dict]:
    """Add the requested maps (with their faithfulness) to a BundleWriter; x is the normalised (1, C, *spatial)
    input the model saw; options are the infer options or parse_options' result (checked before the bundle's
    other work). `model_name`: the served model's name, to find its null model for the data-randomisation check.
    Returns the manifest entries added ([] when no attribution was asked for)."""
    classes = classes or CLASSES
    req = options if options is None or "methods" in options else parse_options(options, classes)
    if req is None:
        return []
    x = plain(x)
    req = placed(req, writer.affine, tuple(x.shape[2:]))  # a point onto the grid the model saw (the bundle's)
    null = None
    if req.get("sanity"):
        null, info = _null_for(model, model_name)
        writer.manifest["data_randomisation"] = info
    entries, curves = [], {}
    mods = list(MODALITIES) if x.shape[1] == len(MODALITIES) else [f"channel_{i}" for i in range(x.shape[1])]
    references = reference_maps(x)
    rows: list[dict] = []
    for target in req["targets"]:
        cname = target_name(target, classes)
        # the region once (a forward pass of the whole image): every map, curve and check of this target uses it
        roi, region_desc = fixed_region(model.eval(), x, target, req["region"])
        if req.get("point") is not None:
            region_desc = f"point {[round(v, 2) for v in req['point']]} mm ({region_desc})"
        treq = {**req, "region": roi}
        refs = {k: deletion_insertion(model, x, m, target, region=roi, steps=FAITHFULNESS_STEPS)
                for k, m in references.items()}
        curves.update({f"{k} ranking/{cname}": r for k, r in refs.items()})
        for method in req["methods"]:
            attr = compute(model, x, treq, method, target, progress)
            faith = deletion_insertion(model, x, attr, target, region=roi, steps=FAITHFULNESS_STEPS)
            q = assess(faith, refs)
            if req.get("sanity"):
                kw = _method_kw(req, method)
                _record_check(q, "model_randomisation", "sane",
                              model_randomisation(model, x, attr, method, target, roi, **kw),
                              "model-randomisation sanity check", "a randomly initialised model")
                if null is not None:
                    _record_check(q, "data_randomisation", "data_sane",
                                  data_randomisation(model, null, x, attr, method, target, roi, **kw),
                                  "data-randomisation check", "the same model trained on permuted labels")
            rows += quality_rows(f"{SHORT[method]}/{cname}", q)
            per_mod = attr.abs().flatten(1).sum(1)
            share = (per_mod / per_mod.sum().clamp_min(1e-30)).tolist()
            entries.append(writer.add_volume(
                f"attribution/{SHORT[method]}/{cname}", voxel_map(attr, method),
                method=method, target=cname, target_index=target, steps=req["steps"],
                baseline=req["baseline"] if method in ("integrated_gradients", "guided_ig") else
                {"xrai": "zero", "blur_ig": "blurred input", "smoothgrad": "none (noise)",
                 "gradient": "none"}[method],
                region=region_desc,
                faithfulness={"deletion_auc": round(faith["deletion_auc"], 6),
                              "insertion_auc": round(faith["insertion_auc"], 6)},
                quality={k: round(v, 6) if isinstance(v, float) else v for k, v in q.items()},
                modality_share={m: round(s, 6) for m, s in zip(mods, share)},
                colormap="diverging", description=f"{method} attribution of class {cname} summed over modalities"))
            curves[f"{SHORT[method]}/{cname}"] = faith
    writer.add_table("attribution/quality", rows, description="faithfulness of every attribution map: deletion / "
                     "insertion AUC and the gains over a random ranking and the Sobel edge map (> 1: better)")
    writer.add_plot("attribution/faithfulness", curves_png(curves, "deletion and insertion of the served maps"),
                    description="deletion / insertion curves (Petsiuk et al. 2018) of every attribution map and of "
                                "the random and Sobel rankings")
    return entries


def quality_rows(scope: str, q: dict) -> list[dict]:
    """Rows (set, scope, metric, value, aim, status) of one map's quality object, as explain.quality.table_rows."""
    above = {"deletion_gain_vs_random": FAITHFUL_MIN_GAIN, "deletion_gain_vs_sobel": 1.0}
    below = {f"{c}_randomisation_spearman{m}": SANITY_MAX_SPEARMAN for c in ("model", "data") for m in ("", "_abs")}
    rows = []
    for key, v in q.items():
        if key == "flags":
            continue
        if v is None:  # an undefined Spearman (a constant map)
            rows.append({"set": "attribution", "scope": scope, "metric": key, "value": "undefined",
                         "aim": f"|rho| <= {below.get(key, SANITY_MAX_SPEARMAN):g}", "status": "FAIL"})
            continue
        if isinstance(v, bool):  # faithful, sane, magnitude_sane, data_sane, magnitude_data_sane
            rows.append({"set": "attribution", "scope": scope, "metric": key, "value": str(v), "aim": "True",
                         "status": "ok" if v else "FAIL"})
            continue
        aim, ok = (f"> {above[key]:g}", v > above[key]) if key in above else \
            (f"|rho| <= {below[key]:g}", passes(v)) if key in below else ("", None)
        rows.append({"set": "attribution", "scope": scope, "metric": key, "value": f"{v:.4g}", "aim": aim,
                     "status": "" if ok is None else ("ok" if ok else "FAIL")})
    return rows


def nifti_map(model, x: torch.Tensor, options: dict, classes: dict | None = None,
              progress: bool = True, affine: np.ndarray | None = None) -> np.ndarray | None:
    """The first requested map (*spatial) when attribution_nifti is set; None otherwise (answer the label).
    `affine`: of x's grid, where an attribution_point is placed."""
    req = parse_options(options, classes or CLASSES)
    if req is None or not req["nifti"]:
        return None
    req = placed(req, affine, tuple(x.shape[2:]))
    method, target = req["methods"][0], req["targets"][0]
    return voxel_map(compute(model, plain(x), req, method, target, progress), method)
