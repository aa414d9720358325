"""Explanation-quality metrics of decomposing models (issue 16): does the explanation a bundle shows hold?

A decomposition explains an image x (n modalities) by a reconstruction x^ (ML-CSC: sum_c Phi_c gamma_c, SUM:
ED_{alpha=0}(x), what its filter banks alone pass, eq. 15) and, for ML-CSC, per-class components whose sum is x^.
SUM also shows ED_alpha(x), the signal entering its output layer ("Inp. sig. O.L.", seed 003 Fig. 2): by the
paper's account not a reconstruction (the shrinkages push the non-tumour image towards negative values and keep
the tumour), so it is measured as a displayed map (energy in the brain, lattice) and described by what the
shrinkages removed and how tumour-like it is (assess_output_signal), not held to the reconstruction aim.
These functions measure, at every inference, whether an explanation is faithful; `assess_*` gather them with a
`flags` list per metric set naming every aim (AIMS, issue 16) that is missed. A metric set with flags is *not
faithful*: the runners write the sets into the bundle manifest (`explanation_quality`, and `quality` in the
entries they qualify) and as the `quality` table.

The brain mask B is the input's non-zero voxels over channels (any channel != 0): the phantoms are skull-stripped
like BraTS, whose background is exactly 0, and the intensity normalisation leaves those voxels at 0.
Metrics are computed on the float32 outputs of the model, before any int16 storage in the bundle.
Non-finite values (a ratio with nothing to divide by) are written to JSON as the strings "inf" / "nan" (`jsonable`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

#: the aims of issue 16; a metric that misses one adds a flag to its set
AIMS = {
    "relative_error_max": 0.15,       # ||x^ - x|| / ||x|| per modality in the brain
    "energy_in_brain_min": 0.90,      # share of the reconstruction's energy inside the brain
    "localisation_ratio_min": 5.0,    # per tumour class
    "lattice_share_max_vs_image": 2.0,  # lattice share of x^ <= 2 x the image's
    "threshold_min": 0.0,             # every learned threshold lambda >= 0
    "step_norm_max": 1.0,             # mu ||D||^2 <= 1
}


#: how summary() names a metric set in front of its flags
SET_NAMES = {"output_signal": "signal entering the output layer", "code_localisation": "code energy"}


def brain_mask(image: np.ndarray) -> np.ndarray:
    """B = {v : exists i, image_i(v) != 0} for a (C, X, Y, Z) image: bool (X, Y, Z)."""
    return np.any(np.asarray(image) != 0, axis=0)


def relative_error(recon: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """e = ||x^ - x||_B / ||x||_B (norms over the voxels of the mask B; all voxels when None). 0 for x^ = x;
    nan when x is 0 in B."""
    r, x = _masked(recon, mask), _masked(image, mask)
    den = float(np.linalg.norm(x))
    return float(np.linalg.norm(r - x)) / den if den > 0 else math.nan


def best_gain(recon: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """g* = <x^, x>_B / ||x^||_B^2, the least-squares gain minimising ||g x^ - x||_B (0 when x^ = 0 in B)."""
    r, x = _masked(recon, mask), _masked(image, mask)
    den = float(np.dot(r, r))
    return float(np.dot(r, x)) / den if den > 0 else 0.0


def relative_error_after_gain(recon: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """e* = min_g ||g x^ - x||_B / ||x||_B = ||g* x^ - x||_B / ||x||_B = sqrt(1 - rho0^2), rho0 the uncentred
    correlation. Invariant to the scale of x^ (a wrong gain alone does not make it large); in [0, 1]."""
    g = best_gain(recon, image, mask)
    return relative_error(g * np.asarray(recon, dtype=np.float64), image, mask)


def correlation(recon: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson r = cov_B(x^, x) / (sd_B(x^) sd_B(x)) over the voxels of B; nan when either is constant in B."""
    r, x = _masked(recon, mask), _masked(image, mask)
    r, x = r - r.mean(), x - x.mean()
    den = float(np.linalg.norm(r) * np.linalg.norm(x))
    return float(np.dot(r, x)) / den if den > 0 else math.nan


def energy_in_mask(recon: np.ndarray, mask: np.ndarray) -> float:
    """E_B = sum_{v in B} x^(v)^2 / sum_v x^(v)^2 (over every channel of a (C, X, Y, Z) or (X, Y, Z) x^);
    1 when all the reconstruction lies in the brain; nan when x^ = 0."""
    r = np.asarray(recon, dtype=np.float64)
    total = float(np.sum(r * r))
    inside = float(np.sum((r * r)[..., mask])) if r.ndim > mask.ndim else float(np.sum(r[mask] ** 2))
    return inside / total if total > 0 else math.nan


def localisation_ratio(component: np.ndarray, region: np.ndarray, mask: np.ndarray) -> float:
    """rho_c = mean_{v in R_c} a_c(v) / mean_{v in B minus R_c} a_c(v), a_c = |component_c| (summed over the modalities
    of a (n, X, Y, Z) component). R_c is class c's region (within B), B the brain.

    inf when a_c is 0 everywhere else in the brain (and not in R_c); nan when R_c or the rest of B is empty or a_c
    is 0 in all of B."""
    a = np.abs(np.asarray(component))
    if a.ndim == region.ndim + 1:
        a = a.sum(0, dtype=np.float64)
    inside, rest = region & mask, mask & ~region
    if not inside.any() or not rest.any():
        return math.nan
    num, den = float(a[inside].mean()), float(a[rest].mean())
    if den == 0:
        return math.inf if num > 0 else math.nan
    return num / den


def lattice_share(volume: np.ndarray) -> float:
    """Share of spectral energy at the stride-2 lattice frequencies of a 3D volume v (X, Y, Z):

        P(k) = |FFT3(v - mean v)(k)|^2,   Lambda = {k : k_j in N2(N_j) for some axis j},
        share = sum_{k in Lambda} P(k) / sum_k P(k),

    with N2(N) = {N/2} (the Nyquist plane, 0.5 cycles per voxel) for even N and {(N-1)/2, (N+1)/2} (the two
    frequencies nearest to it) for odd N. A stride-2 transposed convolution writes a period-2 pattern, whose energy
    lies on these planes: a checkerboard gives 1, a smooth volume ~0, white noise about the planes' share of all
    frequencies (1 - prod_j (1 - |N2(N_j)|/N_j), 0.045 at 60 x 60 x 39). nan for a constant volume.
    Compare with the image's own share (`image_lattice_share` in the bundle)."""
    v = np.asarray(volume, dtype=np.float64)
    v = v - v.mean()
    P = np.abs(np.fft.rfftn(v)) ** 2
    # rfft keeps the last axis' non-negative frequencies: every bin but 0 (and N/2 for even N) stands for two
    n_last = v.shape[-1]
    weight = np.full(P.shape[-1], 2.0)
    weight[0] = 1.0
    if n_last % 2 == 0:
        weight[-1] = 1.0
    P = P * weight
    total = float(P.sum())
    if total <= 0:
        return math.nan
    on = np.zeros(P.shape, dtype=bool)
    for axis, n in enumerate(v.shape[:-1]):
        idx = [n // 2] if n % 2 == 0 else [(n - 1) // 2, (n + 1) // 2]
        sl: list = [slice(None)] * 3
        sl[axis] = idx
        on[tuple(sl)] = True
    on[..., (n_last - 1) // 2 if n_last % 2 else n_last // 2] = True  # rfft index of N2 (its conjugate is in weight)
    return float(P[on].sum()) / total


def spectral_norm(forward: Callable, adjoint: Callable, x0, iters: int = 50) -> float:
    """||A||_2 by power iteration on A^T A from x0 (a tensor in A's domain): s <- A^T A s / ||A^T A s||, then
    ||A s||. A lower estimate that converges to the norm (exact for the operator on x0's grid)."""
    s = x0 / x0.norm()
    for _ in range(iters):
        s = adjoint(forward(s))
        s = s / s.norm()
    return float(forward(s).norm())


def parameter_check(thresholds: Mapping[str, float], steps: Mapping[str, tuple[float, float]]) -> dict:
    """Sign-and-step check of an unrolled ISTA: thresholds {name: lambda}, steps {name: (mu, ||D||)}.

    ISTA is a proximal gradient method only for lambda >= 0 (S_lambda is a shrinkage) and 0 < mu ||D||^2 <= 1
    (it converges for mu ||D||^2 < 2; <= 1 is the aim). Returns negative_thresholds (names), min_threshold,
    step_norms {name: mu ||D||^2}, max_step_norm and flags."""
    neg = [k for k, v in thresholds.items() if v < AIMS["threshold_min"]]
    step_norms = {k: mu * norm ** 2 for k, (mu, norm) in steps.items()}
    flags = []
    if neg:
        flags.append(f"{len(neg)} of {len(thresholds)} thresholds lambda < 0 ({', '.join(neg)})")
    bad = [k for k, v in step_norms.items() if not 0 < v <= AIMS["step_norm_max"]]
    if bad:
        flags.append(f"{len(bad)} of {len(step_norms)} steps with mu ||D||^2 outside (0, {AIMS['step_norm_max']:g}] "
                     f"(max {max(step_norms.values()):.3g})")
    return {"negative_thresholds": neg, "min_threshold": min(thresholds.values(), default=math.nan),
            "step_norms": step_norms, "max_step_norm": max(step_norms.values(), default=math.nan), "flags": flags}


def mlcsc_parameter_check(model, size: int = 12, iters: int = 30) -> dict:
    """parameter_check of an ML-CSC model (models/mlcsc.py): thresholds lam_min,c (the schedule lam_c(t) is a
    positive multiple of it) and lam_{c,l}; steps mu_c with ||Phi|| the joint synthesis sum_c Phi_c (the merged
    update descends ||sum_c Phi_c g_c - x||^2) and mu_{c,l} with ||D_l^(c)||, the values the iterations use
    (model.learned()) and the norms by power iteration on a `size`^3 code grid (model.operator_norms(); zero-padded
    borders: a slight underestimate of the norm on a whole image)."""
    import torch

    names = [r["class"] for r in model.parameter_table()]
    with torch.no_grad():
        p = {k: v.detach().cpu() for k, v in model.learned().items()}
        norms = model.operator_norms(size, iters)
    thresholds = {f"lam_min[{c}]": float(p["lam_min"][i]) for i, c in enumerate(names)}
    thresholds.update({f"lam_{l + 1}[{c}]": float(p["lam"][l, i])
                       for l in range(p["lam"].shape[0]) for i, c in enumerate(names)})
    steps = {f"mu0[{c}]": (float(p["mu0"][i]), norms["Phi"]) for i, c in enumerate(names)}
    for l, per_class in enumerate(norms["D"]):
        for i, (c, n) in enumerate(zip(names, per_class)):
            steps[f"mu_{l + 1}[{c}]"] = (float(p["mu"][l, i]), n)
    out = parameter_check(thresholds, steps)
    out["operator_norms"] = {"Phi (joint)": norms["Phi"]}
    return out


def shrinkage_activity(sparsity: Sequence[float], layers: Sequence[str], parameters: Sequence[dict]) -> dict:
    """Is a soft-shrinkage network (SUM) shrinking? `sparsity`: the surviving share of coefficients per shrinkage
    layer (`layers` its names); `parameters`: the model's parameter_table rows (layer, channels, negative).
    Returns zeroed_share per layer and overall, negative_thresholds (channels with b < 0 boost instead of
    shrinking) of all channels, and flags for negative thresholds (a shrinkage must have b >= 0)."""
    zeroed = {name: 1.0 - float(v) for name, v in zip(layers, sparsity)}
    return {"zeroed_share": zeroed, "zeroed_share_mean": float(np.mean(list(zeroed.values()))) if zeroed else math.nan,
            **_negative_thresholds([r for r in parameters if r.get("layer") != "alpha"])}


def shrinkage_level(activity: dict, parameters: Sequence[dict], level: str) -> dict:
    """The quality object of SUM's map `shrinkage/<level>` (level "encoder_l" or "decoder_l"): the zeroed share of
    each of the level's shrinkage layers (shrinkage_activity) and its thresholds b < 0, flagged (a shrinkage with
    b < 0 boosts its coefficients: the map then shows no shrinkage there)."""
    layers = {k: v for k, v in activity["zeroed_share"].items() if k.startswith(f"{level}.")}
    signs = _negative_thresholds([r for r in parameters if str(r.get("layer", "")).startswith(f"{level}.")],
                                 f"{level}: ")
    return {"zeroed_share": layers, **signs, "faithful": not signs["flags"]}


def _negative_thresholds(rows: Sequence[dict], where: str = "") -> dict:
    """negative_thresholds and thresholds (channels) of parameter_table rows, and the flag when any b < 0."""
    neg, total = sum(int(r["negative"]) for r in rows), sum(int(r["channels"]) for r in rows)
    flags = [f"{where}{neg} of {total} shrinkage thresholds b < 0 (they amplify instead of shrinking)"] if neg else []
    return {"negative_thresholds": neg, "thresholds": total, "flags": flags}


def assess_reconstruction(recon: np.ndarray, image: np.ndarray, mask: np.ndarray,
                          modalities: Sequence[str]) -> dict:
    """Metrics of a reconstruction x^ (n, X, Y, Z) of the normalised image x (n, X, Y, Z) per modality, in the
    brain B: relative_error, relative_error_after_gain, gain, correlation, energy_in_brain, lattice_share and the
    image's image_lattice_share; flags for every modality that misses an aim."""
    per, flags = {}, []
    for i, mod in enumerate(modalities):
        r, x = recon[i], image[i]
        m: dict = {"relative_error": relative_error(r, x, mask), "relative_error_after_gain": relative_error_after_gain(r, x, mask),
             "gain": best_gain(r, x, mask), "correlation": correlation(r, x, mask),
             "energy_in_brain": energy_in_mask(r, mask), "lattice_share": lattice_share(r),
             "image_lattice_share": lattice_share(x)}
        f = []
        if not m["relative_error"] <= AIMS["relative_error_max"]:
            f.append(f"{mod}: relative error {m['relative_error']:.3g} > {AIMS['relative_error_max']:g}")
        m["flags"] = f + display_flags(mod, m)
        m["faithful"] = not m["flags"]
        per[mod] = m
        flags += m["flags"]
    return {"per_modality": per, "energy_in_brain": energy_in_mask(recon, mask), "flags": flags, "faithful": not flags}


def display_flags(mod: str, m: Mapping) -> list[str]:
    """The aims of any map shown over the image (m: energy_in_brain, lattice_share, image_lattice_share): its energy
    lies in the brain and it carries no more stride-2 lattice than the image."""
    f = []
    if not m["energy_in_brain"] >= AIMS["energy_in_brain_min"]:
        f.append(f"{mod}: energy in brain {m['energy_in_brain']:.3g} < {AIMS['energy_in_brain_min']:g}")
    if not m["lattice_share"] <= AIMS["lattice_share_max_vs_image"] * m["image_lattice_share"]:
        f.append(f"{mod}: lattice share {m['lattice_share']:.3g} > {AIMS['lattice_share_max_vs_image']:g} x "
                 f"the image's {m['image_lattice_share']:.3g}")
    return f


def assess_output_signal(signal: np.ndarray, linear: np.ndarray, image: np.ndarray, tumour: np.ndarray,
                         mask: np.ndarray, modalities: Sequence[str]) -> dict:
    """SUM's ED_alpha(x) (n, X, Y, Z), the signal its output layer reads, per modality in the brain B:

    - energy_in_brain, lattice_share, image_lattice_share with their aims (display_flags): a map drawn over the
      image must not put its energy outside the brain or on the DWT's lattice;
    - removed_by_shrinkage = ||ED_0(x) - ED_alpha(x)||_B / ||ED_0(x)||_B, the share the shrinkages took from what
      the filter banks alone pass (`linear`, ED_{alpha=0}(x)); no aim (0 at alpha = 0);
    - tumour_correlation, image_tumour_correlation: Pearson r of ED_alpha(x), and of the image, with the predicted
      tumour (`tumour`, bool) over B: the paper's reading (seed 003, Fig. 2) is a signal "reminiscent of the area
      delimited by the segmentation mask"; no aim (the output layer is a linear read-out of this signal, so on a
      model that segments it is tumour-like by construction), nan without tumour in the label."""
    per, flags = {}, []
    t = np.asarray(tumour, dtype=np.float64)
    for i, mod in enumerate(modalities):
        s = signal[i]
        m: dict = {"energy_in_brain": energy_in_mask(s, mask), "lattice_share": lattice_share(s),
                   "image_lattice_share": lattice_share(image[i]),
                   "removed_by_shrinkage": relative_error(s, linear[i], mask),
                   "tumour_correlation": correlation(s, t, mask),
                   "image_tumour_correlation": correlation(image[i], t, mask)}
        m["flags"] = display_flags(mod, m)
        m["faithful"] = not m["flags"]
        per[mod] = m
        flags += m["flags"]
    return {"per_modality": per, "flags": flags, "faithful": not flags}


def assess_localisation(components: np.ndarray, label: np.ndarray, mask: np.ndarray,
                        classes: Mapping[int, str]) -> dict:
    """Localisation ratio per class c of `classes` ({index: name}, the tumour classes) of components (m, n, X, Y, Z)
    in the regions R_c = {label == c} of the predicted label, within the brain; flags for ratios < the aim and for
    classes the label does not contain (no region: the ratio is nan)."""
    per, flags = {}, []
    for c, name in classes.items():
        region = label == c
        ratio = localisation_ratio(components[c], region, mask)
        f = []
        if math.isnan(ratio):
            f.append(f"{name}: no localisation ratio (no {name} voxels in the label, or no brain outside them)")
        elif ratio < AIMS["localisation_ratio_min"]:
            f.append(f"{name}: localisation ratio {ratio:.3g} < {AIMS['localisation_ratio_min']:g}")
        per[name] = {"localisation_ratio": ratio, "voxels": int((region & mask).sum()), "flags": f, "faithful": not f}
        flags += f
    return {"per_class": per, "flags": flags, "faithful": not flags}


def assess(image: np.ndarray, recon: np.ndarray | None, modalities: Sequence[str],
           components: np.ndarray | None = None, label: np.ndarray | None = None,
           classes: Mapping[int, str] | None = None, parameters: dict | None = None,
           brain: np.ndarray | None = None, step_residuals: Sequence[float] | None = None,
           shrinkage: dict | None = None, output_signal: dict | None = None,
           code_energy: np.ndarray | None = None) -> dict:
    """The manifest's `explanation_quality`: reconstruction metrics (when recon is given), the localisation of the
    components (when given with the label and classes) and a parameter check (when given), each with flags;
    `step_residuals` (||x^ - x||^2 / ||x||^2 after each unrolled step) is reported as `convergence`, unflagged;
    `faithful` when no set has a flag. `image` is the normalised input (n, X, Y, Z); `brain` the mask (default:
    brain_mask(image)); `output_signal`: SUM's assess_output_signal, kept as the set "output_signal";
    `code_energy` (m, X, Y, Z): ML-CSC's ||gamma_{c,L}||^2 per voxel, the evidence each class's read-out sums, with
    the localisation ratio of each tumour class in its predicted region (set "code_localisation", same aim)."""
    brain = brain_mask(image) if brain is None else brain
    out: dict = {"brain_mask": "voxels where any input channel is non-zero (skull-stripped input, as BraTS)",
                 "brain_voxels": int(brain.sum()), "aims": dict(AIMS)}
    if recon is not None:
        out["reconstruction"] = assess_reconstruction(recon, image, brain, modalities)
    if components is not None and label is not None and classes:
        out["localisation"] = assess_localisation(components, label, brain, classes)
    if code_energy is not None and label is not None and classes:
        out["code_localisation"] = assess_localisation(code_energy, label, brain, classes)
    if parameters is not None:
        out["parameters"] = parameters
    if shrinkage is not None:
        out["shrinkage"] = shrinkage
    if output_signal is not None:
        out["output_signal"] = output_signal
    if step_residuals is not None and len(step_residuals):
        r = [float(v) for v in step_residuals]
        out["convergence"] = {"residual_per_step": r,
                              "last_step_change": (r[-2] - r[-1]) / r[-2] if len(r) > 1 and r[-2] > 0 else math.nan}
    out["faithful"] = all(not v["flags"] for v in out.values() if isinstance(v, dict) and "flags" in v)
    return out


def table_rows(quality: dict) -> list[dict]:
    """The `quality` table of a bundle: one row per measured value (set, scope, metric, value, aim, status)."""
    rows = []
    aims = quality.get("aims", AIMS)
    display = (("energy_in_brain", f">= {aims['energy_in_brain_min']:g}"),
               ("lattice_share", f"<= {aims['lattice_share_max_vs_image']:g} x image"), ("image_lattice_share", ""))
    for name, keys in (("reconstruction", (("relative_error", f"<= {aims['relative_error_max']:g}"),
                                           ("relative_error_after_gain", ""), ("gain", ""), ("correlation", ""),
                                           *display)),
                       ("output_signal", (*display, ("removed_by_shrinkage", ""), ("tumour_correlation", ""),
                                          ("image_tumour_correlation", "")))):
        for mod, m in quality.get(name, {}).get("per_modality", {}).items():
            for key, aim in keys:
                failed = any(f.startswith(f"{mod}: {key.replace('_', ' ')}") for f in m["flags"])
                rows.append({"set": name, "scope": mod, "metric": key, "value": _fmt(m[key]), "aim": aim,
                             "status": ("FAIL" if failed else "ok") if aim else ""})
    for set_name in ("localisation", "code_localisation"):
        for name, m in quality.get(set_name, {}).get("per_class", {}).items():
            rows.append({"set": set_name, "scope": name, "metric": "localisation_ratio",
                         "value": _fmt(m["localisation_ratio"]), "aim": f">= {aims['localisation_ratio_min']:g}",
                         "status": "FAIL" if m["flags"] else "ok"})
    p = quality.get("parameters")
    if p:
        rows.append({"set": "parameters", "scope": "all", "metric": "min_threshold", "value": _fmt(p["min_threshold"]),
                     "aim": f">= {aims['threshold_min']:g}", "status": "FAIL" if p["negative_thresholds"] else "ok"})
        rows.append({"set": "parameters", "scope": "all", "metric": "max_step_norm", "value": _fmt(p["max_step_norm"]),
                     "aim": f"<= {aims['step_norm_max']:g}",
                     "status": "FAIL" if any("mu ||D||" in f for f in p["flags"]) else "ok"})
    sh = quality.get("shrinkage")
    if sh:
        rows.append({"set": "shrinkage", "scope": "all", "metric": "zeroed_share_mean",
                     "value": _fmt(sh["zeroed_share_mean"]), "aim": "", "status": ""})
        rows.append({"set": "shrinkage", "scope": "all", "metric": "negative_thresholds",
                     "value": f"{sh['negative_thresholds']} of {sh['thresholds']}", "aim": "0",
                     "status": "FAIL" if sh["flags"] else "ok"})
    for i, v in enumerate(quality.get("convergence", {}).get("residual_per_step", []), start=1):
        rows.append({"set": "convergence", "scope": f"step {i}", "metric": "relative_residual_energy",
                     "value": _fmt(v), "aim": "", "status": ""})
    rows.append({"set": "all", "scope": "", "metric": "faithful", "value": str(quality.get("faithful")), "aim": "True",
                 "status": "ok" if quality.get("faithful") else "FAIL: not faithful"})
    return rows


def summary(quality: dict) -> list[str]:
    """Short human-readable lines of an `explanation_quality` (what the demo prints)."""
    if not quality:
        return ["not measured (a bundle written before explanation-quality metrics)"]
    lines = []
    rec = quality.get("reconstruction", {}).get("per_modality", {})
    if rec:
        of = quality["reconstruction"].get("of")
        lines.append(f"reconstruction ({of + ', ' if of else ''}brain): " + "; ".join(
            f"{mod} err {_fmt(m['relative_error'])} (after gain {_fmt(m['relative_error_after_gain'])}), "
            f"r {_fmt(m['correlation'])}, in brain {_fmt(m['energy_in_brain'])}, "
            f"lattice {_fmt(m['lattice_share'])} vs image {_fmt(m['image_lattice_share'])}" for mod, m in rec.items()))
    sig = quality.get("output_signal", {}).get("per_modality", {})
    if sig:
        lines.append("signal entering the output layer (brain): " + "; ".join(
            f"{mod} removed by the shrinkages {_fmt(m['removed_by_shrinkage'])}, r with the tumour "
            f"{_fmt(m['tumour_correlation'])} (image {_fmt(m['image_tumour_correlation'])}), in brain "
            f"{_fmt(m['energy_in_brain'])}, lattice {_fmt(m['lattice_share'])} vs image {_fmt(m['image_lattice_share'])}"
            for mod, m in sig.items()))
    for set_name, what in (("localisation", "localisation ratio"), ("code_localisation", "code energy localisation")):
        loc = quality.get(set_name, {}).get("per_class", {})
        if loc:
            lines.append(f"{what}: " + ", ".join(f"{c} {_fmt(m['localisation_ratio'])}" for c, m in loc.items()))
    p = quality.get("parameters")
    if p:
        lines.append(f"parameters: min lambda {_fmt(p['min_threshold'])} ({len(p['negative_thresholds'])} negative), "
                     f"max mu||D||^2 {_fmt(p['max_step_norm'])}")
    flags = [f"{SET_NAMES.get(k, k)}: {f}" for k, v in quality.items() if isinstance(v, dict)
             for f in v.get("flags", [])]
    lines.append(("faithful" if quality.get("faithful") else f"NOT FAITHFUL: {len(flags)} aims missed: ")
                 + "; ".join(flags[:6]) + (" ..." if len(flags) > 6 else ""))
    return lines


def jsonable(obj):
    """obj with floats rounded to 6 significant digits and non-finite ones as "inf" / "-inf" / "nan" (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return str(v) if not math.isfinite(v) else float(f"{v:.6g}")
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(v) -> str:
    v = float(v)
    return str(v) if not math.isfinite(v) else f"{v:.4g}"


def _masked(a, mask) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a[mask] if mask is not None else a).ravel()
