"""Normal anatomy of the phantom: tissue fractions from MNI152 (nilearn), vessels, the per-case
rigid-ish transform and the mass effect of lesions (steps 1-4 of the package docstring)."""
from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .fields import _random_rotation, random_fourier_field

#: BraTS grid at 1 mm (X, Y, Z)
BRATS_SHAPE = (240, 240, 155)


def load_mni152() -> tuple:
    """MNI152 ICBM 2009a T1 template and GM / WM probability maps (float32 in [0, 1]) plus their affine.

    The files ship inside the nilearn package (nilearn/datasets/data); they are read with nibabel directly
    (importing nilearn takes seconds); nilearn's loaders are the fallback. Nothing is downloaded.
    """
    import importlib.util

    import nibabel as nib

    names = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
             "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
             "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
    spec = importlib.util.find_spec("nilearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    root = Path(locations[0]) / "datasets" / "data" if locations else None
    if root is not None and all((root / f).is_file() for f in names.values()):
        imgs = {k: nib.load(str(root / f)) for k, f in names.items()}
        arrs = {}
        for k, im in imgs.items():
            a = np.asarray(im.dataobj, dtype=np.float32)
            arrs[k] = a / np.float32(max(float(a.max()), 1e-6))  # as nilearn's loaders: scaled to [0, 1]
        affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    else:  # pragma: no cover - other nilearn layouts
        from nilearn import datasets

        t1_img = datasets.load_mni152_template(resolution=1)
        arrs = {"t1": t1_img.get_fdata(dtype=np.float32),
                "gm": datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32),
                "wm": datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)}
        affine = np.asarray(t1_img.affine, dtype=np.float64)
    return arrs["t1"], arrs["gm"], arrs["wm"], affine


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Binary hole filling: background = the components of ~mask that touch the array border."""
    lab, _ = ndi.label(~mask)
    border = np.unique(np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel(),
                                       lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    return ~np.isin(lab, border[border > 0])


def tissue_maps(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, voxel_mm: float = 1.0) -> dict:
    """CSF / GM / WM volume fractions from the MNI152 T1 template and GM/WM probability maps (all in [0, 1]).

    brain = fill_holes(T1 > 0.1)                (the nilearn template is already skull-stripped)
    vent  = brain & T1 < 0.42 & dist(edge) > 12 mm   (ventricles: low T1 deep inside the brain)
    gm, wm <- (gm, wm) * brain, scaled so gm + wm <= 1 - vent
    csf   = brain - gm - wm                      (sulcal CSF + ventricles)
    Returns float32 arrays {"csf", "gm", "wm", "brain"} and the bool "ventricles".
    """
    brain = _fill_holes(t1 > 0.1)
    # distance to the brain edge on a 2x coarser grid (fast), brought back by repetition
    coarse = brain[::2, ::2, ::2]
    dist = ndi.distance_transform_edt(coarse) * 2 * voxel_mm
    dist = np.repeat(np.repeat(np.repeat(dist, 2, 0), 2, 1), 2, 2)[: brain.shape[0], : brain.shape[1], : brain.shape[2]]
    vent = brain & (t1 < 0.42) & (dist > 12.0)
    vent_f = ndi.gaussian_filter(vent.astype(np.float32), 0.7)
    b = brain.astype(np.float32)
    g = np.clip(gm, 0, 1).astype(np.float32) * b
    w = np.clip(wm, 0, 1).astype(np.float32) * b
    room = np.clip(b - vent_f, 0, 1)
    tot = g + w
    scale = np.where(tot > room, room / np.maximum(tot, 1e-6), 1.0).astype(np.float32)
    g *= scale
    w *= scale
    csf = np.clip(b - g - w, 0, 1)
    return {"csf": csf, "gm": g, "wm": w, "brain": b, "ventricles": vent}


@functools.lru_cache(maxsize=1)
def _anatomy_1mm():
    """Tissue fractions on the BraTS grid at 1 mm (brain centred) and the grid's affine (world = MNI mm)."""
    t1, gm, wm, src_aff = load_mni152()
    # work on the brain's bounding box (+ margin) only
    idx = np.argwhere(t1 > 0.1)
    c0 = np.maximum(idx.min(0) - 3, 0)
    c1 = np.minimum(idx.max(0) + 4, t1.shape)
    crop = tuple(slice(c0[i], c1[i]) for i in range(3))
    maps = tissue_maps(t1[crop], gm[crop], wm[crop])
    crop_aff = src_aff.copy()
    crop_aff[:3, 3] = src_aff[:3, :3] @ c0 + src_aff[:3, 3]
    # place the brain's bounding box at the centre of the BraTS grid by an integer shift (no interpolation)
    idx = np.argwhere(maps["brain"] > 0)
    lo, hi = idx.min(0), idx.max(0)
    centre = (lo + hi) / 2.0
    off = np.floor((np.array(BRATS_SHAPE) - 1) / 2.0 - centre + 0.5).astype(int)
    out = {}
    for k, a in maps.items():
        dst = np.zeros(BRATS_SHAPE, dtype=a.dtype)
        src_sl, dst_sl = [], []
        for ax in range(3):
            s0 = max(0, -off[ax])
            s1 = min(a.shape[ax], BRATS_SHAPE[ax] - off[ax])
            src_sl.append(slice(s0, s1))
            dst_sl.append(slice(s0 + off[ax], s1 + off[ax]))
        dst[tuple(dst_sl)] = a[tuple(src_sl)]
        out[k] = dst
    shift = np.eye(4)
    shift[:3, 3] = -off
    affine = crop_aff @ shift  # grid voxel -> template voxel -> MNI mm
    return out, affine


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return a.astype(np.float32, copy=False)
    shp = [int(math.ceil(s / k)) * k for s in a.shape]
    p = np.zeros(shp, dtype=np.float32)
    p[: a.shape[0], : a.shape[1], : a.shape[2]] = a
    return p.reshape(shp[0] // k, k, shp[1] // k, k, shp[2] // k, k).mean(axis=(1, 3, 5), dtype=np.float32)


def grid_affine(downsample: int = 1) -> np.ndarray:
    """RAS affine of the phantom grid at ``downsample`` mm (same field of view as the 1 mm BraTS grid)."""
    _, a1 = _anatomy_1mm()
    k = int(downsample)
    s = np.diag([k, k, k, 1.0])
    s[:3, 3] = (k - 1) / 2.0  # a coarse voxel's centre is the mean of the k^3 fine voxel centres
    return a1 @ s


def grid_axes_mm(affine, shape):
    return [affine[i, 3] + affine[i, i] * np.arange(shape[i]) for i in range(3)]


def vessel_map(axes_mm, csf: np.ndarray, ventricles: np.ndarray, seed: int = 1234, radius_mm: float = 1.0) -> np.ndarray:
    """Fraction of cortical veins: tubes where two independent smooth random fields both vanish.

    v(x) = exp(-(f1(x)^2 + f2(x)^2) / (2 eps^2)) * clip((csf(x) - 0.1) / 0.3, 0, 1) * (1 - ventricles)

    The zero set of one field is a surface, of two a curve; eps sets the tube radius (about eps * l).
    Fixed seed: the veins belong to the (one) anatomy, not to the case.
    """
    rng = np.random.default_rng(seed)
    ell = 8.0
    f1 = random_fourier_field(rng, axes_mm, ell, 96)
    f2 = random_fourier_field(rng, axes_mm, ell, 96)
    eps = radius_mm / ell
    v = np.exp(-(f1 * f1 + f2 * f2) / (2 * eps * eps))
    v *= np.clip((csf - 0.1) / 0.3, 0, 1) * (1.0 - ventricles)
    return np.clip(v, 0, 0.85).astype(np.float32)


@functools.lru_cache(maxsize=4)
def anatomy_on_grid(downsample: int):
    """Template anatomy at ``downsample`` mm: stacked fractions (csf, gm, wm, vessel) and the grid affine.

    The brain fraction is csf + gm + wm (tissue_maps makes them sum to it).
    """
    a1, _ = _anatomy_1mm()
    k = int(downsample)
    aff = grid_affine(k)
    csf, gm, wm = (_block_mean(a1[n], k) for n in ("csf", "gm", "wm"))
    vent = _block_mean(a1["ventricles"].astype(np.float32), k)
    ves = vessel_map(grid_axes_mm(aff, csf.shape), csf, vent)
    maps = np.stack([csf, gm, wm, ves]).astype(np.float32)
    maps.setflags(write=False)
    return maps, aff


@functools.lru_cache(maxsize=1)
def _brain_box_mm():
    """World (MNI mm) corners of the template brain's bounding box and its centre."""
    a1, aff = _anatomy_1mm()
    idx = np.argwhere(a1["brain"] > 0)
    lo = aff[:3, :3] @ idx.min(0) + aff[:3, 3]
    hi = aff[:3, :3] @ idx.max(0) + aff[:3, 3]
    return lo, hi, (lo + hi) / 2.0


@functools.lru_cache(maxsize=1)
def _centre_candidates():
    """Where a lesion centre may go (template space, 4 mm grid): parenchyma fraction and depth in mm."""
    maps, aff = anatomy_on_grid(4)
    csf, gm, wm, _ = maps
    brain = csf + gm + wm
    par = (gm + wm) / np.maximum(brain, 1e-6)
    dist = ndi.distance_transform_edt(brain > 0.5) * 4.0
    return par.astype(np.float32), dist.astype(np.float32), aff


def _in_cerebrum(p):
    x, y, z = p
    return z >= -10 or (abs(x) >= 28 and y >= -40 and z >= -35)


def sample_centre(rng: np.random.Generator, min_depth_mm: float) -> np.ndarray:
    """Uniform random point (MNI mm) in cerebral GM/WM at least ``min_depth_mm`` from the brain surface."""
    par, dist, aff = _centre_candidates()
    inv = np.linalg.inv(aff)
    lo, hi = np.array([-70.0, -105.0, -35.0]), np.array([70.0, 70.0, 75.0])
    depth = min_depth_mm
    for it in range(4000):
        if it and it % 500 == 0:
            depth *= 0.85  # relax for big lesions that do not fit
        p = rng.uniform(lo, hi)
        v = np.round(inv[:3, :3] @ p + inv[:3, 3]).astype(int)
        if np.any(v < 0) or np.any(v >= par.shape):
            continue
        if par[tuple(v)] >= 0.85 and dist[tuple(v)] >= depth and _in_cerebrum(p):
            return p
    raise RuntimeError("could not place a lesion centre")  # pragma: no cover


def case_transform(rng: np.random.Generator, max_rot_deg: float = 4.0, scale_xy=(0.95, 1.05),
                   scale_z=(0.92, 0.98), max_shift_mm=(3.0, 3.0, 1.5)) -> np.ndarray:
    """Small random transform T (4x4, mm -> mm) of the anatomy about the brain centre c: x_case = T x_template.

    T x = c + R(angle <= max_rot_deg about a random axis) diag(s_x, s_y, s_z) (x - c) + shift.
    The template brain is 155 mm tall, the BraTS grid too: s_z < 1 leaves a margin at top and bottom.
    """
    R = _random_rotation(rng, max_rot_deg)
    sc = np.r_[rng.uniform(*scale_xy, size=2), rng.uniform(*scale_z)]
    t = rng.uniform(-1.0, 1.0, size=3) * np.asarray(max_shift_mm)
    c = _brain_box_mm()[2]
    A = R @ np.diag(sc)
    T = np.eye(4)
    T[:3, :3] = A
    T[:3, 3] = c - A @ c + t
    return T


def case_box(affine, shape, T, margin_vox=2):
    """Voxel box (lo, hi) of the case grid that holds the transformed brain."""
    lo, hi, _ = _brain_box_mm()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    w = corners @ T[:3, :3].T + T[:3, 3]
    inv = np.linalg.inv(affine)
    v = w @ inv[:3, :3].T + inv[:3, 3]
    blo = np.maximum(np.floor(v.min(0)).astype(int) - margin_vox, 0)
    bhi = np.minimum(np.ceil(v.max(0)).astype(int) + margin_vox + 1, shape)
    return blo, bhi


def resample_anatomy(maps: np.ndarray, affine: np.ndarray, T: np.ndarray, box=None) -> np.ndarray:
    """Warp template maps (C, X, Y, Z) by x_case = T x_template (trilinear, zero outside).

    box = (lo, hi) voxel corners: only that part of the case grid is computed (returned with the box's shape).
    """
    M = np.linalg.inv(affine) @ np.linalg.inv(T) @ affine  # case voxel -> template voxel
    lo, hi = (np.zeros(3, int), np.array(maps.shape[1:])) if box is None else box
    offset = M[:3, :3] @ lo + M[:3, 3]
    out = np.empty((maps.shape[0],) + tuple(int(h - l) for l, h in zip(lo, hi)), dtype=np.float32)

    def one(c):
        ndi.affine_transform(maps[c], M[:3, :3], offset=offset, output_shape=out.shape[1:], order=1,
                             mode="constant", cval=0.0, output=out[c])

    with ThreadPoolExecutor(max_workers=max(1, min(maps.shape[0], os.cpu_count() or 1))) as ex:
        list(ex.map(one, range(maps.shape[0])))
    return out


def mass_effect(maps: np.ndarray, centre_vox: np.ndarray, radius_vox: float, strength: float) -> None:
    """Push tissue radially away from a lesion (in place, inside a box of 3 radii).

    Backward map r' = r (1 - m exp(-r^2 / (2 R^2))): the tissue now at distance r came from r' < r.
    dr'/dr = 1 - m e^{-r^2/2R^2} (1 - r^2/R^2) >= 1 - m > 0, so the map is invertible for m < 1.
    """
    half = 3.0 * radius_vox
    lo = np.maximum(np.floor(centre_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + half).astype(int) + 1, maps.shape[1:])
    if np.any(hi <= lo):
        return
    gx, gy, gz = np.meshgrid(*[np.arange(lo[i], hi[i], dtype=np.float32) - np.float32(centre_vox[i]) for i in range(3)],
                             indexing="ij")
    r2 = gx * gx + gy * gy + gz * gz
    f = 1.0 - np.float32(strength) * np.exp(-r2 / np.float32(2 * radius_vox * radius_vox))
    coords = np.stack([gx * f + np.float32(centre_vox[0] - lo[0]), gy * f + np.float32(centre_vox[1] - lo[1]),
                       gz * f + np.float32(centre_vox[2] - lo[2])])
    box = tuple(slice(lo[i], hi[i]) for i in range(3))
    for c in range(maps.shape[0]):
        src = np.ascontiguousarray(maps[c][box])
        maps[c][box] = ndi.map_coordinates(src, coords, order=1, mode="nearest")
