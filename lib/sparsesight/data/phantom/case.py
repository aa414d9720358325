"""One phantom case (`make_case`): anatomy, tumour and contrast composed from the case seed's streams."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import CLASSES, MODALITIES
from .anatomy import (
    anatomy_on_grid,
    case_box,
    case_transform,
    grid_axes_mm,
    resample_anatomy,
    sample_centre,
)
from .contrast import (
    bias_field,
    compose_image,
    contrast_table,
    partial_volume,
    rician_noise,
)
from .tumour import sample_lesion, tumour_labels, tumour_maps
from .variety import VARIETY, random_grid, regrid, warp_anatomy

GENERATOR_VERSION = "1.0"
_NUM_MOD = len(MODALITIES)


@dataclass
class Case:
    """One phantom case.

    image:   (X, Y, Z, 4) float32, channels FLAIR, T1, T1ce, T2; integer-valued, 0 outside the brain.
    label:   (X, Y, Z) uint8, 0 background, 1 oedema, 2 non-enhancing core (necrosis included), 3 enhancing.
    affine:  4x4 float64, RAS, isotropic spacing = downsample mm; world coordinates are MNI152 mm (a `variety`
             case: any voxel size and axis orientation, see variety.random_grid).
    params:  JSON-serialisable description (seed, anatomy transform, lesions, contrasts, noise, label counts).
    tissues: fractions {"csf", "gm", "wm"} (X, Y, Z) float32 of the (deformed) anatomy, for checks and plots.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    params: dict
    tissues: dict = field(default_factory=dict, repr=False)




def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, float):
        return round(x, 5)
    return x


def make_case(seed: int, downsample: int = 1, *, noise: bool = True, variety: bool = False,
              plain_grid: bool = False) -> Case:
    """Make one BraTS-like case: 4 sequences (FLAIR, T1, T1ce, T2) + label on real anatomy.

    seed: any non-negative int; same seed -> byte-identical arrays.
    downsample: k >= 1; grid ceil(240/k) x ceil(240/k) x ceil(155/k) at k mm, same field of view as BraTS.
    noise: False leaves out the Rician noise (for checks); the image is still integer-valued.
    At downsample <= 2 every case holds all three tumour labels (the tumour is re-drawn otherwise).
    variety: an off-grid case (variety.py): wider head size and pose, a non-linear deformation of the anatomy, 1-3
    lesions (small ones too), wider contrast and bias-field ranges, then a random grid (voxel sizes, slice
    thickness, orientation, field of view); made at `downsample` mm before the regrid. Its own random streams:
    `variety=False` cases are unchanged.
    plain_grid: a `variety` case left on the plain grid (the same anatomy, lesions, contrast and noise, without the
    random grid): what the grid alone costs a model (bench/off_grid_ablation.py).
    """
    k = int(downsample)
    if k < 1:
        raise ValueError("downsample must be >= 1")
    seed = int(seed)
    ss = np.random.SeedSequence([seed, 0x5eed])
    r_anat, r_tum, r_con, r_bias, r_noise = (np.random.default_rng(s) for s in ss.spawn(5))
    r_var = np.random.default_rng(np.random.SeedSequence([seed, 0xa1e7]))  # variety only: plain cases unchanged
    var: dict[str, Any] = VARIETY if variety else {}

    tmaps, aff = anatomy_on_grid(k)
    shape = tmaps.shape[1:]
    T = (case_transform(r_anat, var["max_rot_deg"], var["scale_xy"], var["scale_z"], var["max_shift_mm"]) if variety
         else case_transform(r_anat))
    lo, hi = case_box(aff, shape, T, margin_vox=2 + int(np.ceil(var["warp_mm"][1] / k)) if variety else 2)
    box = tuple(slice(lo[i], hi[i]) for i in range(3))
    aff_box = aff.copy()
    aff_box[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    base = resample_anatomy(tmaps, aff, T, (lo, hi))  # only the box that holds the brain
    warp = None
    if variety:
        base, warp = warp_anatomy(base, aff_box, r_var, r_var.uniform(*var["warp_mm"]), var["warp_length_mm"])
    vox = float(abs(aff[0, 0]))

    for attempt in range(20):  # noqa: B007 (the count is recorded after the loop)
        n_les = int(r_var.integers(var["lesions"][0], var["lesions"][1] + 1)) if variety else (
            2 if r_tum.uniform() < 0.2 else 1)
        lesions = []
        for i in range(n_les):
            les = sample_lesion(r_tum, primary=(i == 0))
            if variety and r_var.uniform() < var["small_lesion_p"]:
                les = small_lesion(les, r_var.uniform(6.0, 14.0))
            p_t = sample_centre(r_tum, les["radius_core_mm"] + 6.0)
            les["centre_mm"] = (T[:3, :3] @ p_t + T[:3, 3]).tolist()
            lesions.append(les)
        maps = base.copy()
        c, tex = tumour_maps(maps, aff_box, lesions)
        brain = maps[0] + maps[1] + maps[2]
        brain_mask = brain > 0.5
        lab_box = tumour_labels(c, brain_mask)
        counts = np.bincount(lab_box.ravel(), minlength=4)
        if k > 2 or np.all(counts[1:] > 0):
            break

    t = dict(zip(("csf", "gm", "wm", "vessel"), maps))
    t["brain"] = brain
    table = contrast_table(r_con, var["contrast_jitter"]) if variety else contrast_table(r_con)
    clean = compose_image(t, c, table, tex)
    del c, tex
    clean = partial_volume(clean, vox)
    snr = r_noise.uniform(18.0, 32.0)
    sig = []
    img = np.zeros(shape + (_NUM_MOD,), dtype=np.float32)
    axes = grid_axes_mm(aff_box, brain.shape)
    amps = r_bias.uniform(*(var["bias_amplitude"] if variety else (0.06, 0.12)), size=_NUM_MOD)
    for m in range(_NUM_MOD):
        bias = bias_field(r_bias, axes, brain, amplitude=float(amps[m]))
        v = clean[..., m][brain_mask] * bias[brain_mask]
        sigma = table["wm"][m] / snr
        sig.append(sigma)
        if noise:
            v = rician_noise(v, sigma, r_noise)
        chan = np.zeros(brain.shape, dtype=np.float32)
        chan[brain_mask] = np.clip(np.round(v), 0, 32767)
        img[box + (m,)] = chan
    label = np.zeros(shape, dtype=np.uint8)
    label[box] = lab_box
    counts = np.bincount(label.ravel(), minlength=4)
    tissues = {}
    for n in ("csf", "gm", "wm"):
        full = np.zeros(shape, dtype=np.float32)
        full[box] = t[n]
        tissues[n] = full

    affine = aff.copy()
    regridded = variety and not plain_grid
    if regridded:  # the finished case onto another grid around the head
        head = np.argwhere(img[..., 1] > 0)  # the brain (skull-stripped like BraTS)
        corners = np.array([head.min(0), head.max(0)], dtype=float)
        world = corners @ aff[:3, :3].T + aff[:3, 3]
        affine, grid_shape = random_grid(r_var, world.min(0), world.max(0), scale=k)
        img, label = regrid(img, label, aff, affine, grid_shape)
        img = np.clip(np.round(img), 0, 32767)  # integer-valued like the plain cases
        tissues = {n: regrid(t[..., None], label, aff, affine, grid_shape)[0][..., 0] for n, t in tissues.items()}
        counts = np.bincount(label.ravel(), minlength=4)
    params = {
        "generator": "sparsesight.data.phantom", "version": GENERATOR_VERSION, "seed": seed, "downsample": k,
        "spacing_mm": float(vox) if not regridded else [round(float(x), 4) for x in np.sqrt((affine[:3, :3] ** 2).sum(0))],
        "shape": list(label.shape), "modalities": list(MODALITIES),
        "variety": ({"warp": warp, "grid_affine": affine.tolist(), "plain_grid": bool(plain_grid), "ranges": VARIETY}
                    if variety else None),
        "anatomy": {"source": "MNI152 ICBM 2009a (nilearn)", "transform_template_to_case": T.tolist()},
        "lesions": [{kk: v for kk, v in les.items()} for les in lesions],
        "attempts": attempt + 1,
        "contrast": {tn: dict(zip(MODALITIES, v)) for tn, v in table.items()},
        "bias_amplitude": amps.tolist(), "snr_wm": float(snr), "noise": bool(noise),
        "noise_sigma": dict(zip(MODALITIES, sig)),
        "label_voxels": {CLASSES[i]: int(n) for i, n in enumerate(counts)},
    }
    params = json.loads(json.dumps(_jsonable(params)))
    return Case(image=img, label=label, affine=affine, params=params, tissues=tissues)


def small_lesion(lesion: dict, radius_wt_mm: float) -> dict:
    """`lesion` scaled to a whole-tumour radius of `radius_wt_mm` (core, rim and enhancing shares kept in
    proportion; the rim at least 1.5 mm so that a 1 mm grid can hold it)."""
    f = radius_wt_mm / lesion["radius_wt_mm"]
    return {**lesion, "radius_wt_mm": float(radius_wt_mm), "radius_core_mm": float(lesion["radius_core_mm"] * f),
            "rim_mm": float(max(1.5, min(lesion["rim_mm"] * f, 0.4 * lesion["radius_core_mm"] * f))), "small": True}
