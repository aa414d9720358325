"""The hindered extra-axonal signal of one population of parallel axons: two laws.

Along the axons the hindrance is nil (the cylinders are infinite), so with cos θ = g·u

    ln s_ex = -b D cos²θ + L(b sin²θ; f, timing)

and the laws differ only in L, the signal across the axons:

- ``tortuosity`` (the analytic model's, first order): Gaussian, L = -b⊥ D⊥ with D⊥ = D (1 - f).
- ``mc``: calibrated on Monte-Carlo walkers between randomly packed cylinders (dmipy-sim, packings the benchmark
  does not score; `python -m sparsesight.bench.microstructure_mc generate-extra` then `calibrate`, the fits in
  extra_axonal_mc.json). The walkers' hindrance is not Gaussian: their apparent D⊥ falls with b (kurtosis K > 0)
  and is above D (1 - f) at low b. L is the gamma law

      L = -(3 / K) ln(1 + b⊥ D⊥ K / 3)

  (a gamma distribution of diffusivities of mean D⊥ and kurtosis K: its first two cumulants are D⊥ and K, and it
  stays bounded at high b, where a cumulant expansion diverges). D⊥ and K depend on f and on the diffusion time
  τ = D t / r² (t = Δ - δ/3, r the cylinders' radius): long times (small axons) approach the tortuosity limit,
  short ones (large axons) are faster and more kurtotic. The dictionary's factored basis holds one extra-axonal
  signal per f, not per (r, f), so the law cannot follow the population's own radius: it pools the cylinders of
  REFERENCE_RADII_UM (equal weights; the pooled D⊥ and K are the mixture's first two cumulants) at the
  protocol's own timing. Fractions between the calibrated packings are interpolated linearly; above the densest
  one (RSA packs equal cylinders to 0.5 at most) D⊥ follows Archie's law D⊥ / D = (1 - f)^α, α fitted on the
  packings (they agree on it within 0.044 at HCP timing), and K is held.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InvalidInput
from .protocol import Protocol

D_AXON = 2.0e-9  # as in signal.py (imported from there would be circular)
CALIBRATION_FILE = Path(__file__).with_name("extra_axonal_mc.json")
REFERENCE_RADII_UM = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
D_PERP_MIN = 1e-3  # floor of D⊥ / D (Archie's law reaches 0 at f = 1)
LAWS = ("tortuosity", "mc")
_FACTORS: dict = {}  # gamma_factors' cache


@functools.lru_cache(maxsize=2)
def load_calibration(path: str = str(CALIBRATION_FILE)) -> dict:
    """The calibration's fits: per packing (rows) and cylinder radius (columns) D⊥ / D and K, with τ per radius."""
    cal = json.loads(Path(path).read_text())
    for key in ("fractions", "tau", "dperp_over_d", "kurtosis"):
        cal[key] = np.asarray(cal[key], dtype=np.float64)
    return cal


def radius_coefficients(t_eff_s: np.ndarray, radii_um, cal: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(D⊥ / D, K) of every calibrated packing for cylinders of each radius at each diffusion time t_eff_s (T,):
    (P, R, T) each, the fits interpolated in ln τ, τ = D t / r² (held at the calibrated ends)."""
    cal = cal or load_calibration()
    t = np.atleast_1d(np.asarray(t_eff_s, dtype=np.float64))
    order = np.argsort(cal["tau"])
    log_tau = np.log(cal["tau"][order])
    log_t = np.log(D_AXON * t[None, :] / (np.asarray(radii_um, dtype=np.float64)[:, None] * 1e-6) ** 2)  # (R, T)
    d = np.stack([np.interp(log_t, log_tau, row[order]) for row in cal["dperp_over_d"]])
    k = np.stack([np.interp(log_t, log_tau, row[order]) for row in cal["kurtosis"]])
    return d, k


def pooled_coefficients(t_eff_s: np.ndarray, cal: dict | None = None,
                        radii_um=REFERENCE_RADII_UM) -> tuple[np.ndarray, np.ndarray]:
    """(D⊥ / D, K) of every calibrated packing at each diffusion time t_eff_s (T,): (P, T) each, the per-radius
    coefficients (radius_coefficients) pooled over `radii_um` by the cumulants of the equal-weight mixture:
    D̄ = mean D⊥, K̄ = 3 (mean(K D⊥² / 3) + var D⊥) / D̄²."""
    d, k = radius_coefficients(t_eff_s, radii_um, cal)  # (P, R, T)
    dbar = d.mean(1)
    return dbar, 3 * ((k * d**2 / 3).mean(1) + d.var(1)) / dbar**2


def _in_fraction(f: np.ndarray, fc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """yc (P, T) at the packings fc (P,), interpolated linearly at f (...,) -> (..., T), held outside them."""
    f = np.asarray(f, dtype=np.float64)
    return np.stack([np.interp(f, fc, yc[:, j]) for j in range(yc.shape[1])], -1)


def archie_exponent(fc: np.ndarray, d: np.ndarray) -> np.ndarray:
    """α of D⊥ / D = (1 - f)^α (Archie's law) per diffusion time: the median over the packings of ln(D⊥/D) / ln(1 - f),
    d (P, T) -> (T,). The calibrated packings agree on it within 0.044 (0.636-0.699 at HCP timing)."""
    return np.median(np.log(d) / np.log1p(-fc)[:, None], axis=0)


@dataclass(frozen=True)
class ExtraAxonalLaw:
    """One of LAWS; `log_signal` and `dlog_df` broadcast c2 (..., M) against f (...) (one f per row of c2)."""

    name: str = "tortuosity"

    def __post_init__(self):
        if self.name not in LAWS:
            raise InvalidInput(f"unknown extra-axonal law {self.name!r}: one of {', '.join(LAWS)}")

    def coefficients(self, protocol: Protocol, f) -> tuple[np.ndarray, np.ndarray | None]:
        """(D⊥ in m²/s, K) of fractions f (...) at every measurement: (..., M) each (K None: Gaussian)."""
        f = np.asarray(f, dtype=np.float64)
        if self.name == "tortuosity":
            return np.broadcast_to((D_AXON * (1.0 - f))[..., None], f.shape + (protocol.m,)), None
        timing, which = np.unique(protocol.big_deltas - protocol.small_deltas / 3, return_inverse=True)
        d, k = pooled_coefficients(timing)
        fc = load_calibration()["fractions"]
        # above the densest packing: Archie's law from it on (continuous there), K held
        dense = d[-1] * (np.maximum(1.0 - f, 0.0)[..., None] / (1.0 - fc[-1])) ** archie_exponent(fc, d)
        d_f = np.maximum(np.where((f > fc[-1])[..., None], dense, _in_fraction(f, fc, d)), D_PERP_MIN)
        k_f = _in_fraction(f, fc, k)
        return D_AXON * d_f[..., which.ravel()], k_f[..., which.ravel()]

    def gamma_factors(self, protocol: Protocol, fractions) -> tuple[np.ndarray, np.ndarray]:
        """(b D⊥ K / 3, -3 / K) of the calibrated law for fractions (N_f,) at every measurement, (N_f, M) each, so
        that L = c · ln(1 + sin²θ · a): what the dictionary's basis evaluates per voxel. Cached per protocol
        (b and timing) and fractions: the basis asks for them once per chunk of voxels."""
        f = np.asarray(fractions, dtype=np.float64)
        key = (self.name, protocol.bvals.tobytes(), protocol.big_deltas.tobytes(), protocol.small_deltas.tobytes(),
               f.tobytes())
        if key not in _FACTORS:
            dperp, k = self.coefficients(protocol, f)
            if k is None:
                raise ValueError("the tortuosity law is Gaussian: it has no gamma factors")
            if len(_FACTORS) >= 8:
                _FACTORS.clear()
            _FACTORS[key] = (protocol.b_si * dperp * k / 3.0, -3.0 / k)
        return _FACTORS[key]

    def log_signal(self, protocol: Protocol, c2: np.ndarray, f) -> np.ndarray:
        """ln s_ex for cos²θ c2 (..., M) and fractions f (...): (..., M)."""
        b = protocol.b_si
        dperp, k = self.coefficients(protocol, f)
        if k is None:
            return -b * (dperp + (D_AXON - dperp) * c2)
        return -b * D_AXON * c2 - (3.0 / k) * np.log1p(b * (1.0 - c2) * dperp * k / 3.0)

    def dlog_df(self, protocol: Protocol, c2: np.ndarray, f, h: float = 1e-4) -> np.ndarray:
        """∂ ln s_ex / ∂f: b D sin²θ for the tortuosity law (exact), a central difference for the calibrated one."""
        if self.name == "tortuosity":
            return protocol.b_si * D_AXON * (1.0 - c2)
        f = np.asarray(f, dtype=np.float64)
        return (self.log_signal(protocol, c2, f + h) - self.log_signal(protocol, c2, f - h)) / (2 * h)


TORTUOSITY = ExtraAxonalLaw("tortuosity")


def extra_law(name: str | None) -> ExtraAxonalLaw:
    """The law of a model config's "extra_axonal" (None: the tortuosity law, as models made before it had)."""
    return ExtraAxonalLaw(name or "tortuosity")
