"""BraTS-like 4-modality brain tumour phantom on real anatomy (MNI152 2009a, shipped with nilearn).

One case is made in these steps, each a small named function below:

1. ``tissue_maps``      CSF / GM / WM fractions from the MNI152 GM and WM probability maps and the T1
                        template (CSF = brain mask - GM - WM, ventricles from low T1 deep in the brain),
                        placed on the BraTS grid 240 x 240 x 155 at 1 mm (world coordinates = MNI mm, RAS)
                        and block-averaged to ``downsample`` mm (partial volume of coarse voxels).
2. ``vessel_map``       thin tubes (intersections of two level sets of random fields) in the sulcal CSF,
                        bright on T1ce like cortical veins.
3. ``case_transform``   a small random rotation / scaling / shift of the anatomy per case.
4. ``mass_effect``      tissue pushed radially away from each lesion centre.
5. ``tumour_mask``      soft (partial-volume) maps of necrosis, enhancing rim and non-enhancing solid
                        tumour inside an irregular ellipsoid (``radial_modulation``);
   ``oedema_mask``      oedema around it that reaches further in white matter than in grey matter.
6. ``compose_image``    per-tissue intensity table (``CONTRAST`` x ``BASE_WM``) with per-case jitter,
                        mixed by the fractions; then ``partial_volume`` blur, ``bias_field`` and
                        ``rician_noise``; skull-stripped (0 outside the brain) like BraTS.

Everything random is drawn from streams derived from the case seed, and the geometry is defined in mm,
so the same seed gives the same phantom (up to resolution) at every ``downsample``.
"""
from __future__ import annotations

import functools
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .. import CLASSES, MODALITIES

__all__ = ["Case", "make_case", "write_dataset", "case_seed", "grid_affine", "CONTRAST", "BASE_WM",
           "tissue_maps", "vessel_map", "case_transform", "mass_effect", "tumour_mask", "oedema_mask",
           "tumour_labels", "contrast_table", "compose_image", "partial_volume", "bias_field", "rician_noise",
           "random_fourier_field", "radial_modulation", "load_mni152"]

GENERATOR_VERSION = "1.0"

#: BraTS grid at 1 mm (X, Y, Z)
BRATS_SHAPE = (240, 240, 155)

#: Tissue intensities relative to normal white matter of the same sequence (WM = 1).
#: Rows: tissue / tumour compartment; columns: MODALITIES (FLAIR, T1, T1ce, T2).
#: T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF suppressed, GM slightly > WM;
#: oedema bright on FLAIR/T2, slightly dark on T1, not enhancing; enhancing rim bright on T1ce, iso/dark on T1;
#: necrosis dark on T1/T1ce, bright on T2, intermediate on FLAIR.
CONTRAST = {
    #                FLAIR   T1    T1ce   T2
    "wm":           (1.00, 1.00, 1.00, 1.00),
    "gm":           (1.22, 0.74, 0.76, 1.40),
    "csf":          (0.28, 0.30, 0.32, 3.30),
    "vessel":       (0.55, 0.80, 2.10, 0.45),
    "oedema":       (2.05, 0.72, 0.74, 2.40),
    "necrosis":     (1.30, 0.40, 0.44, 2.90),
    "solid":        (1.55, 0.66, 0.72, 1.85),  # non-enhancing solid tumour (label 2 as well)
    "enhancing":    (1.65, 0.80, 2.20, 1.70),
}
#: Normal white-matter signal per sequence (arbitrary scanner units, int16-friendly), before per-case gain.
BASE_WM = (330.0, 520.0, 560.0, 260.0)

# Compartments that share label 2 ("non-enhancing core", necrosis included).
_NUM_MOD = len(MODALITIES)


@dataclass
class Case:
    """One phantom case.

    image:   (X, Y, Z, 4) float32, channels FLAIR, T1, T1ce, T2; integer-valued, 0 outside the brain.
    label:   (X, Y, Z) uint8, 0 background, 1 oedema, 2 non-enhancing core (necrosis included), 3 enhancing.
    affine:  4x4 float64, RAS, isotropic spacing = downsample mm; world coordinates are MNI152 mm.
    params:  JSON-serialisable description (seed, anatomy transform, lesions, contrasts, noise, label counts).
    tissues: fractions {"csf", "gm", "wm"} (X, Y, Z) float32 of the (deformed) anatomy, for checks and plots.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    params: dict
    tissues: dict = field(default_factory=dict, repr=False)


# ----------------------------------------------------------------------------------------------------------
# Random fields
# ----------------------------------------------------------------------------------------------------------
def random_fourier_field(rng: np.random.Generator, axes_mm, length_scale: float, n_features: int = 32) -> np.ndarray:
    """Smooth stationary Gaussian random field on an axis-aligned grid (random Fourier features).

    f(x) = sqrt(2/J) sum_j cos(w_j . x + phi_j),   w_j ~ N(0, I / l^2),  phi_j ~ U(0, 2 pi)

    has zero mean, unit variance and covariance exp(-|d|^2 / (2 l^2)) as J grows. Because the grid is
    separable, cos(w.x + phi) = Re(e^{i phi} e^{i w_x x} e^{i w_y y} e^{i w_z z}) is evaluated as one matrix
    product, and the field is defined in mm: the same draw gives the same field at any voxel size.
    """
    x, y, z = (np.asarray(a, dtype=np.float64) for a in axes_mm)
    w = rng.normal(0.0, 1.0 / length_scale, size=(n_features, 3))
    phi = rng.uniform(0.0, 2 * np.pi, size=n_features)
    ex = np.exp(1j * (w[:, :1] * x[None] + phi[:, None]))  # (J, X)
    ey = np.exp(1j * w[:, 1:2] * y[None])  # (J, Y)
    ez = np.exp(1j * w[:, 2:3] * z[None])  # (J, Z)
    gxy = (ex[:, :, None] * ey[:, None, :]).reshape(n_features, -1)  # (J, X*Y)
    # Re(G^T E) = Re(G)^T Re(E) - Im(G)^T Im(E): two real matrix products in float64, so that BLAS kernels
    # of other CPUs round the float32 result the same way
    f = np.ascontiguousarray(gxy.real.T) @ np.ascontiguousarray(ez.real)
    f -= np.ascontiguousarray(gxy.imag.T) @ np.ascontiguousarray(ez.imag)
    f *= math.sqrt(2.0 / n_features)
    return f.astype(np.float32).reshape(len(x), len(y), len(z))


def radial_modulation(u: np.ndarray, directions: np.ndarray, amplitudes: np.ndarray, kappas: np.ndarray) -> np.ndarray:
    """Smooth zero-mean function on the unit sphere (a sum of von Mises-Fisher bumps), spherical-harmonics-like.

    g(u) = sum_k a_k [exp(kappa_k (u . v_k - 1)) - (1 - exp(-2 kappa_k)) / (2 kappa_k)]

    u: (..., 3) unit vectors; directions v_k (K, 3) unit; amplitudes a_k (K,); concentrations kappa_k (K,)
    (small kappa: low angular frequency). The subtracted constant is the mean of each bump over the sphere.
    """
    out = np.zeros(u.shape[:-1], dtype=np.float32)
    for v, a, k in zip(directions, amplitudes, kappas):
        dot = u[..., 0] * v[0] + u[..., 1] * v[1] + u[..., 2] * v[2]
        out += np.float32(a) * (np.exp(np.float32(k) * (dot - 1.0)) - np.float32((1 - math.exp(-2 * k)) / (2 * k)))
    return out


def _random_unit_vectors(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_rotation(rng, max_deg=None):
    """Uniform random rotation (max_deg None) or rotation about a random axis by at most max_deg degrees."""
    if max_deg is None:
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
    else:
        ax = _random_unit_vectors(rng, 1)[0]
        ang = np.deg2rad(rng.uniform(-max_deg, max_deg))
        q = np.r_[math.cos(ang / 2), math.sin(ang / 2) * ax]
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def _sigmoid(t):
    return (0.5 * (1.0 + np.tanh(0.5 * t))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------------------------
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
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" if spec else None
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


def _axes_mm(affine, shape):
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
def _anatomy(downsample: int):
    """Template anatomy at ``downsample`` mm: stacked fractions (csf, gm, wm, vessel) and the grid affine.

    The brain fraction is csf + gm + wm (tissue_maps makes them sum to it).
    """
    a1, _ = _anatomy_1mm()
    k = int(downsample)
    aff = grid_affine(k)
    csf, gm, wm = (_block_mean(a1[n], k) for n in ("csf", "gm", "wm"))
    vent = _block_mean(a1["ventricles"].astype(np.float32), k)
    ves = vessel_map(_axes_mm(aff, csf.shape), csf, vent)
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
    maps, aff = _anatomy(4)
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


def _case_box(affine, shape, T, margin_vox=2):
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


# ----------------------------------------------------------------------------------------------------------
# Tumour
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# Image formation
# ----------------------------------------------------------------------------------------------------------
def contrast_table(rng: np.random.Generator, jitter: float = 0.13) -> dict:
    """Per-case intensity table {tissue: (FLAIR, T1, T1ce, T2)} in scanner units.

    I_t,m = gain_m BASE_WM_m (1 + (CONTRAST_t,m - 1) U(1 - j, 1 + j)),  gain_m ~ U(0.8, 1.25)
    Jittering each tissue's contrast to WM by +-j keeps every ordering of CONTRAST (T2 CSF > GM > WM, ...).
    """
    gain = rng.uniform(0.8, 1.25, size=_NUM_MOD)
    out = {}
    for t, rel in CONTRAST.items():
        rel = np.asarray(rel)
        f = rng.uniform(1 - jitter, 1 + jitter, size=_NUM_MOD) if t != "wm" else np.ones(_NUM_MOD)
        out[t] = tuple(float(v) for v in gain * np.asarray(BASE_WM) * (1.0 + (rel - 1.0) * f))
    return out


def bias_field(rng: np.random.Generator, axes_mm, brain: np.ndarray, amplitude: float = 0.1,
               length_scale: float = 110.0) -> np.ndarray:
    """Smooth multiplicative bias field b(x) = exp(a f(x)) / geometric-mean over the brain, f a unit random field.

    With a = 0.1 the field spans about +-20 % across the brain, like an uncorrected receive-coil profile.
    """
    f = random_fourier_field(rng, axes_mm, length_scale, 16) * np.float32(amplitude)
    m = brain > 0.5
    if m.any():
        f -= np.float32(f[m].mean())
    return np.exp(f).astype(np.float32)


def rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the complex signal plus complex Gaussian noise: M = |S + sigma (n_r + i n_i)|, n ~ N(0, 1).

    M is Rician; for S = 0 Rayleigh with mean sigma sqrt(pi/2) and std sigma sqrt(2 - pi/2) (ratio 1.913);
    for S >> sigma approximately N(sqrt(S^2 + sigma^2), sigma^2).
    """
    s = np.asarray(signal, dtype=np.float32)
    nr = rng.standard_normal(s.shape, dtype=np.float32)
    ni = rng.standard_normal(s.shape, dtype=np.float32)
    sg = np.float32(sigma)
    return np.sqrt((s + sg * nr) ** 2 + (sg * ni) ** 2)


def partial_volume(img: np.ndarray, voxel_mm: float, fwhm_mm: float = 1.2) -> np.ndarray:
    """Blur by the acquisition point-spread function (Gaussian, FWHM ~ 1.2 mm), below a voxel skipped."""
    sigma = fwhm_mm / 2.3548 / voxel_mm
    if sigma < 0.3:
        return img
    out = np.empty_like(img)
    for c in range(img.shape[-1]):  # blur in space only, never across the channel axis
        ndi.gaussian_filter(img[..., c], sigma, output=out[..., c], truncate=3.0)
    return out


def compose_image(t: dict, c: dict, table: dict, texture: np.ndarray | None) -> np.ndarray:
    """Noise-free signal of the four sequences (X, Y, Z, 4) from fractions t and tumour maps c.

    normal = csf I_csf + gm I_gm + wm I_wm
    oedema:  normal += o ((gm + wm) I_oed - gm I_gm - wm I_wm)       (water in the parenchyma)
    vessels: normal += v (brain I_vessel - normal)
    tumour:  S = (1 - core) normal + (nec I_nec + enh I_enh (1 + 0.1 texture) + solid I_solid)(1 + 0.1 texture)
    (oedema strength o carries its own +-10 % texture: oedema is not uniformly bright)
    """
    csf, gm, wm, ves, brain = t["csf"], t["gm"], t["wm"], t["vessel"], t["brain"]
    o = c["oedema"]
    out = np.empty(csf.shape + (_NUM_MOD,), dtype=np.float32)
    for m in range(_NUM_MOD):
        I = {k: np.float32(v[m]) for k, v in table.items()}
        par = gm * I["gm"] + wm * I["wm"]
        s = csf * I["csf"] + par
        s += o * ((gm + wm) * I["oedema"] - par)
        s += ves * (brain * I["vessel"] - s)
        if texture is not None:
            tx = 1.0 + np.float32(0.1) * texture
            tum = (c["necrosis"] * I["necrosis"] + c["enhancing"] * I["enhancing"] * tx + c["solid"] * I["solid"]) * tx
        else:
            tum = c["necrosis"] * I["necrosis"] + c["enhancing"] * I["enhancing"] + c["solid"] * I["solid"]
        out[..., m] = (1.0 - c["core"]) * s + tum
    return out


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


def _tumour(maps, aff, lesions):
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
    axes = _axes_mm(aff, shape)
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


def make_case(seed: int, downsample: int = 1, *, noise: bool = True) -> Case:
    """Make one BraTS-like case: 4 sequences (FLAIR, T1, T1ce, T2) + label on real anatomy.

    seed: any non-negative int; same seed -> byte-identical arrays.
    downsample: k >= 1; grid ceil(240/k) x ceil(240/k) x ceil(155/k) at k mm, same field of view as BraTS.
    noise: False leaves out the Rician noise (for checks); the image is still integer-valued.
    At downsample <= 2 every case holds all three tumour labels (the tumour is re-drawn otherwise).
    """
    k = int(downsample)
    if k < 1:
        raise ValueError("downsample must be >= 1")
    seed = int(seed)
    ss = np.random.SeedSequence([seed, 0x5eed])
    r_anat, r_tum, r_con, r_bias, r_noise = (np.random.default_rng(s) for s in ss.spawn(5))

    tmaps, aff = _anatomy(k)
    shape = tmaps.shape[1:]
    T = case_transform(r_anat)
    lo, hi = _case_box(aff, shape, T)
    box = tuple(slice(lo[i], hi[i]) for i in range(3))
    aff_box = aff.copy()
    aff_box[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    base = resample_anatomy(tmaps, aff, T, (lo, hi))  # only the box that holds the brain
    vox = float(abs(aff[0, 0]))

    for attempt in range(20):
        n_les = 2 if r_tum.uniform() < 0.2 else 1
        lesions = []
        for i in range(n_les):
            les = sample_lesion(r_tum, primary=(i == 0))
            p_t = sample_centre(r_tum, les["radius_core_mm"] + 6.0)
            les["centre_mm"] = (T[:3, :3] @ p_t + T[:3, 3]).tolist()
            lesions.append(les)
        maps = base.copy()
        c, tex = _tumour(maps, aff_box, lesions)
        brain = maps[0] + maps[1] + maps[2]
        brain_mask = brain > 0.5
        lab_box = tumour_labels(c, brain_mask)
        counts = np.bincount(lab_box.ravel(), minlength=4)
        if k > 2 or np.all(counts[1:] > 0):
            break

    t = dict(zip(("csf", "gm", "wm", "vessel"), maps))
    t["brain"] = brain
    table = contrast_table(r_con)
    clean = compose_image(t, c, table, tex)
    del c, tex
    clean = partial_volume(clean, vox)
    snr = r_noise.uniform(18.0, 32.0)
    sig = []
    img = np.zeros(shape + (_NUM_MOD,), dtype=np.float32)
    axes = _axes_mm(aff_box, brain.shape)
    amps = r_bias.uniform(0.06, 0.12, size=_NUM_MOD)
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

    params = {
        "generator": "sparsesight.data.phantom", "version": GENERATOR_VERSION, "seed": seed, "downsample": k,
        "spacing_mm": float(vox), "shape": list(label.shape), "modalities": list(MODALITIES),
        "anatomy": {"source": "MNI152 ICBM 2009a (nilearn)", "transform_template_to_case": T.tolist()},
        "lesions": [{kk: v for kk, v in les.items()} for les in lesions],
        "attempts": attempt + 1,
        "contrast": {tn: dict(zip(MODALITIES, v)) for tn, v in table.items()},
        "bias_amplitude": amps.tolist(), "snr_wm": float(snr), "noise": bool(noise),
        "noise_sigma": dict(zip(MODALITIES, sig)),
        "label_voxels": {CLASSES[i]: int(n) for i, n in enumerate(counts)},
    }
    params = json.loads(json.dumps(_jsonable(params)))
    return Case(image=img, label=label, affine=aff.copy(), params=params, tissues=tissues)


# ----------------------------------------------------------------------------------------------------------
# Dataset on disk (MSD Task01 layout)
# ----------------------------------------------------------------------------------------------------------
def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` in a dataset made with ``seed`` (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _save(arr, affine, path, dtype):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(arr).astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if dtype is np.int16:
        img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


def write_dataset(out_dir, n_cases: int = 12, seed: int = 0, downsample: int = 1, n_test: int = 2,
                  progress: bool = True) -> Path:
    """Write ``n_cases`` phantoms in the MSD Task01 layout and return the path of dataset.json.

    imagesTr/case_NNN.nii.gz (4D int16, channel last: FLAIR, T1, T1ce, T2), labelsTr/case_NNN.nii.gz (uint8);
    the last ``n_test`` cases go to imagesTs/ + labelsTs/. Case i is make_case(case_seed(seed, i), downsample).
    """
    from tqdm import tqdm

    if n_cases < 1 or not (0 <= n_test <= n_cases):
        raise ValueError("need n_cases >= 1 and 0 <= n_test <= n_cases")
    out = Path(out_dir)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):  # no stale cases from an earlier, larger run
        for f in (out / d).glob("case_[0-9][0-9][0-9].nii.gz"):
            f.unlink()
    n_train = n_cases - n_test
    training, test, seeds = [], [], []
    for i in tqdm(range(n_cases), desc="phantom cases", disable=not progress, unit="case"):
        cs = case_seed(seed, i)
        seeds.append(cs)
        case = make_case(cs, downsample)
        split = "Tr" if i < n_train else "Ts"
        name = f"case_{i:03d}.nii.gz"
        _save(case.image, case.affine, out / f"images{split}" / name, np.int16)
        _save(case.label, case.affine, out / f"labels{split}" / name, np.uint8)
        entry = {"image": f"./images{split}/{name}", "label": f"./labels{split}/{name}"}
        (training if split == "Tr" else test).append(entry)
    meta = {
        "name": "SparseSightPhantom",
        "description": "BraTS-like brain tumour phantom (FLAIR, T1, T1ce, T2) on MNI152 anatomy, made by SparseSight",
        "reference": "MNI ICBM 2009a nonlinear symmetric template (via nilearn); SparseSight phantom generator",
        "licence": "synthetic; anatomy from the MNI ICBM152 2009a template, Copyright (C) 1993-2009 Louis Collins, "
                   "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University "
                   "(distributed with nilearn)",
        "release": GENERATOR_VERSION,
        "tensorImageSize": "4D",
        "modality": {str(i): m for i, m in enumerate(MODALITIES)},
        "labels": {str(i): n for i, n in CLASSES.items()},
        "numTraining": n_train,
        "numTest": n_test,
        "training": training,
        "test": test,
        "sparsesight": {"generator": "sparsesight.data.phantom", "version": GENERATOR_VERSION, "seed": int(seed),
                        "downsample": int(downsample), "spacing_mm": float(downsample), "case_seeds": seeds},
    }
    path = out / "dataset.json"
    path.write_text(json.dumps(meta, indent=2))
    return path
