"""Tumour of the phantom: lesion parameters, soft maps of necrosis / enhancing rim / solid tumour and
oedema (step 5 of the package docstring), and the hard labels."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .anatomy import grid_axes_mm, mass_effect
from .fields import (
    _random_rotation,
    _random_unit_vectors,
    _sigmoid,
    radial_modulation,
    random_fourier_field,
)


def sample_lesion(rng: np.random.Generator, primary: bool = True) -> dict:
    """Random lesion geometry in mm (centre chosen later): radii, shape, rim, enhancement pattern, oedema."""
    r_wt = rng.uniform(15.0, 35.0) if primary else rng.uniform(12.0, 20.0)
    r_core = r_wt * rng.uniform(0.45, 0.68)
    small_enh = bool(rng.uniform() < 0.25)
    rim = rng.uniform(2.5, 4.0) if small_enh else rng.uniform(2.0, 5.0)
    rim = min(rim, 0.4 * r_core)  # leave a necrotic centre of at least 0.6 r_core

    def shape(n, amp):
        return {"directions": _random_unit_vectors(rng, n).tolist(),
                "amplitudes": (rng.normal(0, amp, size=n)).tolist(),
                "kappas": rng.uniform(1.5, 5.0, size=n).tolist()}

    return {
        "radius_wt_mm": float(r_wt),
        "radius_core_mm": float(r_core),
        "rim_mm": float(rim),
        "axes_core": (rng.uniform(0.8, 1.2, size=3)).tolist(),
        "axes_wt": (rng.uniform(0.8, 1.25, size=3)).tolist(),
        "rotation": _random_rotation(rng).tolist(),
        "shape_core": shape(8, 0.3),
        "shape_wt": shape(10, 0.35),
        "shape_rim": shape(6, 0.8),
        "small_enhancing": small_enh,
        "enhancing_fraction": float(rng.uniform(0.2, 0.35)) if small_enh else 1.0,
        "shape_enh": shape(6, 1.0),
        "oedema_wm_bias": float(rng.uniform(0.5, 0.9)),
        "mass_effect": float(rng.uniform(0.12, 0.3)),
        "texture_seed": int(rng.integers(2**31)),
    }


def _ellipsoid(coords, centre, rotation, radii, shp):
    """Normalised radius rho = |q| / (1 + g(q/|q|)) with q = R^T (x - c) / radii."""
    R = np.asarray(rotation)
    d = [coords[i] - np.float32(centre[i]) for i in range(3)]
    q = [sum(np.float32(R[j, i]) * d[j] for j in range(3)) / np.float32(radii[i]) for i in range(3)]
    rho = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) + np.float32(1e-6)
    u = np.stack([qi / rho for qi in q], axis=-1)
    s = 1.0 + radial_modulation(u, np.asarray(shp["directions"]), np.asarray(shp["amplitudes"]),
                                np.asarray(shp["kappas"]))
    return rho / np.maximum(s, 0.3), u


def tumour_mask(coords, lesion: dict, voxel_mm: float) -> dict:
    """Soft partial-volume maps of one lesion's core compartments on coordinates ``coords`` (3 arrays, mm).

    rho_c = |R^T (x - c) / (r_core * axes)| / (1 + g_core(u))        (irregular ellipsoid, rho_c = 1 on its surface)
    core  = sigmoid((1 - rho_c) r_core / w),  w = 0.4 voxel_mm        (partial volume at the edge)
    nec   = sigmoid((1 - t(u)/r_core - rho_c) r_core / w),  t(u) = rim (1 + 0.6 g_rim(u))   (necrosis)
    enh   = (core - nec) * E(u),  solid = (core - nec) (1 - E(u)),    E = 1, or for a "small enhancing"
            lesion a patch of the sphere covering ``enhancing_fraction`` of the directions (the rest of the rim
            is non-enhancing solid tumour, label 2)
    Returns {"core", "necrosis", "enhancing", "solid"} float32 arrays; necrosis + enhancing + solid = core.
    """
    w = 0.4 * voxel_mm
    rc = lesion["radius_core_mm"]
    radii = rc * np.asarray(lesion["axes_core"])
    rho, u = _ellipsoid(coords, lesion["centre_mm"], lesion["rotation"], radii, lesion["shape_core"])
    core = _sigmoid((1.0 - rho) * np.float32(rc / w))
    srim = lesion["shape_rim"]
    t = lesion["rim_mm"] * (1.0 + 0.6 * np.clip(radial_modulation(u, np.asarray(srim["directions"]),
                                                                  np.asarray(srim["amplitudes"]),
                                                                  np.asarray(srim["kappas"])), -1.2, 1.5))
    t = np.maximum(t, 1.5)
    nec = np.minimum(_sigmoid((1.0 - t / rc - rho) * np.float32(rc / w)), core)
    if lesion["small_enhancing"]:
        se = lesion["shape_enh"]
        g = radial_modulation(u, np.asarray(se["directions"]), np.asarray(se["amplitudes"]), np.asarray(se["kappas"]))
        # threshold from the directions of a Fibonacci sphere: the same patch at every voxel size
        g_sphere = radial_modulation(_fibonacci_sphere(), np.asarray(se["directions"]), np.asarray(se["amplitudes"]),
                                     np.asarray(se["kappas"]))
        thr = float(np.quantile(g_sphere, 1.0 - lesion["enhancing_fraction"]))
        E = _sigmoid((g - thr) / 0.03)
    else:
        E = np.float32(1.0)
    ring = core - nec
    return {"core": core, "necrosis": nec, "enhancing": ring * E, "solid": ring * (1.0 - E)}


def oedema_mask(coords, lesion: dict, wm_smooth: np.ndarray, parenchyma: np.ndarray, voxel_mm: float) -> tuple:
    """Soft oedema around a lesion that follows white matter.

    rho_w = irregular-ellipsoid radius of the whole tumour (r_wt, axes_wt, g_wt)
    tau(x) = 1 + beta (wm_s(x) - 0.5)        (reaches further where the smoothed WM fraction is high)
    oed = sigmoid((tau - rho_w) r_wt / w) * clip(2 parenchyma - 0.5, 0, 1)   (none in CSF)
    Returns (strength, oed): the signal weight (0.7 at the border, 1 at the centre) and the membership
    (label 1 where > 0.5).
    """
    w = 0.4 * voxel_mm
    rw = lesion["radius_wt_mm"]
    radii = rw * np.asarray(lesion["axes_wt"])
    rho, _ = _ellipsoid(coords, lesion["centre_mm"], lesion["rotation"], radii, lesion["shape_wt"])
    tau = 1.0 + np.float32(lesion["oedema_wm_bias"]) * (wm_smooth - 0.5)
    oed = _sigmoid((tau - rho) * np.float32(rw / w)) * np.clip(2.0 * parenchyma - 0.5, 0, 1)
    strength = 0.7 + 0.3 * np.clip(1.0 - rho, 0, 1)  # fades towards the outer border
    return (oed * strength).astype(np.float32), oed




def tumour_labels(c: dict, brain_mask: np.ndarray) -> np.ndarray:
    """Hard labels from the soft maps: 1 where oedema > 0.5; inside core > 0.5 the larger of
    necrosis/solid (2) and enhancing (3); 0 outside the brain mask."""
    lab = np.zeros(brain_mask.shape, dtype=np.uint8)
    lab[c["oedema_hard"] > 0.5] = 1
    core = c["core"] > 0.5
    enh = c["enhancing"][core] > np.maximum(c["necrosis"][core], c["solid"][core])
    lab[core] = np.where(enh, 3, 2).astype(np.uint8)
    lab[~brain_mask] = 0
    return lab


def _fibonacci_sphere(n=400):
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], axis=-1)


def _shape_max(shp) -> float:
    """max over directions of 1 + g(u) (bounds the lesion's extent)."""
    g = radial_modulation(_fibonacci_sphere(), np.asarray(shp["directions"]), np.asarray(shp["amplitudes"]),
                          np.asarray(shp["kappas"]))
    return float(1.0 + g.max())


def tumour_maps(maps, aff, lesions):
    """Apply mass effect (in place on maps) and build soft tumour maps for all lesions on the grid of maps."""
    k = abs(aff[0, 0])
    shape = maps.shape[1:]
    inv = np.linalg.inv(aff)
    for les in lesions:
        cv = inv[:3, :3] @ np.asarray(les["centre_mm"]) + inv[:3, 3]
        mass_effect(maps, cv, les["radius_core_mm"] / k, les["mass_effect"])
    csf, gm, wm, ves = maps
    brain = csf + gm + wm
    wm_s = ndi.gaussian_filter(wm / np.maximum(brain, 1e-3), 2.0 / k)
    par = (gm + wm) / np.maximum(brain, 1e-3)
    c = {n: np.zeros(shape, dtype=np.float32) for n in ("core", "necrosis", "enhancing", "solid", "oedema",
                                                          "oedema_hard")}
    axes = grid_axes_mm(aff, shape)
    tex = np.zeros(shape, dtype=np.float32)
    for les in lesions:
        ext_wt = (les["radius_wt_mm"] * max(les["axes_wt"]) * _shape_max(les["shape_wt"])
                  * (1 + 0.5 * les["oedema_wm_bias"]))
        ext_core = les["radius_core_mm"] * max(les["axes_core"]) * _shape_max(les["shape_core"])
        ext = max(ext_wt, ext_core) + 3 * k
        cv = inv[:3, :3] @ np.asarray(les["centre_mm"]) + inv[:3, 3]
        lo = np.maximum(np.floor(cv - ext / k).astype(int), 0)
        hi = np.minimum(np.ceil(cv + ext / k).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(lo[i], hi[i]) for i in range(3))
        bax = [axes[i][lo[i]:hi[i]] for i in range(3)]
        coords = np.meshgrid(*[a.astype(np.float32) for a in bax], indexing="ij")
        tm = tumour_mask(coords, les, k)
        oed_s, oed_h = oedema_mask(coords, les, wm_s[box], par[box], k)
        # oedema: only the part connected to this lesion's core
        hard = (oed_h > 0.5) | (tm["core"] > 0.5)
        lab, _ = ndi.label(hard)
        ids = np.unique(lab[tm["core"] > 0.5])
        keep = np.isin(lab, ids[ids > 0])
        oed_s *= ndi.binary_dilation(keep, iterations=1)
        oed_h *= keep
        for n in ("core", "necrosis", "enhancing", "solid"):
            np.maximum(c[n][box], tm[n], out=c[n][box])
        np.maximum(c["oedema"][box], oed_s, out=c["oedema"][box])
        np.maximum(c["oedema_hard"][box], oed_h, out=c["oedema_hard"][box])
        trng = np.random.default_rng(les["texture_seed"])
        tx = random_fourier_field(trng, bax, 3.0, 48)
        np.clip(tx, -2.5, 2.5, out=tx)
        tex[box] = np.where(tm["core"] > 1e-3, tx, tex[box])
        oed_s *= 1.0 + np.float32(0.1) * random_fourier_field(trng, bax, 4.0, 48)
    # keep the compartments of the core consistent after taking maxima over lesions
    s = c["necrosis"] + c["enhancing"] + c["solid"]
    over = s > c["core"]
    if over.any():
        f = c["core"][over] / np.maximum(s[over], 1e-6)
        for n in ("necrosis", "enhancing", "solid"):
            c[n][over] *= f
    return c, tex
