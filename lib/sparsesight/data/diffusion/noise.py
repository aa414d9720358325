"""The noise of a DWI, for the precision of the maps fitted to it: the noise level σ (in the image's units) and
each voxel's SNR at b = 0, S0 / σ.

σ comes from the repeated b = 0 volumes when there are at least two: each voxel's sample variance s² over
them is σ² χ²_{n-1} / (n - 1) for Gaussian noise, so the median over the brain, scaled by (n - 1) / median(χ²_{n-1}),
is an unbiased and robust estimate (a voxel that moved or pulsates between the b = 0 volumes does not shift
it). The magnitude noise of MRI is Rician; at the b = 0 SNR of brain tissue (> 10) it is Gaussian within 1 %.
With a single b = 0 volume, σ comes from the fit's residual instead (each voxel's residual sum of squares
over its degrees of freedom, same median): that includes whatever the model does not explain, so it
overestimates σ on real data, and the bounds built on it err on the safe side.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def chi2_median_scale(dof) -> np.ndarray:
    """dof / median(χ²_dof): turns the median of s² = σ² χ²_dof / dof into σ²."""
    dof = np.asarray(dof, dtype=np.float64)
    return dof / stats.chi2.median(dof)


def sigma_from_b0(b0_var: np.ndarray, n_b0: int) -> float:
    """σ from the per-voxel sample variances (ddof 1) of n_b0 >= 2 repeated b = 0 volumes."""
    if n_b0 < 2:
        raise ValueError(f"σ from b = 0 repeats needs at least two b = 0 volumes; got {n_b0}")
    v = np.asarray(b0_var, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.sqrt(np.median(v) * chi2_median_scale(n_b0 - 1))) if len(v) else float("nan")


def sigma_from_residual(rss: np.ndarray, dof: np.ndarray) -> float:
    """σ from each voxel's residual sum of squares `rss` (image units²) with `dof` degrees of freedom (the
    measurements less the fit's non-zero weights)."""
    rss, dof = np.asarray(rss, dtype=np.float64), np.asarray(dof, dtype=np.float64)
    ok = np.isfinite(rss) & (dof > 0)
    if not ok.any():
        return float("nan")
    return float(np.sqrt(np.median(rss[ok] / dof[ok]) * chi2_median_scale(np.median(dof[ok]))))


def image_noise(s0: np.ndarray, n_b0: int, b0_var: np.ndarray | None = None, rss: np.ndarray | None = None,
                dof: np.ndarray | None = None) -> dict:
    """σ of the image and every voxel's SNR = S0 / σ: {"sigma", "source", "b0_volumes", "snr" (n,),
    "snr_median"}. From the b = 0 repeats when n_b0 >= 2, else from the fit residual (rss, dof)."""
    if n_b0 >= 2 and b0_var is not None:
        sigma, source = sigma_from_b0(b0_var, n_b0), f"spread of the {n_b0} b = 0 volumes"
    elif rss is not None and dof is not None:
        sigma = sigma_from_residual(rss, dof)
        source = "fit residual (one b = 0 volume): includes model misfit, so σ is high and the bounds safe"
    else:
        raise ValueError("σ needs two or more b = 0 volumes or the fit's residual")
    snr = np.asarray(s0, dtype=np.float64) / sigma if sigma > 0 else np.full(np.shape(s0), np.inf)
    return {"sigma": sigma, "source": source, "b0_volumes": int(n_b0), "snr": snr,
            "snr_median": float(np.median(snr)) if np.size(snr) else float("nan")}
