"""Analytic signal model of one population of parallel axons and of free water (see the package docstring)."""
from __future__ import annotations

import functools

import numpy as np
from scipy import special

from .extra_axonal import TORTUOSITY, ExtraAxonalLaw
from .protocol import GAMMA, Protocol

D_AXON = 2.0e-9  # intra- and extra-axonal free diffusivity along the axons, m²/s (paper: D = 2e-9)
D_FREE = 3.0e-9  # free water (CSF), m²/s


@functools.lru_cache(maxsize=4)
def bessel_j1p_roots(n: int = 60) -> np.ndarray:
    """The first n positive roots x_m of J1'(x) = 0 (x_1 = 1.8412...): α_m r = x_m in the cylinder formulae."""
    return special.jnp_zeros(1, n)


def log_restricted_perp(r, g, big_delta, small_delta, d: float = D_AXON, n_roots: int = 60):
    """ln E⊥: restricted diffusion perpendicular to an impermeable cylinder of radius r (m), PGSE with gradient
    G (T/m), Gaussian phase approximation (Van Gelderen et al. 1994; Neuman 1974 for the long-pulse limit):

        ln E⊥ = -2 γ² G² Σ_m [2 D α_m² δ - 2 + 2 e^{-D α_m² δ} + 2 e^{-D α_m² Δ} - e^{-D α_m² (Δ-δ)}
                              - e^{-D α_m² (Δ+δ)}] / [D² α_m⁶ (r² α_m² - 1)]

    with α_m = x_m / r, x_m the roots of J1'. r, g and the timing (a number, or one per measurement) broadcast;
    returns an array of their broadcast shape.
    """
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    big_delta = np.asarray(big_delta, dtype=np.float64)[..., None]
    small_delta = np.asarray(small_delta, dtype=np.float64)[..., None]
    x = bessel_j1p_roots(n_roots)
    a2 = (x / np.maximum(r[..., None], 1e-12)) ** 2  # α_m², (..., n_roots)
    da2 = d * a2
    num = (2 * da2 * small_delta - 2 + 2 * np.exp(-da2 * small_delta) + 2 * np.exp(-da2 * big_delta)
           - np.exp(-da2 * (big_delta - small_delta)) - np.exp(-da2 * (big_delta + small_delta)))
    den = d**2 * a2**3 * (x**2 - 1)  # r² α_m² - 1 = x_m² - 1
    s = (num / den).sum(-1)
    return -2 * GAMMA**2 * g**2 * s


def log_neuman_long_pulse(r, g, small_delta: float, d: float = D_AXON):
    """Neuman's limit of ln E⊥ for D δ >> r²: -7 γ² G² δ r⁴ / (48 D) (long, narrow-cylinder regime)."""
    return -7.0 * GAMMA**2 * np.asarray(g) ** 2 * small_delta * np.asarray(r) ** 4 / (48.0 * d)


def extra_perp_diffusivity(f, d: float = D_AXON):
    """Hindered extra-axonal diffusivity across the axons, first-order tortuosity D⊥ = D (1 - f)."""
    return d * (1.0 - np.asarray(f, dtype=np.float64))


def cos2_angles(protocol: Protocol, u: np.ndarray) -> np.ndarray:
    """cos²θ = (g · u)² for every measurement and orientation: u (..., 3) -> (..., M)."""
    return (np.asarray(u, dtype=np.float64) @ protocol.bvecs.T) ** 2


def intra_log_perp_table(protocol: Protocol, radii_um) -> np.ndarray:
    """L[r, m] = ln E⊥(r, G_m) for radii (µm) and every measurement: (N_r, M). Independent of orientation."""
    r = np.asarray(radii_um, dtype=np.float64)[:, None] * 1e-6
    return log_restricted_perp(r, protocol.gradient_strength[None, :], protocol.big_delta, protocol.small_delta)


def intra_signal(protocol: Protocol, c2: np.ndarray, log_perp: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Intra-axonal signal exp(-b D cos²θ) · exp(sin²θ ln E⊥(r, G)): c2 (..., M), log_perp (N_r, M) ->
    (..., N_r, M), one row per radius contiguous over the measurements (rows of Φᵀ: the exponentials vectorise,
    2x faster than radius-minor), written into `out` when given."""
    c2 = c2[..., None, :]
    arg = np.multiply(1.0 - c2, log_perp, out=out)
    arg += (-D_AXON * protocol.b_si) * c2
    return np.exp(arg, out=arg)


def extra_signal(protocol: Protocol, c2: np.ndarray, fractions, out: np.ndarray | None = None,
                 law: ExtraAxonalLaw = TORTUOSITY) -> np.ndarray:
    """Extra-axonal signal of `law` (extra_axonal.py; the tortuosity law: exp(-b [D⊥ + (D - D⊥) cos²θ]),
    D⊥ = D (1 - f)): c2 (..., M) -> (..., N_f, M), one row per fraction, written into `out` when given."""
    b = protocol.b_si
    if law.name == "tortuosity":
        dperp = extra_perp_diffusivity(fractions)[:, None]  # (N_f, 1)
        arg = np.multiply(c2[..., None, :], -b * (D_AXON - dperp), out=out)
        arg -= b * dperp
        return np.exp(arg, out=arg)
    a, c = law.gamma_factors(protocol, fractions)  # (N_f, M) each: L = c ln(1 + sin²θ a)
    arg = np.multiply(1.0 - c2[..., None, :], a, out=out)
    np.log1p(arg, out=arg)
    arg *= c
    arg -= (b * D_AXON) * c2[..., None, :]
    return np.exp(arg, out=arg)


def free_water_signal(protocol: Protocol) -> np.ndarray:
    """Isotropic free water exp(-b D_free), (M,)."""
    return np.exp(-protocol.b_si * D_FREE)


def single_population_signal(protocol: Protocol, u, r_um, f, law: ExtraAxonalLaw = TORTUOSITY) -> np.ndarray:
    """S_k(u, r, f; P) of one population, written out directly (the reference for the dictionary): (M,)."""
    c2 = cos2_angles(protocol, np.asarray(u, dtype=np.float64) / np.linalg.norm(u))
    b = protocol.b_si
    lp = log_restricted_perp(np.float64(r_um) * 1e-6, protocol.gradient_strength, protocol.big_delta,
                             protocol.small_delta)
    s_in = np.exp(-b * D_AXON * c2 + (1 - c2) * lp)
    s_ex = np.exp(law.log_signal(protocol, c2, np.float64(f)))
    return f * s_in + (1 - f) * s_ex
