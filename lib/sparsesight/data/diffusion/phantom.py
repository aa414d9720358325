"""A DWI phantom: crossing fibre populations on the phantom anatomy, written with its gradient table."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .extra_axonal import extra_law
from .protocol import Protocol, hcp_mgh_protocol, write_bvals_bvecs
from .protocol_files import write_sidecar
from .signal import free_water_signal
from .simulation import population_signals


def _unit_field(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def dwi_phantom(protocol: Protocol | None = None, downsample: int = 3, slices: int = 3, snr: float = 50.0,
                seed: int = 0, extra_axonal: str = "tortuosity") -> dict:
    """A DWI slab on the MNI152 anatomy (nilearn's template via sparsesight.data.phantom) with two crossing
    white-matter fibre populations.

    Fibre geometry: population A runs left-right and bends upwards with distance from the midline (callosal
    fibres), population B runs inferior-superior and tilts forward (projection fibres); B's share is largest in
    a lateral band on each side (the centrum-semiovale crossing). r and f are smooth random fields in the
    paper's ranges. CSF is free water; grey matter an isotropic 0.8e-9 m²/s compartment (outside the model,
    masked out by the WM mask). Rician noise at `snr` relative to the WM S0. The slab is `slices` axial
    slices through the corona radiata at `downsample` mm. The populations' extra-axonal signal follows the law
    named by `extra_axonal` (data/diffusion/extra_axonal.py).

    Returns {"dwi" (X, Y, Z, M) float32, "affine", "protocol", "mask" (WM > 0.5), "truth": {"nu": (X, Y, Z, 2),
    "r", "f", "nu_fw", "u" (X, Y, Z, 2, 3)}}.
    """
    from ..phantom.anatomy import anatomy_on_grid, grid_axes_mm
    from ..phantom.contrast import rician_noise
    from ..phantom.fields import random_fourier_field

    protocol = protocol or hcp_mgh_protocol()
    rng = np.random.default_rng(seed)
    maps, aff = anatomy_on_grid(int(downsample))
    csf, gm, wm = maps[0], maps[1], maps[2]
    axes = grid_axes_mm(aff, csf.shape)
    # the slab: `slices` axial slices around z = +20 mm (MNI), where callosal and projection fibres cross
    kz = int(np.argmin(np.abs(axes[2] - 20.0)))
    z0 = max(0, kz - slices // 2)
    sl = slice(z0, z0 + slices)
    csf, gm, wm = csf[..., sl], gm[..., sl], wm[..., sl]
    aff = aff.copy()
    aff[:3, 3] = aff[:3, :3] @ np.array([0, 0, z0]) + aff[:3, 3]
    axes = grid_axes_mm(aff, csf.shape)
    x, y, z = np.meshgrid(*axes, indexing="ij")

    lat = np.clip(np.abs(x) / 60.0, 0, 1)
    ua = _unit_field(np.stack([np.ones_like(x), 0.15 * np.sin(y / 25.0), 0.8 * lat * np.sign(x) + 0 * z], -1))
    ub = _unit_field(np.stack([0.25 * np.sign(x) * (1 - lat), 0.35 + 0.002 * y, np.ones_like(x)], -1))
    share_b = 0.15 + 0.35 * np.exp(-((np.abs(x) - 25.0) / 12.0) ** 2)  # B's share of the axonal volume
    amp = lambda ell: random_fourier_field(rng, axes, ell, 24)  # noqa: E731 - smooth field in ~[-1, 1]
    r = np.stack([3.0 + 1.8 * np.tanh(amp(20.0)), 3.0 + 1.8 * np.tanh(amp(20.0))], -1).clip(0.4, 7.0)
    f = np.stack([0.6 + 0.18 * np.tanh(amp(25.0)), 0.55 + 0.18 * np.tanh(amp(25.0))], -1).clip(0.21, 0.87)
    big = share_b <= 0.5  # population 1 is the larger one
    u = np.where(big[..., None, None], np.stack([ua, ub], -2), np.stack([ub, ua], -2))
    share = np.where(big, share_b, 1 - share_b)
    tissue = np.maximum(csf + gm + wm, 1e-6)
    w_wm, w_gm, w_csf = wm / tissue, gm / tissue, csf / tissue
    nu = np.stack([1 - share, share], -1) * w_wm[..., None]
    brain = tissue > 0.05

    sig = np.zeros(csf.shape + (protocol.m,), dtype=np.float64)
    idx = np.nonzero(brain)
    law = extra_law(extra_axonal)
    for k in range(2):
        sk = population_signals(protocol, u[idx][:, k], r[idx][:, k], f[idx][:, k], law)
        sig[idx] += nu[idx][:, k:k + 1] * sk
    sig[idx] += w_csf[idx][:, None] * free_water_signal(protocol)[None]
    sig[idx] += w_gm[idx][:, None] * np.exp(-protocol.b_si * 0.8e-9)[None]
    s0 = 1000.0
    sig *= (s0 * tissue.clip(0, 1))[..., None]
    dwi = rician_noise(sig, s0 / snr, rng)
    mask = (wm > 0.5) & brain
    return {"dwi": dwi.astype(np.float32), "affine": aff, "protocol": protocol, "mask": mask,
            "truth": {"nu": nu.astype(np.float32), "r": r.astype(np.float32), "f": f.astype(np.float32),
                      "nu_fw": w_csf.astype(np.float32), "u": u.astype(np.float32)}}


def write_dwi_phantom(out_dir, protocol: Protocol | None = None, downsample: int = 3, slices: int = 3,
                      snr: float = 50.0, seed: int = 0, name: str = "dwi_000", extra_axonal: str = "tortuosity") -> dict:
    """Write the phantom as `<name>.nii.gz` (+ .bval/.bvec sidecars and the timing in `<name>.json`), `<name>_mask.nii.gz` and the ground truth
    `<name>_truth_<param>.nii.gz`; returns the paths."""
    from ..io import save_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ph = dwi_phantom(protocol, downsample, slices, snr, seed, extra_axonal)
    paths = {"dwi": save_nifti(ph["dwi"], ph["affine"], out / f"{name}.nii.gz")}
    paths["bval"], paths["bvec"] = write_bvals_bvecs(ph["protocol"], out / name)
    paths["json"] = write_sidecar(ph["protocol"], out / f"{name}.json")  # Δ, δ: the timing FSL files lack
    paths["mask"] = save_nifti(ph["mask"].astype(np.uint8), ph["affine"], out / f"{name}_mask.nii.gz")
    t = ph["truth"]
    for k in ("nu", "r", "f"):
        paths[k] = save_nifti(t[k], ph["affine"], out / f"{name}_truth_{k}.nii.gz")
    paths["u"] = save_nifti(t["u"].reshape(t["u"].shape[:3] + (6,)), ph["affine"], out / f"{name}_truth_peaks.nii.gz")
    return paths
