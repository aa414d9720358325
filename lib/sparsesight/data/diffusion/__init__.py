"""DW-MRI for microstructure fingerprinting (Rensonnet et al., seed 002): protocol, signal model, dictionary,
simulator and a DWI phantom, one module each (protocol, signal, dictionary, simulation, phantom).

Protocol: any PGSE protocol with its timing (Δ, δ per shell, required); the HCP MGH-USC multi-shell protocol
(M = 552: 40 b=0, 64 b=1000, 64 b=3000, 128 b=5000, 256 b=10000 s/mm²; Δ = 21.8 ms, δ = 12.9 ms) for the
served default and simulations. Files (protocol_files): FSL bval/bvec through DIPY, MRtrix b-tables, JSON
sidecars with the timing; units detected and refused when ambiguous. sensitivity: the protocol's radius
resolution limit (Nilsson et al. 2017), which decides whether radius maps are reported.

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

from .dictionary import (
                       PAPER_FRACTIONS,
                       PAPER_RADII_UM,
                       Grid,
                       dictionary,
                       paper_grid,
                       small_grid,
                       sub_dictionary,
)
from .extra_axonal import LAWS as EXTRA_AXONAL_LAWS
from .extra_axonal import TORTUOSITY, ExtraAxonalLaw, extra_law
from .phantom import dwi_phantom, write_dwi_phantom
from .protocol import (
                       B0_THRESHOLD,
                       GAMMA,
                       HCP_MGH_BIG_DELTA,
                       HCP_MGH_SHELLS,
                       HCP_MGH_SMALL_DELTA,
                       MAX_GRADIENT,
                       Protocol,
                       check_gradients,
                       hcp_mgh_protocol,
                       read_bvals_bvecs,
                       write_bvals_bvecs,
)
from .protocol_files import (
                       build_protocol,
                       read_mrtrix,
                       read_protocol,
                       read_sidecar,
                       write_sidecar,
)
from .sensitivity import cramer_rao, radius_sensitivity
from .signal import (
                       D_AXON,
                       D_FREE,
                       bessel_j1p_roots,
                       cos2_angles,
                       extra_perp_diffusivity,
                       extra_signal,
                       free_water_signal,
                       intra_log_perp_table,
                       intra_signal,
                       log_neuman_long_pulse,
                       log_restricted_perp,
                       single_population_signal,
)
from .simulation import (
                       SimulationRanges,
                       crossing_pair,
                       normalise_s0,
                       population_signals,
                       random_unit,
                       rician,
                       simulate,
)

__all__ = ["B0_THRESHOLD", "D_AXON", "D_FREE", "GAMMA", "HCP_MGH_BIG_DELTA", "HCP_MGH_SHELLS", "HCP_MGH_SMALL_DELTA",
           "MAX_GRADIENT", "build_protocol", "read_mrtrix", "read_protocol", "read_sidecar", "write_sidecar",
           "cramer_rao", "radius_sensitivity", "PAPER_FRACTIONS", "PAPER_RADII_UM", "Grid", "Protocol", "SimulationRanges", "bessel_j1p_roots",
           "check_gradients", "cos2_angles", "crossing_pair", "dictionary", "dwi_phantom", "EXTRA_AXONAL_LAWS",
           "ExtraAxonalLaw", "TORTUOSITY", "extra_law", "extra_perp_diffusivity",
           "extra_signal", "free_water_signal", "hcp_mgh_protocol", "intra_log_perp_table", "intra_signal",
           "log_neuman_long_pulse", "log_restricted_perp", "normalise_s0", "paper_grid", "population_signals",
           "random_unit", "read_bvals_bvecs", "rician", "simulate", "single_population_signal", "small_grid",
           "sub_dictionary", "write_bvals_bvecs", "write_dwi_phantom"]
