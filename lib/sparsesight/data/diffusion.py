"""DW-MRI for microstructure fingerprinting (Rensonnet et al., seed 002): protocol, signal model, dictionary,
simulator and a DWI phantom.

Protocol: the HCP MGH-USC multi-shell PGSE protocol (M = 552: 40 b=0, 64 b=1000, 64 b=3000, 128 b=5000,
256 b=10000 s/mm²; Δ = 21.8 ms, δ = 12.9 ms), FSL bval/bvec files in DIPY's conventions.

Signal model of one population of parallel axons (orientation u, axon radius r, intra-axonal fraction f).
The paper simulates it by Monte Carlo (S_MC of eq. 2, two days of pre-computation); here the same physics is
analytic:

    S(u, r, f) = f · exp(-b D cos²θ) · E⊥(r, G sinθ) + (1 - f) · exp(-b [D⊥(f) + (D - D⊥(f)) cos²θ])

with cos θ = g·u, E⊥ the restricted signal in an impermeable cylinder under the Gaussian phase approximation
for PGSE (Van Gelderen et al. 1994, eq. in `log_restricted_perp`), hindered extra-axonal diffusion with the
tortuosity D⊥ = D (1 - f), D = 2e-9 m²/s. Free water (CSF) is one isotropic atom exp(-b · 3e-9 m²/s).
Because ln E⊥ is quadratic in G, ln E⊥(r, G sinθ) = sin²θ · ln E⊥(r, G): the dictionary of a population for
any orientation is built from an (r × protocol) table, without re-simulating.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import special

from ..errors import InvalidInput

GAMMA = 2.6752218744e8  # proton gyromagnetic ratio, rad s^-1 T^-1
D_AXON = 2.0e-9  # intra- and extra-axonal free diffusivity along the axons, m²/s (paper: D = 2e-9)
D_FREE = 3.0e-9  # free water (CSF), m²/s
B0_THRESHOLD = 50.0  # s/mm²: volumes at or below are b = 0 (DIPY's default)

# HCP MGH-USC Adult Diffusion protocol (Setsompop et al. 2013), as in the authors' fingerprinting dictionary
HCP_MGH_SHELLS = ((0.0, 40), (1000.0, 64), (3000.0, 64), (5000.0, 128), (10000.0, 256))
HCP_MGH_BIG_DELTA = 21.8e-3  # s
HCP_MGH_SMALL_DELTA = 12.9e-3  # s
HCP_MGH_TE = 57e-3  # s (not used by the model: T2 weighting cancels in S/S0)

# the paper's biologically informed (r, f) grid: 34 radii x 23 intra-axonal fractions, N = 782 per population
PAPER_RADII_UM = tuple(np.round(np.arange(0.4, 7.0 + 1e-9, 0.2), 4))
PAPER_FRACTIONS = tuple(np.round(np.arange(0.21, 0.87 + 1e-9, 0.03), 4))


# ------------------------------------------------------------------------------------------------ protocol
def hemisphere_directions(n: int, twist: float = 0.0) -> np.ndarray:
    """n unit vectors spread evenly over the half-sphere z >= 0 (Fibonacci spiral), (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # uniform in z over (0, 1]: equal areas
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i + twist
    s = np.sqrt(1.0 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], 1)


@dataclass
class Protocol:
    """A PGSE protocol: b-values (s/mm², FSL/DIPY units), unit gradient directions, pulse timing (s).

    Every measurement shares Δ and δ (as in the HCP MGH protocol); the gradient strength of each follows
    from b = γ² G² δ² (Δ - δ/3).
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    big_delta: float = HCP_MGH_BIG_DELTA
    small_delta: float = HCP_MGH_SMALL_DELTA
    name: str = "custom"

    def __post_init__(self):
        self.bvals = np.asarray(self.bvals, dtype=np.float64).reshape(-1)
        bvecs = np.asarray(self.bvecs, dtype=np.float64)
        if bvecs.ndim == 2 and bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
            bvecs = bvecs.T  # FSL stores 3 rows
        self.bvecs = bvecs
        check_gradients(self.bvals, self.bvecs)
        if not (0 < self.small_delta <= self.big_delta):
            raise InvalidInput(f"pulse timing must satisfy 0 < δ <= Δ; got δ={self.small_delta} s, "
                               f"Δ={self.big_delta} s")
        n = np.linalg.norm(self.bvecs, axis=1, keepdims=True)
        self.bvecs = np.where(n > 1e-6, self.bvecs / np.maximum(n, 1e-12), 0.0)

    @property
    def m(self) -> int:
        return len(self.bvals)

    @property
    def b_si(self) -> np.ndarray:
        """b-values in s/m²."""
        return self.bvals * 1e6

    @property
    def b0_mask(self) -> np.ndarray:
        return self.bvals <= B0_THRESHOLD

    @property
    def gradient_strength(self) -> np.ndarray:
        """G (T/m) of each measurement from b = γ² G² δ² (Δ - δ/3)."""
        d, big = self.small_delta, self.big_delta
        return np.sqrt(np.maximum(self.b_si, 0.0) / (GAMMA**2 * d**2 * (big - d / 3.0)))

    def shells(self, tol: float = 100.0) -> np.ndarray:
        """The distinct b-values (rounded to `tol`)."""
        return np.unique(np.round(self.bvals / tol) * tol)

    def gtab(self):
        """DIPY GradientTable (with Δ, δ in ms as DIPY stores them)."""
        from dipy.core.gradients import gradient_table

        return gradient_table(self.bvals, bvecs=self.bvecs, big_delta=self.big_delta * 1e3,
                              small_delta=self.small_delta * 1e3, b0_threshold=B0_THRESHOLD)

    def subset(self, idx) -> "Protocol":
        idx = np.asarray(idx)
        return Protocol(self.bvals[idx], self.bvecs[idx], self.big_delta, self.small_delta, self.name + "-subset")

    def to_config(self) -> dict:
        return {"bvals": [float(b) for b in self.bvals], "bvecs": np.round(self.bvecs, 6).tolist(),
                "big_delta": float(self.big_delta), "small_delta": float(self.small_delta), "name": self.name}

    @classmethod
    def from_config(cls, c: dict) -> "Protocol":
        return cls(np.asarray(c["bvals"]), np.asarray(c["bvecs"]), float(c["big_delta"]), float(c["small_delta"]),
                   c.get("name", "custom"))


def check_gradients(bvals: np.ndarray, bvecs: np.ndarray, n_volumes: int | None = None) -> None:
    """Refuse gradient tables that cannot describe the image (InvalidInput with the reason)."""
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise InvalidInput(f"bvecs must be 3 x M (FSL) or M x 3; got shape {bvecs.shape}")
    if len(bvals) != len(bvecs):
        raise InvalidInput(f"{len(bvals)} b-values but {len(bvecs)} gradient directions: bval and bvec must list "
                           f"the same volumes")
    if n_volumes is not None and len(bvals) != n_volumes:
        raise InvalidInput(f"the image has {n_volumes} volumes but bval/bvec describe {len(bvals)}: they must "
                           f"list one entry per volume, in the image's order")
    if not (np.isfinite(bvals).all() and np.isfinite(bvecs).all()):
        raise InvalidInput("bval/bvec hold NaN or Inf values")
    if (bvals < 0).any():
        raise InvalidInput("b-values must be >= 0 (s/mm²)")
    if not (bvals <= B0_THRESHOLD).any():
        raise InvalidInput(f"no b = 0 volume (b <= {B0_THRESHOLD:g} s/mm²): the signal cannot be normalised by S0")
    if not (bvals > B0_THRESHOLD).any():
        raise InvalidInput("no diffusion-weighted volume (every b-value is 0)")
    norms = np.linalg.norm(bvecs[bvals > B0_THRESHOLD], axis=1)
    if (np.abs(norms - 1.0) > 0.1).any():
        raise InvalidInput("every diffusion-weighted volume needs a unit gradient direction in bvec")


def hcp_mgh_protocol(subsample: int = 1) -> Protocol:
    """The HCP MGH-USC protocol, M = 552 (paper, Section 3.1); `subsample` k keeps every k-th volume per shell
    (at least 2 b=0), e.g. k=4 gives M = 138 for fast tests."""
    bvals, bvecs = [], []
    for s, (b, n) in enumerate(HCP_MGH_SHELLS):
        keep = max(n // int(subsample), 2 if b == 0 else 6)
        if b == 0:
            bvals += [0.0] * keep
            bvecs += [[0.0, 0.0, 0.0]] * keep
        else:
            bvals += [b] * keep
            bvecs += hemisphere_directions(keep, twist=0.7 * s).tolist()
    name = "hcp-mgh" if subsample == 1 else f"hcp-mgh/{subsample}"
    return Protocol(np.array(bvals), np.array(bvecs), HCP_MGH_BIG_DELTA, HCP_MGH_SMALL_DELTA, name)


def read_bvals_bvecs(bval_path, bvec_path, big_delta: float = HCP_MGH_BIG_DELTA,
                     small_delta: float = HCP_MGH_SMALL_DELTA) -> Protocol:
    """FSL bval/bvec files -> Protocol (read by dipy.io.read_bvals_bvecs)."""
    from dipy.io import read_bvals_bvecs as dipy_read

    try:
        bvals, bvecs = dipy_read(str(bval_path), str(bvec_path))
    except (OSError, IOError, ValueError) as e:
        raise InvalidInput(f"cannot read bval/bvec ({Path(bval_path).name}, {Path(bvec_path).name}): {e}") from None
    return Protocol(bvals, bvecs, big_delta, small_delta, Path(bval_path).stem)


def write_bvals_bvecs(protocol: Protocol, stem) -> tuple[Path, Path]:
    """Write `<stem>.bval` (one row) and `<stem>.bvec` (3 rows), FSL format."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    bval, bvec = Path(f"{stem}.bval"), Path(f"{stem}.bvec")
    np.savetxt(bval, protocol.bvals[None], fmt="%g")
    np.savetxt(bvec, protocol.bvecs.T, fmt="%.6f")
    return bval, bvec


# ------------------------------------------------------------------------------------------------ signal model
@functools.lru_cache(maxsize=4)
def bessel_j1p_roots(n: int = 60) -> np.ndarray:
    """The first n positive roots x_m of J1'(x) = 0 (x_1 = 1.8412...): α_m r = x_m in the cylinder formulae."""
    return special.jnp_zeros(1, n)


def log_restricted_perp(r, g, big_delta: float, small_delta: float, d: float = D_AXON, n_roots: int = 60):
    """ln E⊥: restricted diffusion perpendicular to an impermeable cylinder of radius r (m), PGSE with gradient
    G (T/m), Gaussian phase approximation (Van Gelderen et al. 1994; Neuman 1974 for the long-pulse limit):

        ln E⊥ = -2 γ² G² Σ_m [2 D α_m² δ - 2 + 2 e^{-D α_m² δ} + 2 e^{-D α_m² Δ} - e^{-D α_m² (Δ-δ)}
                              - e^{-D α_m² (Δ+δ)}] / [D² α_m⁶ (r² α_m² - 1)]

    with α_m = x_m / r, x_m the roots of J1'. r and g broadcast; returns an array of their broadcast shape.
    """
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
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


def intra_signal(protocol: Protocol, c2: np.ndarray, log_perp: np.ndarray) -> np.ndarray:
    """Intra-axonal signal exp(-b D cos²θ) · exp(sin²θ ln E⊥(r, G)): c2 (..., M), log_perp (N_r, M) ->
    (..., M, N_r)."""
    b = protocol.b_si
    c2 = c2[..., :, None]
    return np.exp(-b[:, None] * D_AXON * c2 + (1.0 - c2) * log_perp.T)


def extra_signal(protocol: Protocol, c2: np.ndarray, fractions) -> np.ndarray:
    """Extra-axonal signal exp(-b [D⊥ + (D - D⊥) cos²θ]), D⊥ = D (1 - f): (..., M) -> (..., M, N_f)."""
    dperp = extra_perp_diffusivity(fractions)  # (N_f,)
    b = protocol.b_si[:, None]
    return np.exp(-b * (dperp + (D_AXON - dperp) * c2[..., :, None]))


def free_water_signal(protocol: Protocol) -> np.ndarray:
    """Isotropic free water exp(-b D_free), (M,)."""
    return np.exp(-protocol.b_si * D_FREE)


def single_population_signal(protocol: Protocol, u, r_um, f) -> np.ndarray:
    """S_k(u, r, f; P) of one population, written out directly (the reference for the dictionary): (M,)."""
    c2 = cos2_angles(protocol, np.asarray(u, dtype=np.float64) / np.linalg.norm(u))
    b = protocol.b_si
    lp = log_restricted_perp(np.float64(r_um) * 1e-6, protocol.gradient_strength, protocol.big_delta,
                             protocol.small_delta)
    s_in = np.exp(-b * D_AXON * c2 + (1 - c2) * lp)
    dperp = extra_perp_diffusivity(f)
    s_ex = np.exp(-b * (dperp + (D_AXON - dperp) * c2))
    return f * s_in + (1 - f) * s_ex


# ------------------------------------------------------------------------------------------------ dictionary
@dataclass
class Grid:
    """The (r, f) grid of a sub-dictionary: atom j = (radii[j // n_f], fractions[j % n_f])."""

    radii_um: tuple = PAPER_RADII_UM
    fractions: tuple = PAPER_FRACTIONS
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.radii_um) * len(self.fractions)

    @property
    def r_of_atom(self) -> np.ndarray:
        return np.repeat(np.asarray(self.radii_um, dtype=np.float64), len(self.fractions))

    @property
    def f_of_atom(self) -> np.ndarray:
        return np.tile(np.asarray(self.fractions, dtype=np.float64), len(self.radii_um))

    def atom(self, r_um: float, f: float) -> int:
        ir = int(np.argmin(np.abs(np.asarray(self.radii_um) - r_um)))
        jf = int(np.argmin(np.abs(np.asarray(self.fractions) - f)))
        return ir * len(self.fractions) + jf

    def to_config(self) -> dict:
        return {"radii_um": [float(x) for x in self.radii_um], "fractions": [float(x) for x in self.fractions]}


def paper_grid() -> Grid:
    """N = 782: r 0.4-7.0 µm (34 values) x f 0.21-0.87 (23 values)."""
    return Grid()


def small_grid(n_r: int = 12, n_f: int = 8) -> Grid:
    """A subsampled grid over the paper's ranges (for tests and fast serving)."""
    return Grid(tuple(np.round(np.linspace(0.4, 7.0, n_r), 4)), tuple(np.round(np.linspace(0.21, 0.87, n_f), 4)))


def sub_dictionary(protocol: Protocol, u, grid: Grid) -> np.ndarray:
    """C^k for orientation u: (M, N) with column j = S(u, r_j, f_j; P) (fingerprints of Section 3.2)."""
    c2 = cos2_angles(protocol, np.asarray(u, dtype=np.float64) / np.linalg.norm(u))
    lp = intra_log_perp_table(protocol, grid.radii_um)
    i = intra_signal(protocol, c2, lp)  # (M, N_r)
    e = extra_signal(protocol, c2, grid.fractions)  # (M, N_f)
    f = np.asarray(grid.fractions)
    return (f[None, None, :] * i[:, :, None] + (1 - f)[None, None, :] * e[:, None, :]).reshape(protocol.m, -1)


def dictionary(protocol: Protocol, orientations, grid: Grid, free_water: bool = True) -> np.ndarray:
    """The total dictionary D = [C^1 ... C^K (free water)] for K orientations, (M, K N (+1))."""
    cols = [sub_dictionary(protocol, u, grid) for u in np.atleast_2d(orientations)]
    if free_water:
        cols.append(free_water_signal(protocol)[:, None])
    return np.concatenate(cols, 1)


# ------------------------------------------------------------------------------------------------ simulation
def rician(signal: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise φ_SNR of eq. 2 with σ = S0 / SNR (S0 = 1): |S + σ (n_r + i n_i)|."""
    from .phantom import rician_noise

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


def population_signals(protocol: Protocol, u, r_um, f) -> np.ndarray:
    """Vectorised S(u, r, f) for n voxels: u (n, 3), r (n,), f (n,) -> (n, M)."""
    c2 = cos2_angles(protocol, u)  # (n, M)
    b = protocol.b_si
    lp = log_restricted_perp(np.asarray(r_um)[:, None] * 1e-6, protocol.gradient_strength[None, :],
                             protocol.big_delta, protocol.small_delta)
    s_in = np.exp(-b * D_AXON * c2 + (1 - c2) * lp)
    dperp = extra_perp_diffusivity(f)[:, None]
    s_ex = np.exp(-b * (dperp + (D_AXON - dperp) * c2))
    f = np.asarray(f)[:, None]
    return f * s_in + (1 - f) * s_ex


def simulate(protocol: Protocol, n: int, snr: float | None, rng: np.random.Generator | int = 0,
             ranges: SimulationRanges | None = None, grid: Grid | None = None) -> dict:
    """n voxels of eq. 2 with K = 2 populations and free water: y = φ_SNR(Σ_k ν_k S_k + ν_fw S_fw), S0 = 1.

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
    clean = (nu[:, :1] * population_signals(protocol, u1, r[:, 0], f[:, 0])
             + nu[:, 1:] * population_signals(protocol, u2, r[:, 1], f[:, 1])
             + nu_fw[:, None] * free_water_signal(protocol)[None])
    noisy = clean if snr is None else rician(clean, snr, rng)
    return {"signal": normalise_s0(noisy, protocol), "clean": clean, "nu": nu, "r": r, "f": f, "nu_fw": nu_fw,
            "u": np.stack([u1, u2], 1), "angle": angle, "snr": snr}


# ------------------------------------------------------------------------------------------------ phantom
def _unit_field(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def dwi_phantom(protocol: Protocol | None = None, downsample: int = 3, slices: int = 3, snr: float = 50.0,
                seed: int = 0) -> dict:
    """A DWI slab on the MNI152 anatomy (nilearn's template via sparsesight.data.phantom) with two crossing
    white-matter fibre populations.

    Fibre geometry: population A runs left-right and bends upwards with distance from the midline (callosal
    fibres), population B runs inferior-superior and tilts forward (projection fibres); B's share is largest in
    a lateral band on each side (the centrum-semiovale crossing). r and f are smooth random fields in the
    paper's ranges. CSF is free water; grey matter an isotropic 0.8e-9 m²/s compartment (outside the model,
    masked out by the WM mask). Rician noise at `snr` relative to the WM S0. The slab is `slices` axial
    slices through the corona radiata at `downsample` mm.

    Returns {"dwi" (X, Y, Z, M) float32, "affine", "protocol", "mask" (WM > 0.5), "truth": {"nu": (X, Y, Z, 2),
    "r", "f", "nu_fw", "u" (X, Y, Z, 2, 3)}}.
    """
    from .phantom import _anatomy, _axes_mm, random_fourier_field, rician_noise

    protocol = protocol or hcp_mgh_protocol()
    rng = np.random.default_rng(seed)
    maps, aff = _anatomy(int(downsample))
    csf, gm, wm = maps[0], maps[1], maps[2]
    axes = _axes_mm(aff, csf.shape)
    # the slab: `slices` axial slices around z = +20 mm (MNI), where callosal and projection fibres cross
    kz = int(np.argmin(np.abs(axes[2] - 20.0)))
    z0 = max(0, kz - slices // 2)
    sl = slice(z0, z0 + slices)
    csf, gm, wm = csf[..., sl], gm[..., sl], wm[..., sl]
    aff = aff.copy()
    aff[:3, 3] = aff[:3, :3] @ np.array([0, 0, z0]) + aff[:3, 3]
    axes = _axes_mm(aff, csf.shape)
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
    for k in range(2):
        sk = population_signals(protocol, u[idx][:, k], r[idx][:, k], f[idx][:, k])
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
                      snr: float = 50.0, seed: int = 0, name: str = "dwi_000") -> dict:
    """Write the phantom as `<name>.nii.gz` (+ .bval/.bvec sidecars), `<name>_mask.nii.gz` and the ground truth
    `<name>_truth_<param>.nii.gz`; returns the paths."""
    from .io import save_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ph = dwi_phantom(protocol, downsample, slices, snr, seed)
    paths = {"dwi": save_nifti(ph["dwi"], ph["affine"], out / f"{name}.nii.gz")}
    paths["bval"], paths["bvec"] = write_bvals_bvecs(ph["protocol"], out / name)
    paths["mask"] = save_nifti(ph["mask"].astype(np.uint8), ph["affine"], out / f"{name}_mask.nii.gz")
    t = ph["truth"]
    for k in ("nu", "r", "f"):
        paths[k] = save_nifti(t[k], ph["affine"], out / f"{name}_truth_{k}.nii.gz")
    paths["u"] = save_nifti(t["u"].reshape(t["u"].shape[:3] + (6,)), ph["affine"], out / f"{name}_truth_peaks.nii.gz")
    return paths
