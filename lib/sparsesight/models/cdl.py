"""CDL-Lambda: convolutional-dictionary reconstruction with learned spatially adaptive sparsity maps (seed 001).

Reconstruction of an MR slice x from k-space data y = A x + e, A = M F (ops/kspace.py), with a fixed, pre-trained
convolutional dictionary D of K real unit-norm filters (data/convdict.py):

    x_0   = A^H y                                            zero-filled image
    x_L   = argmin_z 1/2 ||z - x_0||^2 + beta/2 sum_i ||G_i z||^2      low-pass part (PH), closed form by FFT
    s*    = argmin_s 1/2 ||A (D s + x_L) - y||^2 + ||Lambda . s||_1     (PR), FISTA unrolled T times
    x*    = D s* + x_L

Complex images are two real channels; the codes s = (s_re, s_im) share one sparsity map per filter and pixel,
||Lambda . s||_1 = sum_k ||Lambda_k . s_k,re||_1 + ||Lambda_k . s_k,im||_1. The maps come from a U-Net applied to
the zero-filled image, Lambda = lambda_max * sigmoid(u + b) >= 0 with lambda_max = 10 and a learned global offset
b (the reference setting of the authors' code); the estimator variants of Section 2.2:

    V1  u = U_{2->K}(x_0)                           dictionary agnostic, fixed K
    V2  u = U_{2K->K}(D^T x_0)                      conditioned on D, fixed K
    V3  u = R^{-1} U'_{2->1}(R(D^T x_0))            filters moved to the batch axis (R): the same U-Net for every
                                                   filter, so Lambda is permuted with the filters (the output is
                                                   invariant) and any K works at inference

The FISTA step size is 0.97 / ||D||^2 (||A|| <= 1) with ||D|| from power iteration (ops/fista.py). Training
(training/cdl.py) minimises the MSE (eq. 4) over references, acquisitions and a set of dictionaries, with truncated
back-propagation (Section 2.3): the first T - T_bp iterations run without tracking gradients, the last T_bp with.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from ..data import convdict
from ..errors import InvalidInput
from ..ops import kspace
from ..ops.fista import analysis, fista, step_size, synthesis

VARIANTS = ("v1", "v2", "v3")


def default_config() -> dict:
    """Hyperparameters. Reference settings of the authors' code: T = 64, K = 32 filters of 9 x 9, lambda_max 10."""
    return {
        "variant": "v3",
        "dictionary": "K32_k9",          # the model's own dictionary (a buffer; others can be passed at call time)
        "iterations": 64,                # T, unrolled FISTA iterations
        "backprop_iterations": 8,        # T_bp, iterations tracked by autograd in training (truncated BP)
        "lambda_max": 10.0,              # Lambda = lambda_max * sigmoid(.)
        "offset_init": -5.0,             # initial global offset b: Lambda ~ 0.07 before training
        "beta": convdict.BETA,           # Tikhonov low-pass parameter of (PH), the one the dictionaries were learned with
        "channels": [16, 32, 64],        # U-Net features per level (V3 uses them for every filter)
    }


# ------------------------------------------------------------------------------------------ the maths
def lowpass(x: torch.Tensor, beta: float, npd: int = 16) -> torch.Tensor:
    """x_L of (PH): argmin_z 1/2||z - x||^2 + beta/2 sum_i ||G_i z||^2 with forward differences G_i, solved in the
    Fourier domain, x_L = F^-1[ F x / (1 + beta (|g_r|^2 + |g_c|^2)) ] on x padded symmetrically by npd pixels
    (as sporco.signal.tikhonov_filter). x (..., H, W) real or complex."""
    h, w = x.shape[-2:]
    p = min(npd, h, w)
    xp = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2) if p else x
    xp = torch.cat([xp[..., :p].flip(-1), xp, xp[..., -p:].flip(-1)], dim=-1) if p else xp
    H, W = xp.shape[-2:]
    wr = 2 * math.pi * torch.arange(H, dtype=torch.float64) / H
    wc = 2 * math.pi * torch.arange(W, dtype=torch.float64) / W
    g = (2 - 2 * torch.cos(wr))[:, None] + (2 - 2 * torch.cos(wc))[None, :]  # |F[-1, 1]|^2 along each axis
    den = (1.0 + beta * g).to(x.device)
    out = torch.fft.ifft2(torch.fft.fft2(xp) / den)
    out = out if x.is_complex() else out.real
    return out[..., p:p + h, p:p + w].to(x.dtype)


def _realify(z: torch.Tensor) -> torch.Tensor:
    """complex (B, H, W) -> real (2B, 1, H, W), re and im of each sample next to each other."""
    return torch.view_as_real(z).permute(0, 3, 1, 2).reshape(-1, 1, *z.shape[-2:])


def _complexify(r: torch.Tensor) -> torch.Tensor:
    """real (2B, 1, H, W) -> complex (B, H, W): the inverse of _realify."""
    b2, _, h, w = r.shape
    return torch.complex(*r.reshape(b2 // 2, 2, h, w).unbind(1))


def data_gradient(s: torch.Tensor, d: torch.Tensor, x_low: torch.Tensor, x0: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """grad_s 1/2 ||A(D s + x_L) - y||^2 = D^T Re/Im[ A^H A (D s + x_L) - A^H y ], s (2B, K, H, W)."""
    x = _complexify(synthesis(s, d)) + x_low
    return analysis(_realify(kspace.normal(x, mask) - x0), d)


def solve_pr(y: torch.Tensor, mask: torch.Tensor, d: torch.Tensor, lam, iterations: int, beta: float,
             backprop_iterations: int | None = None, x0: torch.Tensor | None = None) -> dict:
    """Problem (PR) by FISTA from s = 0. y, mask (B, H, W); d (K, kh, kw); lam a scalar or (B, K, H, W) map shared
    by re and im. With backprop_iterations = n only the last n iterations are tracked by autograd.
    Returns x (B, H, W) complex, x0, x_low, s (B, 2, K, H, W)."""
    x0 = kspace.adjoint(y, mask) if x0 is None else x0
    x_low = lowpass(x0, beta)
    b, (h, w), k = x0.shape[0], x0.shape[-2:], d.shape[0]
    tau = step_size(d, (h, w))
    if torch.is_tensor(lam) and lam.ndim == 4:
        lam = lam.unsqueeze(1).expand(b, 2, k, h, w).reshape(2 * b, k, h, w)

    def grad(s):
        return data_gradient(s, d, x_low, x0, mask)

    s0 = torch.zeros(2 * b, k, h, w, dtype=torch.float32, device=x0.device)
    n_bp = iterations if backprop_iterations is None else min(int(backprop_iterations), iterations)
    state = None
    if iterations - n_bp > 0:
        with torch.no_grad():
            _, state = fista(grad, s0, tau, lam, iterations - n_bp)
            state = tuple(v.detach() if torch.is_tensor(v) else v for v in state)
    s, _ = fista(grad, s0, tau, lam, n_bp, state=state)
    x = _complexify(synthesis(s, d)) + x_low
    return {"x": x, "x0": x0, "x_low": x_low, "s": s.reshape(b, 2, k, h, w)}


# ------------------------------------------------------------------------------------------ the network
def _pad_to(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    return (F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x), (h, w)


class CDL(nn.Module):
    filters: torch.Tensor  # the model's own dictionary (a buffer)
    """Unrolled FISTA for (PR) with U-Net-estimated sparsity maps Lambda (variants V1, V2, V3)."""

    def __init__(self, variant: str = "v3", dictionary: str = "K32_k9", iterations: int = 64,
                 backprop_iterations: int = 8, lambda_max: float = 10.0, offset_init: float = -5.0,
                 beta: float = convdict.BETA, channels=(16, 32, 64)):
        super().__init__()
        if variant not in VARIANTS:
            raise InvalidInput(f"unknown CDL variant {variant!r}; choose from {list(VARIANTS)}")
        self.config = {"variant": variant, "dictionary": dictionary, "iterations": int(iterations),
                       "backprop_iterations": int(backprop_iterations), "lambda_max": float(lambda_max),
                       "offset_init": float(offset_init), "beta": float(beta), "channels": list(channels)}
        self.variant = variant
        self.iterations = int(iterations)
        self.backprop_iterations = int(backprop_iterations)
        self.lambda_max = float(lambda_max)
        self.beta = float(beta)
        self.register_buffer("filters", torch.as_tensor(convdict.load(dictionary)))
        k = self.filters.shape[0]
        c_in, c_out = {"v1": (2, k), "v2": (2 * k, k), "v3": (2, 1)}[variant]
        self.net = UNet(spatial_dims=2, in_channels=c_in, out_channels=c_out, channels=tuple(channels),
                        strides=(2,) * (len(channels) - 1), num_res_units=1, norm=None)  # type: ignore[arg-type]
        self.offset = nn.Parameter(torch.tensor(float(offset_init)))  # the global learnable scalar of (V1)
        self._stride = 2 ** (len(channels) - 1)

    @property
    def num_filters(self) -> int:
        return self.filters.shape[0]

    def _dictionary(self, d) -> torch.Tensor:
        if d is None:
            return self.filters
        d = torch.as_tensor(d, dtype=torch.float32, device=self.filters.device)
        if d.ndim != 3:
            raise InvalidInput(f"a dictionary must be (K, kh, kw); got shape {tuple(d.shape)}")
        if self.variant != "v3" and d.shape[0] != self.num_filters:
            raise InvalidInput(f"CDL {self.variant.upper()} works with K = {self.num_filters} filters only; "
                               f"got {d.shape[0]} (V3 takes any number of filters)")
        return d

    def _unet(self, z: torch.Tensor) -> torch.Tensor:
        zp, (h, w) = _pad_to(z, self._stride)
        return self.net(zp)[..., :h, :w]

    def sparsity_maps(self, x0: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Lambda (B, K, H, W) >= 0 from the zero-filled image x0 (B, H, W) complex (eqs. V1-V3)."""
        b, (h, w), k = x0.shape[0], x0.shape[-2:], d.shape[0]
        if self.variant == "v1":
            u = self._unet(torch.view_as_real(x0).permute(0, 3, 1, 2))
        else:
            dtx = analysis(_realify(x0), d).reshape(b, 2, k, h, w)  # D^T x0 for re and im
            if self.variant == "v2":
                u = self._unet(dtx.reshape(b, 2 * k, h, w))
            else:  # R: filters to the batch axis, one 2-to-1 U-Net for all; R^-1 back
                u = self._unet(dtx.permute(0, 2, 1, 3, 4).reshape(b * k, 2, h, w)).reshape(b, k, h, w)
        return self.lambda_max * torch.sigmoid(u + self.offset)

    def reconstruct(self, y: torch.Tensor, mask: torch.Tensor, d=None) -> dict:
        """Run CDL-Lambda on k-space y (B, H, W) complex with mask (B or 1, H, W); d overrides the dictionary.
        Returns x, x0, x_low (B, H, W) complex, s (B, 2, K, H, W), lam (B, K, H, W)."""
        d = self._dictionary(d)
        x0 = kspace.adjoint(y, mask)
        lam = self.sparsity_maps(x0, d)
        bp = self.backprop_iterations if (self.training and torch.is_grad_enabled()) else None
        out = solve_pr(y, mask, d, lam, self.iterations, self.beta, backprop_iterations=bp, x0=x0)
        out["lam"] = lam
        return out

    def forward(self, y: torch.Tensor, mask: torch.Tensor, d=None) -> torch.Tensor:
        """The reconstruction x* (B, H, W) complex."""
        return self.reconstruct(y, mask, d)["x"]

    @torch.no_grad()
    def interpret(self, y: torch.Tensor, mask: torch.Tensor, d=None) -> dict[str, torch.Tensor]:
        """Named intermediate outputs, all real, for k-space y (B, H, W) and mask:

        reconstruction (B, H, W)   |x*| = |D s* + x_L|
        zero_filled    (B, H, W)   |A^H y|
        lowpass        (B, H, W)   |x_L|, the part (PH) leaves to the Tikhonov filter
        sparse_part    (B, H, W)   |D s*|, the part the dictionary represents
        lambda         (B, K, H, W) the sparsity maps Lambda_k (>= 0)
        code_energy    (B, K, H, W) |s_k|^2 = s_k,re^2 + s_k,im^2 per filter
        sparsity       (B, K)      fraction of non-zero code coefficients per filter
        """
        d = self._dictionary(d)
        out = self.reconstruct(y, mask, d)
        s = out["s"]
        return {"reconstruction": out["x"].abs(), "zero_filled": out["x0"].abs(), "lowpass": out["x_low"].abs(),
                "sparse_part": _complexify(synthesis(s.reshape(-1, *s.shape[2:]), d)).abs(),
                "lambda": out["lam"], "code_energy": (s ** 2).sum(1),
                "sparsity": (s != 0).any(1).float().mean((-2, -1))}
