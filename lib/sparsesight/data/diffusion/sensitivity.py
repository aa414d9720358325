"""What a protocol can say about axon radius: the resolution limit of the radius (Nilsson et al. 2017,
"Resolution limit of cylinder diameter estimation by diffusion MRI: the impact of gradient waveform and
orientation dispersion", NMR Biomed 30:e3711).

A cylinder of radius r attenuates the signal measured perpendicular to it by 1 - E⊥(r, G, Δ, δ). Radius is
detectable when that attenuation exceeds the noise of the mean over the shell's n measurements at a
confidence level α, σ̄ = z_α / (SNR · s_intra · √n), where s_intra is the intra-axonal share of the signal
(the rest carries no radius information). In the long-pulse (Neuman) limit 1 - E⊥ ≈ 7 γ² G² δ r⁴ / (48 D),
which gives Nilsson's closed form d_min = (768/7 · σ̄ D / (γ² δ G²))^(1/4), d = 2r. Here E⊥ is the Gaussian
phase approximation of signal.log_restricted_perp (finite pulses), solved for r on each shell; the protocol's
limit r_min is the smallest over its shells.

Radius is reported only where r_min <= RESOLVABLE_UM = 2 µm: most human axons are 0.5-2 µm in radius
(histology, Aboitiz et al. 1992), so a protocol whose limit lies above 2 µm cannot tell most of them from a
radius of zero, and a fitted radius then reflects noise and the dictionary's prior, not the tissue.

Beside it, per voxel: the Cramér–Rao bound of ν, r, f (`jacobian`, `cramer_rao`) and the quality object a served map
carries from it (`precision_quality`: its MAE floor against the precision the map is read to, PRECISION_AIMS).
"""
from __future__ import annotations

import numpy as np

from .extra_axonal import TORTUOSITY, ExtraAxonalLaw
from .protocol import B0_THRESHOLD, GAMMA, Protocol
from .signal import D_AXON, cos2_angles, free_water_signal, log_restricted_perp

Z_ALPHA = 1.64  # one-sided α = 0.05
RESOLVABLE_UM = 2.0
_R_GRID_UM = np.geomspace(0.05, 30.0, 600)


def noise_floor(snr: float, n: int, intra_share: float = 0.5, z: float = Z_ALPHA) -> float:
    """σ̄ = z_α / (SNR · s_intra · √n): the smallest attenuation the mean of n measurements detects."""
    return float(z / (snr * intra_share * np.sqrt(max(int(n), 1))))


def nilsson_d_min(g: float, small_delta: float, sigma: float, d: float = D_AXON) -> float:
    """Nilsson et al. 2017, eq. 9 (long-pulse limit): the smallest detectable diameter (m)."""
    return float((768.0 / 7.0 * sigma * d / (GAMMA**2 * small_delta * g**2)) ** 0.25)


def radius_limit_gpa(g: float, big_delta: float, small_delta: float, sigma: float, d: float = D_AXON) -> float:
    """The smallest r (µm) with 1 - E⊥(r) >= σ̄ under the GPA of finite pulses (np.inf when none up to 30 µm)."""
    att = 1.0 - np.exp(log_restricted_perp(_R_GRID_UM * 1e-6, g, big_delta, small_delta, d))
    ok = np.nonzero(att >= sigma)[0]
    if not len(ok):
        return float("inf")
    i = int(ok[0])
    if i == 0:
        return float(_R_GRID_UM[0])
    # attenuation grows monotonically with r: interpolate in log r between the bracketing grid points
    lo, hi = np.log(_R_GRID_UM[i - 1]), np.log(_R_GRID_UM[i])
    a0, a1 = att[i - 1], att[i]
    return float(np.exp(lo + (sigma - a0) / max(a1 - a0, 1e-300) * (hi - lo)))


def radius_sensitivity(protocol: Protocol, snr: float = 30.0, intra_share: float = 0.5,
                       tol: float = 100.0) -> dict:
    """The protocol's radius resolution limit per shell and overall, and whether radius maps are reported:
    {"r_min_um", "shell_b", "snr", "intra_share", "shells": [{b, n, G_mT_per_m, r_min_um, r_min_nilsson_um}],
    "resolvable", "threshold_um", "reason"}."""
    rounded = np.round(protocol.bvals / tol) * tol
    rows = []
    for b in np.unique(rounded[protocol.bvals > B0_THRESHOLD]):
        sel = rounded == b
        n = int(sel.sum())
        i = int(np.nonzero(sel)[0][np.argmax(protocol.gradient_strength[sel])])
        g, bd, sd = (float(protocol.gradient_strength[i]), float(protocol.big_deltas[i]),
                     float(protocol.small_deltas[i]))
        sigma = noise_floor(snr, n, intra_share)
        rows.append({"b": float(b), "n": n, "G_mT_per_m": round(1e3 * g, 2),
                     "r_min_um": round(radius_limit_gpa(g, bd, sd, sigma), 3),
                     "r_min_nilsson_um": round(0.5e6 * nilsson_d_min(g, sd, sigma), 3)})
    best = min(rows, key=lambda r: r["r_min_um"])
    r_min = best["r_min_um"]
    ok = bool(r_min <= RESOLVABLE_UM)
    if ok:
        reason = (f"radius resolvable above {r_min:.2f} µm (shell b = {best['b']:g}, G = {best['G_mT_per_m']:g} "
                  f"mT/m, SNR {snr:g}); smaller radii are indistinguishable from {r_min:.2f} µm")
    else:
        reason = (f"radius not resolvable with this protocol: its resolution limit is {r_min:.2f} µm (best shell "
                  f"b = {best['b']:g} s/mm², G = {best['G_mT_per_m']:g} mT/m, SNR {snr:g}), above "
                  f"{RESOLVABLE_UM:g} µm, where most axons lie; stronger gradients (higher b at short δ) are needed")
    return {"r_min_um": r_min, "shell_b": best["b"], "snr": snr, "intra_share": intra_share, "shells": rows,
            "resolvable": ok, "threshold_um": RESOLVABLE_UM, "reason": reason}


def jacobian(protocol: Protocol, u: np.ndarray, nu: np.ndarray, r_um: np.ndarray, f: np.ndarray,
             h_um: float = 1e-3, law: ExtraAxonalLaw = TORTUOSITY) -> np.ndarray:
    """Jᵀ (n, 3K, M), J = ∂S/∂θ of S = Σ_k ν_k S_k(u_k, r_k, f_k) + (1 - Σ_k ν_k) S_fw and
    θ = (ν_1..ν_K, r_1..r_K, f_1..f_K). With S_k = f s_in + (1 - f) s_ex, s_in = exp(-b D cos²θ + sin²θ ln E⊥(r))
    and s_ex = exp(-b D (1 - f sin²θ)) (D⊥ = D (1 - f)):

        ∂S/∂ν_k = S_k - S_fw
        ∂S/∂r_k = ν_k f s_in sin²θ ∂ln E⊥/∂r
        ∂S/∂f_k = ν_k (s_in - s_ex + (1 - f) s_ex b D sin²θ)

    exactly, but for ∂ln E⊥/∂r: a central difference (h_um). Under the Gaussian phase approximation ln E⊥ is G²
    times a function of (r, Δ, δ), so its series is summed once per distinct timing, not per measurement.
    Another extra-axonal `law` (extra_axonal.py) replaces s_ex and b D sin²θ = ∂ln s_ex/∂f by its own."""
    u = np.asarray(u, dtype=np.float64)
    nu, r_um, f = (np.asarray(a, dtype=np.float64) for a in (nu, r_um, f))
    k_pop = nu.shape[1]
    b = protocol.b_si
    s_fw = free_water_signal(protocol)[None]
    timing, which = np.unique(np.stack([protocol.big_deltas, protocol.small_deltas], 1), axis=0, return_inverse=True)
    g2 = protocol.gradient_strength**2

    def per_measurement(unit):  # (n, distinct timings) at G = 1 -> (n, M)
        return unit[:, which.ravel()] * g2

    def unit_log_perp(r):  # ln E⊥ at G = 1 for each distinct timing: (n, T)
        return log_restricted_perp(r[:, None] * 1e-6, 1.0, timing[:, 0], timing[:, 1])

    jac = np.empty((len(nu), 3 * k_pop, protocol.m))  # rows contiguous over the measurements
    for k in range(k_pop):
        u_k = u[:, k] / np.maximum(np.linalg.norm(u[:, k], axis=-1, keepdims=True), 1e-12)
        sin2 = 1.0 - cos2_angles(protocol, u_k)
        r, ff = r_um[:, k], f[:, k, None]
        s_in = np.exp(-b * D_AXON + sin2 * (b * D_AXON + per_measurement(unit_log_perp(r))))
        s_ex = np.exp(law.log_signal(protocol, 1.0 - sin2, ff[:, 0]))
        dlog_ex = law.dlog_df(protocol, 1.0 - sin2, ff[:, 0])
        dlp = per_measurement((unit_log_perp(r + h_um) - unit_log_perp(r - h_um)) / (2 * h_um))
        jac[:, k] = ff * s_in + (1 - ff) * s_ex - s_fw
        jac[:, k_pop + k] = nu[:, k, None] * ff * s_in * sin2 * dlp
        jac[:, 2 * k_pop + k] = nu[:, k, None] * (s_in - s_ex + (1 - ff) * s_ex * dlog_ex)
    return jac


def cramer_rao(protocol: Protocol, u: np.ndarray, nu: np.ndarray, r_um: np.ndarray, f: np.ndarray,
               snr=30.0, chunk: int = 128, law: ExtraAxonalLaw = TORTUOSITY) -> dict:
    """Cramér–Rao bound: the smallest standard deviation any unbiased estimate of ν_k, r_k, f_k can have, per
    voxel, for the model S = Σ_k ν_k S_k(u_k, r_k, f_k) + (1 - Σ_k ν_k) S_fw (extra-axonal signals by `law`).

    Orientations u and Σν + ν_fw = 1 are taken as known (the most an estimator can be told), and the noise as
    Gaussian with σ = 1/SNR on every S0-normalised volume. Rician noise carries less information than that
    (its Fisher information about the amplitude is at most 1/σ²), so under the benchmarks' Rician noise the
    bound holds a fortiori. Fisher information F = Jᵀ J / σ² with J = ∂S/∂θ (jacobian), `chunk` voxels at a time
    (small enough for J to stay in the CPU's caches: 128 took a third of the time of 2048 on HCP MGH).

    u (n, K, 3), nu, r_um, f (n, K); snr a number or one per voxel (n,). Returns {"nu", "r", "f"}: (n, K)
    standard deviations √diag(F⁻¹), inf for a parameter the signal cannot tell (one along a null direction of F,
    e.g. r_k of a population with ν_k = 0); and "nu_fw" (n,): that of ν_fw = 1 - Σ_k ν_k, √(aᵀ F⁻¹ a) with a the
    sum over the ν_k (bounded where the split between the populations is not: two populations along one
    orientation)."""
    nu = np.asarray(nu, dtype=np.float64)
    n, k_pop = nu.shape
    sd = np.empty((n, 3 * k_pop + 1))
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        jac = jacobian(protocol, np.asarray(u)[sl], nu[sl], np.asarray(r_um)[sl], np.asarray(f)[sl], law=law)
        fisher = jac @ jac.transpose(0, 2, 1)  # at SNR 1: F scales as SNR², the bound as 1/SNR
        # F⁻¹'s diagonal on F's range; a parameter with a component along a null direction is not identifiable
        w, vec = np.linalg.eigh(fisher)
        null = w <= 1e-12 * w[:, -1:]
        vec = np.concatenate([vec, vec[:, :k_pop].sum(1, keepdims=True)], 1)  # + the row of a = Σ_k e_ν_k
        var = (vec**2 / np.where(null, np.inf, w)[:, None, :]).sum(-1)
        blind = ((np.abs(vec) > 1e-6) & null[:, None, :]).any(-1)
        sd[sl] = np.where(blind, np.inf, np.sqrt(var))
    sd /= np.broadcast_to(np.asarray(snr, dtype=np.float64), (n,))[:, None]
    return {"nu": sd[:, :k_pop], "r": sd[:, k_pop:2 * k_pop], "f": sd[:, 2 * k_pop:3 * k_pop], "nu_fw": sd[:, -1]}


#: the precision each map is read to: the MAE issue 21 asks of the estimates (ν, r in µm, f)
PRECISION_AIMS = {"nu": 0.03, "r": 0.3, "f": 0.04}


def mae_floor(sd) -> np.ndarray:
    """The smallest mean absolute error of an unbiased estimate with Cramér–Rao standard deviation sd (Gaussian:
    E|e| = √(2/π) σ)."""
    return np.sqrt(2.0 / np.pi) * np.asarray(sd, dtype=np.float64)


def precision_quality(sd: np.ndarray, param: str, label: str, snr_median: float, cap: float) -> dict:
    """The quality object of a map from its voxels' Cramér–Rao standard deviations `sd` (n,), capped at `cap` (the
    parameter's whole range: a bound at the cap says the signal does not bound it): the median MAE floor, the
    share of voxels whose floor is above the map's aim (PRECISION_AIMS) and of voxels the signal does not bound,
    and a flag when the median voxel's floor is above the aim: there the map's finer detail comes from the
    model's prior (training ranges, the dictionary's grid), not from the signal."""
    aim = PRECISION_AIMS[param]
    sd = np.minimum(np.asarray(sd, dtype=np.float64), cap)
    floor = mae_floor(sd)
    n = len(floor)
    med = float(np.median(floor)) if n else float("nan")
    q: dict = {"crlb_mae_floor_median": round(med, 4) if n else None,
               "crlb_share_above_aim": round(float((floor > aim).mean()), 4) if n else None,
               "crlb_share_unbounded": round(float((sd >= cap).mean()), 4) if n else None,
               "crlb_aim": aim, "crlb_voxels": int(n), "flags": []}
    if not n:
        q["flags"].append(f"{label}: no voxel to bound")
    elif med > aim:
        told = "does not bound it" if np.median(sd) >= cap else f"tells it to ±{med:.3g} at best (median)"
        q["flags"].append(f"{label}: the signal {told} at SNR {snr_median:.0f}, above the {aim:g} it is read to "
                          f"(Cramér–Rao); finer detail in this map comes from the model's prior")
    return q
