"""Image formation of the phantom: the per-tissue contrast table, partial volume, bias field and Rician
noise (step 6 of the package docstring)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ... import MODALITIES
from .fields import random_fourier_field

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
