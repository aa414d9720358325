"""Random smooth fields and shapes the phantom is drawn with (all geometry in mm)."""
from __future__ import annotations

import math

import numpy as np


def random_fourier_field(rng: np.random.Generator, axes_mm, length_scale: float, n_features: int = 32) -> np.ndarray:
    """Smooth stationary Gaussian random field on an axis-aligned grid (random Fourier features).

    f(x) = sqrt(2/J) sum_j cos(w_j . x + phi_j),   w_j ~ N(0, I / l^2),  phi_j ~ U(0, 2 pi)

    has zero mean, unit variance and covariance exp(-|d|^2 / (2 l^2)) as J grows. Because the grid is
    separable, cos(w.x + phi) = Re(e^{i phi} e^{i w_x x} e^{i w_y y} e^{i w_z z}) is evaluated as one matrix
    product, and the field is defined in mm: the same draw gives the same field at any voxel size.
    """
    x, y, z = (np.asarray(a, dtype=np.float64) for a in axes_mm)
    w = rng.normal(0.0, 1.0 / length_scale, size=(n_features, 3))
    phi = rng.uniform(0.0, 2 * np.pi, size=n_features)
    ex = np.exp(1j * (w[:, :1] * x[None] + phi[:, None]))  # (J, X)
    ey = np.exp(1j * w[:, 1:2] * y[None])  # (J, Y)
    ez = np.exp(1j * w[:, 2:3] * z[None])  # (J, Z)
    gxy = (ex[:, :, None] * ey[:, None, :]).reshape(n_features, -1)  # (J, X*Y)
    # Re(G^T E) = Re(G)^T Re(E) - Im(G)^T Im(E): two real matrix products in float64, so that BLAS kernels
    # of other CPUs round the float32 result the same way
    f = np.ascontiguousarray(gxy.real.T) @ np.ascontiguousarray(ez.real)
    f -= np.ascontiguousarray(gxy.imag.T) @ np.ascontiguousarray(ez.imag)
    f *= math.sqrt(2.0 / n_features)
    return f.astype(np.float32).reshape(len(x), len(y), len(z))


def radial_modulation(u: np.ndarray, directions: np.ndarray, amplitudes: np.ndarray, kappas: np.ndarray) -> np.ndarray:
    """Smooth zero-mean function on the unit sphere (a sum of von Mises-Fisher bumps), spherical-harmonics-like.

    g(u) = sum_k a_k [exp(kappa_k (u . v_k - 1)) - (1 - exp(-2 kappa_k)) / (2 kappa_k)]

    u: (..., 3) unit vectors; directions v_k (K, 3) unit; amplitudes a_k (K,); concentrations kappa_k (K,)
    (small kappa: low angular frequency). The subtracted constant is the mean of each bump over the sphere.
    """
    out = np.zeros(u.shape[:-1], dtype=np.float32)
    for v, a, k in zip(directions, amplitudes, kappas):
        dot = u[..., 0] * v[0] + u[..., 1] * v[1] + u[..., 2] * v[2]
        out += np.float32(a) * (np.exp(np.float32(k) * (dot - 1.0)) - np.float32((1 - math.exp(-2 * k)) / (2 * k)))
    return out


def _random_unit_vectors(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_rotation(rng, max_deg=None):
    """Uniform random rotation (max_deg None) or rotation about a random axis by at most max_deg degrees."""
    if max_deg is None:
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
    else:
        ax = _random_unit_vectors(rng, 1)[0]
        ang = np.deg2rad(rng.uniform(-max_deg, max_deg))
        q = np.r_[math.cos(ang / 2), math.sin(ang / 2) * ax]
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def _sigmoid(t):
    return (0.5 * (1.0 + np.tanh(0.5 * t))).astype(np.float32)
