"""The fingerprint dictionary: the (r, f) grid and the sub-dictionaries of each orientation (eqs. 2-5)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .protocol import Protocol
from .signal import (
    cos2_angles,
    extra_signal,
    free_water_signal,
    intra_log_perp_table,
    intra_signal,
)

# the paper's biologically informed (r, f) grid: 34 radii x 23 intra-axonal fractions, N = 782 per population
PAPER_RADII_UM = tuple(np.round(np.arange(0.4, 7.0 + 1e-9, 0.2), 4))
PAPER_FRACTIONS = tuple(np.round(np.arange(0.21, 0.87 + 1e-9, 0.03), 4))


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
    i = intra_signal(protocol, c2, lp).T  # (M, N_r)
    e = extra_signal(protocol, c2, grid.fractions).T  # (M, N_f)
    f = np.asarray(grid.fractions)
    return (f[None, None, :] * i[:, :, None] + (1 - f)[None, None, :] * e[:, None, :]).reshape(protocol.m, -1)


def dictionary(protocol: Protocol, orientations, grid: Grid, free_water: bool = True) -> np.ndarray:
    """The total dictionary D = [C^1 ... C^K (free water)] for K orientations, (M, K N (+1))."""
    cols = [sub_dictionary(protocol, u, grid) for u in np.atleast_2d(orientations)]
    if free_water:
        cols.append(free_water_signal(protocol)[:, None])
    return np.concatenate(cols, 1)
