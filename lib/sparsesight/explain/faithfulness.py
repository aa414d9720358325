"""Faithfulness of attribution maps: deletion and insertion AUC, and the model- and data-randomisation checks.

Deletion / insertion (Petsiuk et al. 2018, RISE, Sec. 4.1): voxels are ranked by the map (summed over channels,
largest first). Deletion replaces the top fraction f of the voxels by the baseline and records the score p(f);
insertion starts from the baseline and puts the top fraction back. AUC = int_0^1 p(f) df (trapezoid over
`steps` + 1 fractions). The score is the mean softmax probability of the target class over the fixed target
region (the region of the explained score, computed once at x). A faithful map has a low deletion AUC and a high
insertion AUC. Baselines: zero for deletion (the normalised mean), a Gaussian blur of x for insertion (RISE).

Model randomisation (Adebayo et al. 2018, Sec. 3.1, cascading): re-initialise the layers from the output towards
the input, one more each time, recompute the map and report its similarity to the map of the trained model
(Spearman rank correlation of the map as shown, summed over channels, and of its magnitude; SSIM of the
magnitude). A map that depends on what the model learned loses its similarity as layers are randomised. Layers are
re-initialised from the model's own random initialisation (random_twin).

Data randomisation (Adebayo et al. 2018, Sec. 3.2): the same comparison against a model of the same architecture
trained with the same recipe on permuted labels (data_randomisation).

What a map follows besides the model (`follows`): two model-free rankings that a map and the other model's map
can share, which is why a check fails when it does. The magnitude of any map of a region's score falls off with
the distance to that region (the receptive fields of its voxels; `abs_vs_region_distance`), and a map that
multiplies by the input (IG and its variants: x * gradient) carries the image (`vs_image`, `abs_vs_image`).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidInput
from ..preview import png_bytes, pyplot
from .attribution import attribute, fixed_region, plain, region_mask, target_classes
from .gradients import gaussian_blur, make_baseline


def auc(p) -> float:
    """int_0^1 p(f) df by the trapezoid rule on equally spaced fractions f_k = k / (len(p) - 1)."""
    p = np.asarray(p, dtype=np.float64)
    return float(np.trapezoid(p, dx=1.0 / (len(p) - 1))) if hasattr(np, "trapezoid") else \
        float(np.trapz(p, dx=1.0 / (len(p) - 1)))


def class_probability(model: nn.Module, x: torch.Tensor, target, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean softmax probability of class `target` (of the class set: summed) over the region `mask` (every voxel
    when None), per batch row."""
    z = model(x)
    p = torch.softmax(z, 1)[:, list(target_classes(target))].sum(1)
    if p.ndim == 1:
        return p
    if mask is None:
        return p.flatten(1).mean(1)
    return (p * mask).flatten(1).sum(1) / mask.sum()


def voxel_order(attr: torch.Tensor) -> torch.Tensor:
    """Rank of every voxel (0 = most important) by the channel-summed map (C, *spatial); ties keep voxel order."""
    s = attr.sum(0)  # (C, *spatial) -> (*spatial)
    order = torch.argsort(-s.flatten().double(), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank.view(s.shape)


@torch.no_grad()
def deletion_insertion(model: nn.Module, x, attr, target, region="predicted", steps: int = 16,
                       deletion_baseline="zero", insertion_baseline="blur", blur_sigma: float = 5.0,
                       batch: int | None = None, progress: bool = False) -> dict:
    """Deletion and insertion curves and AUCs of map `attr` (x's shape) for `model` at x: (C, *spatial) or
    (1, C, *spatial) when its first axis is 1 and it has 4+ axes (as attribute() reads it)."""
    x = plain(x)
    xb = x if x.ndim >= 4 and x.shape[0] == 1 else x.unsqueeze(0)  # (1, C, *spatial), as attribute() reads it
    a = plain(attr).to(xb.device, xb.dtype)
    a = a[0] if a.ndim == xb.ndim else a
    if tuple(a.shape) != tuple(xb.shape[1:]):
        raise InvalidInput(f"map shape {list(a.shape)} differs from the input's {list(xb.shape[1:])}")
    if not (isinstance(steps, (int, np.integer)) and steps >= 2):
        raise InvalidInput(f"steps must be an integer >= 2; got {steps!r}")
    model.eval()
    mask, _ = region_mask(model, xb, target, region)
    rank = voxel_order(a).to(xb.device)
    n = rank.numel()
    fractions = np.linspace(0, 1, steps + 1)
    counts = [int(round(f * n)) for f in fractions]
    bl = {"deletion": make_baseline(xb, deletion_baseline),
          "insertion": gaussian_blur(xb, blur_sigma) if insertion_baseline == "blur"
          else make_baseline(xb, insertion_baseline)}
    chunk = batch or max(1, 2 ** 24 // xb[0].numel())
    curves = {}
    with tqdm(total=2 * len(counts), desc="deletion/insertion", disable=not progress, leave=False) as bar:
        for kind in ("deletion", "insertion"):
            src, dst = (xb, bl[kind]) if kind == "deletion" else (bl[kind], xb)
            scores = []
            for s in range(0, len(counts), chunk):
                ks = counts[s:s + chunk]
                # top-k voxels (every channel) come from dst, the rest from src
                sel = torch.stack([(rank < k) for k in ks]).unsqueeze(1)
                pts = torch.where(sel, dst, src)
                scores += class_probability(model, pts, target, mask).tolist()
                bar.update(len(ks))
            curves[kind] = scores
    return {"fractions": fractions.tolist(), "deletion_curve": curves["deletion"],
            "insertion_curve": curves["insertion"], "deletion_auc": auc(curves["deletion"]),
            "insertion_auc": auc(curves["insertion"]), "steps": int(steps)}


# ----------------------------------------------------------------------------------------------- against references
#: a map whose deletion gain over the random ranking is at most this is "not faithful" (ranks no better than chance)
FAITHFUL_MIN_GAIN = 1.0


def reference_maps(x, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rankings every map is measured against, shaped like x (C, *spatial) or (1, C, *spatial): 'random'
    (uniform noise from a seeded generator) and 'sobel' (edge strength: the Sobel gradient magnitude of each
    channel, a model-free map that an attribution should beat to be worth showing)."""
    from scipy import ndimage

    x = plain(x)
    xc = x[0] if x.ndim >= 4 and x.shape[0] == 1 else x  # as deletion_insertion reads x
    arr = xc.detach().cpu().double().numpy()
    edges = np.stack([ndimage.generic_gradient_magnitude(c, ndimage.sobel) for c in arr])
    gen = torch.Generator().manual_seed(seed)
    return {"random": torch.rand(xc.shape, generator=gen, dtype=torch.float64).to(xc),
            "sobel": torch.from_numpy(edges).to(xc)}


def gains(result: dict, reference: dict) -> dict:
    """Deletion gain = reference deletion AUC / the map's (a faithful map deletes the score faster: lower AUC);
    insertion gain = the map's insertion AUC / the reference's. > 1: better than the reference."""
    return {"deletion_gain": reference["deletion_auc"] / max(result["deletion_auc"], 1e-12),
            "insertion_gain": result["insertion_auc"] / max(reference["insertion_auc"], 1e-12)}


def assess(result: dict, references: dict[str, dict]) -> dict:
    """The quality object of one map (bundle.py's shape): its deletion / insertion AUC, its gains over each
    reference (deletion_insertion results of reference_maps), `faithful` (deletion gain over random
    > FAITHFUL_MIN_GAIN) and `flags` naming what it misses."""
    q: dict = {"deletion_auc": result["deletion_auc"], "insertion_auc": result["insertion_auc"]}
    flags = []
    for name, ref in references.items():
        g = gains(result, ref)
        q.update({f"deletion_gain_vs_{name}": g["deletion_gain"], f"insertion_gain_vs_{name}": g["insertion_gain"]})
    if "random" in references:
        q["faithful"] = bool(q["deletion_gain_vs_random"] > FAITHFUL_MIN_GAIN)
        if not q["faithful"]:
            flags.append(f"not faithful: deletion gain {q['deletion_gain_vs_random']:.2f}x random "
                         f"(<= {FAITHFUL_MIN_GAIN:g}x: it ranks voxels no better than chance)")
    if "sobel" in references and q["deletion_gain_vs_sobel"] <= 1.0:
        flags.append(f"deletion gain {q['deletion_gain_vs_sobel']:.2f}x the image's edge map (Sobel): "
                     f"no better than a model-free map")
    q["flags"] = flags
    return q


# ----------------------------------------------------------------------------------------------- randomisation
def parameterised_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters, from the output end to the input end (reverse registration order);
    the root's own parameters (e.g. learned thresholds) come last as '(root)'."""
    mods = [(name or "(root)", m) for name, m in model.named_modules() if any(True for _ in m.parameters(False))]
    root = [t for t in mods if t[0] == "(root)"]
    return [t for t in reversed(mods) if t[0] != "(root)"] + root


def random_twin(model: nn.Module, seed: int = 0) -> nn.Module | None:
    """A freshly initialised model of `model`'s class and configuration (seeded), the distribution a layer is
    re-initialised from (Adebayo et al. 2018: "re-initialize ... to random weights" of the initialisation);
    a structured start (SUM's near-identity filter banks, config init="identity") becomes the model's random
    initialisation. None when the model cannot be rebuilt from a `config`."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, dict):
        return None
    cfg = {**cfg, "init": "random"} if cfg.get("init") == "identity" else dict(cfg)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            twin = type(model)(**cfg)
    except (TypeError, ValueError):
        return None
    return twin.to(next(model.parameters()).device).eval()


@torch.no_grad()
def reinitialise(module: nn.Module, generator: torch.Generator, twin: nn.Module | None = None,
                 buffers: bool = True):
    """Fresh random weights. With `twin` (the same module of random_twin's model): its parameters, and with
    `buffers` its buffers too (a dictionary's power-iteration probe goes with its kernel). Else the module's
    reset_parameters when it has one, else Gaussian values with each parameter's mean and standard deviation."""
    if twin is not None:
        state = [*twin.named_parameters(recurse=False), *(twin.named_buffers(recurse=False) if buffers else ())]
        for name, t in state:
            getattr(module, name).copy_(t)
        return
    if callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()  # type: ignore[operator]
        return
    for p in module.parameters(recurse=False):
        std = float(p.std()) if p.numel() > 1 else float(p.abs().mean())
        p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * (std or 1.0) + p.mean())


def randomised_layers(model: nn.Module, seed: int = 0):
    """(copy, [(name, re-initialise the copy's layer)]) from the output end: the copy of `model` whose layers the
    callables re-initialise one by one (from random_twin's model when it can be built, else reinitialise's rules)."""
    rand = copy.deepcopy(model)
    twin = random_twin(model, seed)
    twin_mods = dict(twin.named_modules()) if twin is not None else {}
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for name, mod in parameterised_modules(rand):
        t = twin_mods.get("" if name == "(root)" else name)
        # the root's buffers are the model's settings (SUM's alpha), not weights: kept
        steps.append((name, lambda mod=mod, t=t, b=name != "(root)": reinitialise(mod, gen, t, b)))
    return rand, steps


def fully_randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with every parameterised layer re-initialised (the last step of randomised_layers)."""
    rand, layers = randomised_layers(model, seed)
    for _, randomise in layers:
        randomise()
    return rand


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation; None when either ranking is undefined (a constant map ranks nothing)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a.ravel(), b.ravel())[0])


def similarity(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Similarity of two maps (C, *spatial) as a bundle shows them, summed over channels (served.voxel_map; the
    viewers draw signed maps with a diverging colour map): `spearman` of the maps, `spearman_abs` of their
    magnitudes, `ssim_abs` of the magnitudes scaled to [0, 1]. A Spearman is None when a map is constant."""
    from skimage.metrics import structural_similarity

    sa = a.detach().cpu().double().numpy().sum(0)
    sb = b.detach().cpu().double().numpy().sum(0)
    ma, mb = np.abs(sa), np.abs(sb)
    out: dict = {"spearman": _spearman(sa, sb), "spearman_abs": _spearman(ma, mb)}
    try:
        out["ssim_abs"] = float(structural_similarity(ma / (ma.max() or 1.0), mb / (mb.max() or 1.0), data_range=1.0))
    except ValueError:  # an image smaller than SSIM's 7-voxel window
        out["ssim_abs"] = float("nan")
    return out


def randomisation_check(model: nn.Module, x, method: str = "integrated_gradients", target: int = 1,
                        region="predicted", seed: int = 0, progress: bool = False, **options) -> list[dict]:
    """Cascading model randomisation: rows {layer, n_randomised, spearman_abs, spearman, ssim_abs}, the first
    row the trained model against itself. The model is copied; its weights stay as they were."""
    x = plain(x)
    xb = x if x.ndim >= 4 and x.shape[0] == 1 else x.unsqueeze(0)
    model = model.eval()
    roi, _ = fixed_region(model, xb, target, region)  # the same region for every randomised model
    ref = attribute(model, xb, method, target, region=roi, spatial_dims=xb.ndim - 2, **options)
    rows = [{"layer": "(trained)", "n_randomised": 0, **similarity(ref[0], ref[0])}]
    rand, layers = randomised_layers(model, seed)
    for i, (name, randomise) in enumerate(tqdm(layers, desc="randomisation", disable=not progress, leave=False), 1):
        randomise()
        amap = attribute(rand, xb, method, target, region=roi, spatial_dims=xb.ndim - 2, **options)
        rows.append({"layer": name, "n_randomised": i, **similarity(ref[0], amap[0])})
    return rows


#: a map whose rank correlation with the map of the fully randomised model is above this (in absolute value: an
#: inverted map is the same picture) fails the check; an undefined one (a constant map) fails too
SANITY_MAX_SPEARMAN = 0.3


def passes(rho: float | None) -> bool:
    """The sanity verdict of a Spearman correlation against the other model's map: |rho| <= SANITY_MAX_SPEARMAN."""
    return rho is not None and abs(rho) <= SANITY_MAX_SPEARMAN


#: a rank correlation at least this strong (in absolute value) says that a map follows a model-free ranking
FOLLOWS_MIN = 0.6


def region_distance(roi, shape) -> np.ndarray | None:
    """Euclidean distance (voxels) of every voxel of the grid `shape` to the explained region `roi` (a mask; 0
    inside it); None for the whole image ("all") or an empty region."""
    from scipy import ndimage

    if isinstance(roi, str):
        return None
    m = np.asarray(roi).astype(bool).reshape(tuple(shape))
    return ndimage.distance_transform_edt(~m) if m.any() else None


def follows(amap: torch.Tensor, x: torch.Tensor, distance: np.ndarray | None) -> dict:
    """What a map (C, *spatial) follows besides the model, as Spearman correlations of the map summed over
    channels (as shown): `abs_vs_region_distance`, of |map| with minus the distance to the explained region (None
    without a region); `vs_image`, of the map with the image x (C, *spatial) summed over its modalities;
    `abs_vs_image`, of |map| with |that image|."""
    m = amap.detach().cpu().double().numpy().sum(0)
    img = x.detach().cpu().double().numpy().sum(0)
    return {"abs_vs_region_distance": None if distance is None else _spearman(np.abs(m), -distance),
            "vs_image": _spearman(m, img), "abs_vs_image": _spearman(np.abs(m), np.abs(img))}


#: what a failed check's two maps can share: (the follows() key, the check it explains, its name, what both maps
#: then do, as a flag says it)
SHARED = (("abs_vs_region_distance", "magnitude_sane", "region distance",
           "fall off with the distance to the explained region"),
          ("abs_vs_image", "magnitude_sane", "image magnitude", "follow the image's magnitude"),
          ("vs_image", "sane", "image", "follow the image"))


def shared_rankings(result: dict) -> list[str]:
    """What a failed check's two maps share besides the model (SHARED; both maps follow it at |rho| >=
    FOLLOWS_MIN with the same sign): 'region distance' and 'image magnitude' when their magnitudes fail the check
    (magnitude_sane), 'image' when the maps as shown do (sane)."""
    out = []
    for key, verdict, name, _ in SHARED:
        a, b = result["follows"].get(key), result["other_follows"].get(key)
        if not result[verdict] and a is not None and b is not None and min(abs(a), abs(b)) >= FOLLOWS_MIN \
                and a * b > 0:
            out.append(name)
    return out


def _against(model: nn.Module, other: nn.Module, x, attr, method: str, target, region, **options) -> dict:
    """similarity() of `attr` (model's map) with the same method's map for `other`, both on `model`'s target
    region; `sane`: the map as shown passes (spearman); `magnitude_sane`: its magnitude does (spearman_abs);
    `follows` / `other_follows`: what each map follows besides the model (follows()), and `shared`: which of
    those a failed check's two maps share (shared_rankings)."""
    x = plain(x)
    xb = x if x.ndim >= 4 and x.shape[0] == 1 else x.unsqueeze(0)
    roi, _ = fixed_region(model.eval(), xb, target, region)
    amap = attribute(other.eval(), xb, method, target, region=roi, spatial_dims=xb.ndim - 2, **options)
    a = plain(attr)
    a = a[0] if a.ndim == xb.ndim else a
    sim = similarity(a, amap[0])
    distance = region_distance(roi, xb.shape[2:])
    out = {**sim, "sane": passes(sim["spearman"]), "magnitude_sane": passes(sim["spearman_abs"]),
           "follows": follows(a, xb[0], distance), "other_follows": follows(amap[0], xb[0], distance)}
    out["shared"] = shared_rankings(out)
    return out


def model_randomisation(model: nn.Module, x, attr, method: str, target, region="predicted", seed: int = 0,
                        **options) -> dict:
    """The last step of the cascade at once: `attr` against the same method's map for a copy of `model` whose
    every parameterised layer is re-initialised (on the trained model's target region). Returns similarity(),
    `sane` and `magnitude_sane` (_against)."""
    return _against(model, fully_randomised(model, seed), x, attr, method, target, region, **options)


def data_randomisation(model: nn.Module, null_model: nn.Module, x, attr, method: str, target, region="predicted",
                       **options) -> dict:
    """Data randomisation (Adebayo et al. 2018, Sec. 3.2): `attr` against the same method's map for `null_model`,
    the same architecture trained with the same recipe on permuted labels (every image paired with another
    case's label map: pretrain --permute-labels), on the trained model's target region. A map that explains what
    the model learned from the labels differs from the null model's (`sane`, `magnitude_sane` as _against); a
    map the two models share shows the image or the architecture, not the learned relation."""
    return _against(model, null_model, x, attr, method, target, region, **options)


# ----------------------------------------------------------------------------------------------- pictures
def curves_png(results: dict[str, dict], title: str = "") -> bytes:
    """Deletion and insertion curves of several maps ({label: deletion_insertion result}) as a PNG."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, r in results.items():
        axes[0].plot(r["fractions"], r["deletion_curve"], label=f"{label} ({r['deletion_auc']:.3f})")
        axes[1].plot(r["fractions"], r["insertion_curve"], label=f"{label} ({r['insertion_auc']:.3f})")
    for ax, t in zip(axes, ("deletion (AUC, lower is better)", "insertion (AUC, higher is better)")):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("fraction of voxels")
        ax.set_ylabel("mean class probability in region")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return png_bytes(fig, dpi=90)


def randomisation_png(rows: list[dict], title: str = "") -> bytes:
    """Similarity to the trained model's map against the number of randomised layers, as a PNG."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(rows)), 3.4))
    xs = np.arange(len(rows))
    for key in ("spearman_abs", "spearman", "ssim_abs"):
        ax.plot(xs, [np.nan if r[key] is None else r[key] for r in rows], marker="o", label=key)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["layer"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("similarity to trained map")
    ax.set_title(title or "cascading randomisation (output -> input)", fontsize=9)
    ax.axhline(0, color="k", lw=0.6)
    ax.legend(fontsize=7)
    return png_bytes(fig, dpi=90)
