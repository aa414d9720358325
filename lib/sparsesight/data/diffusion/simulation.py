"""Simulated voxels of crossing populations with Rician noise, the training data of the networks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dictionary import Grid
from .extra_axonal import TORTUOSITY, ExtraAxonalLaw
from .protocol import Protocol
from .signal import (
    D_AXON,
    cos2_angles,
    free_water_signal,
    log_restricted_perp,
)


def rician(signal: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise φ_SNR of eq. 2 with σ = S0 / SNR (S0 = 1): |S + σ (n_r + i n_i)|."""
    from ..phantom.contrast import rician_noise

    return rician_noise(signal, 1.0 / float(snr), rng).astype(np.float64)


def normalise_s0(y: np.ndarray, protocol: Protocol) -> np.ndarray:
    """y / mean(y at b = 0), per voxel (..., M)."""
    s0 = y[..., protocol.b0_mask].mean(-1, keepdims=True)
    return y / np.where(s0 > 1e-8, s0, 1.0)


def random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def crossing_pair(rng: np.random.Generator, n: int, angle_deg) -> tuple[np.ndarray, np.ndarray]:
    """u1 uniform on the sphere and u2 at the given crossing angle(s) from it, random azimuth."""
    u1 = random_unit(rng, n)
    t = random_unit(rng, n)
    t -= (t * u1).sum(1, keepdims=True) * u1
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    a = np.deg2rad(np.broadcast_to(np.asarray(angle_deg, dtype=np.float64), (n,)))[:, None]
    return u1, np.cos(a) * u1 + np.sin(a) * t


@dataclass
class SimulationRanges:
    """Uniform ranges of the simulated voxels (paper, Section 3.3: biophysically realistic ranges)."""

    nu_min: float = 0.1  # smaller population's share of the axonal volume, ν2/(ν1+ν2) in [nu_min, 0.5]
    r_um: tuple = (0.4, 7.0)
    f: tuple = (0.21, 0.87)
    free_water: tuple = (0.0, 0.1)
    angle_deg: tuple = (30.0, 90.0)


def population_signals(protocol: Protocol, u, r_um, f, law: ExtraAxonalLaw = TORTUOSITY) -> np.ndarray:
    """Vectorised S(u, r, f) for n voxels: u (n, 3), r (n,), f (n,) -> (n, M); extra-axonal by `law`."""
    c2 = cos2_angles(protocol, u)  # (n, M)
    b = protocol.b_si
    lp = log_restricted_perp(np.asarray(r_um)[:, None] * 1e-6, protocol.gradient_strength[None, :],
                             protocol.big_delta, protocol.small_delta)
    s_in = np.exp(-b * D_AXON * c2 + (1 - c2) * lp)
    s_ex = np.exp(law.log_signal(protocol, c2, np.asarray(f, dtype=np.float64)))
    f = np.asarray(f)[:, None]
    return f * s_in + (1 - f) * s_ex


def simulate(protocol: Protocol, n: int, snr: float | None, rng: np.random.Generator | int = 0,
             ranges: SimulationRanges | None = None, grid: Grid | None = None,
             law: ExtraAxonalLaw = TORTUOSITY) -> dict:
    """n voxels of eq. 2 with K = 2 populations and free water: y = φ_SNR(Σ_k ν_k S_k + ν_fw S_fw), S0 = 1,
    extra-axonal signals by `law`.

    Parameters are uniform in `ranges`, or drawn from the grid's values when `grid` is given (on-grid tests).
    Population 1 is the larger one (ν1 >= ν2), the order CSD peaks come in. Returns float64 arrays
    {"signal" (n, M) normalised by the b=0 mean, "clean", "nu" (n, 2), "r" (n, 2) µm, "f" (n, 2), "nu_fw" (n,),
    "u" (n, 2, 3), "angle" (n,) degrees, "snr"}.
    """
    rng = np.random.default_rng(rng)
    p = ranges or SimulationRanges()
    angle = rng.uniform(*p.angle_deg, n)
    u1, u2 = crossing_pair(rng, n, angle)
    if grid is not None:
        r = rng.choice(np.asarray(grid.radii_um), (n, 2))
        f = rng.choice(np.asarray(grid.fractions), (n, 2))
    else:
        r = rng.uniform(*p.r_um, (n, 2))
        f = rng.uniform(*p.f, (n, 2))
    nu_fw = rng.uniform(*p.free_water, n)
    share2 = rng.uniform(p.nu_min, 0.5, n)
    nu = np.stack([(1 - share2), share2], 1) * (1 - nu_fw)[:, None]
    clean = (nu[:, :1] * population_signals(protocol, u1, r[:, 0], f[:, 0], law)
             + nu[:, 1:] * population_signals(protocol, u2, r[:, 1], f[:, 1], law)
             + nu_fw[:, None] * free_water_signal(protocol)[None])
    noisy = clean if snr is None else rician(clean, snr, rng)
    return {"signal": normalise_s0(noisy, protocol), "clean": clean, "nu": nu, "r": r, "f": f, "nu_fw": nu_fw,
            "u": np.stack([u1, u2], 1), "angle": angle, "snr": snr}
