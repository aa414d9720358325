"""Convolutional dictionaries of ML-CSC (models/mlcsc.py): the synthesis D (code -> signal) and its exact
adjoint, the analysis D^T (signal -> code), for every class at once (one grouped kernel).

Two kinds:
- `TransposedDictionary` (design 1, the first release): D is a strided transposed convolution. With stride 2 it
  synthesises on a 2-voxel lattice (a checkerboard by construction, issue 16).
- `ResizeDictionary` (design 2): D = U K, a stride-1 convolution K at the code's resolution then, for stride 2,
  linear interpolation U to the finer grid (inside the volume: nearest-neighbour doubling followed by the
  [1, 2, 1]/4 filter per axis, whose response is 0 at the lattice frequency). D^T = K^T U^T. The operator is
  normalised to ||D|| = 1 by a power-iteration estimate kept in a buffer (spectral normalisation of the whole
  operator, as torch's spectral_norm does for a matrix), so that any step 0 < mu <= 1 satisfies mu ||D||^2 <= 1.
  Training takes one power iteration per step, which lags the changing kernel; settle_norms converges the
  estimate before a model is validated or saved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: power iterations that settle a normalisation estimate (measured on the shipped model: converged in <= 100
#: from a random start; from the training probe alone a class whose norm was 7% larger took 350)
SETTLE_ITERS = 200
INIT_ITERS = 100  # power iterations of a new dictionary's norm estimate (settle_norms converges it)


class TransposedDictionary(nn.Module):
    """Kernel W (m*k_code, k_sig, s, s, s); D^T = conv3d(W, stride), D = conv_transpose3d(W, stride)."""

    def __init__(self, groups: int, sig_ch: int, code_ch: int, kernel_size: int, stride: int):
        super().__init__()
        self.groups, self.sig_ch, self.code_ch = groups, sig_ch, code_ch
        self.stride, self.pad = stride, kernel_size // 2
        self.weight = nn.Parameter(torch.randn(groups * code_ch, sig_ch, kernel_size, kernel_size, kernel_size))
        if not self.weight.is_meta:  # a shapes-only build (checkpoint checks) has no values to normalise
            with torch.no_grad():  # ||D|| = 1 at initialisation, so that step sizes of about 1 are stable
                self.weight /= self.operator_norm()  # type: ignore[misc]  # (in-place on a Parameter)

    @torch.no_grad()
    def operator_norm(self, size: int = 8, iters: int = 20) -> float:
        """Spectral norm ||D||_2 by power iteration on D^T D over a size^3 signal."""
        s = torch.randn(1, self.groups * self.sig_ch, size, size, size, generator=torch.Generator().manual_seed(0))
        for _ in range(iters):
            s = self(self.T(s))
            s = s / s.norm()
        return float(self.T(s).norm())

    def kernel(self) -> torch.Tensor:
        return self.weight

    def T_shared(self, s: torch.Tensor, bias: torch.Tensor | None = None, w=None) -> torch.Tensor:
        """D_c^T s for every class c of one signal s (B, sig) shared by all classes -> (B, m*code)."""
        return F.conv3d(s, self.weight, bias, stride=self.stride, padding=self.pad)

    def synthesis_sum(self, g: torch.Tensor, w=None) -> torch.Tensor:
        """sum_c D_c g_c (B, sig): one dense transposed convolution sums the classes' syntheses."""
        return F.conv_transpose3d(g, self.weight, stride=self.stride, padding=self.pad,
                                  output_padding=self.stride - 1)

    def T(self, s: torch.Tensor, bias: torch.Tensor | None = None, w=None) -> torch.Tensor:
        """D^T s (+ bias per code channel): signal (B, m*sig) -> code (B, m*code). (`w` is ignored: the kernel
        is the parameter itself.)"""
        return F.conv3d(s, self.weight, bias, stride=self.stride, padding=self.pad, groups=self.groups)

    def forward(self, g: torch.Tensor, w=None) -> torch.Tensor:
        """D g: code (B, m*code) -> signal (B, m*sig)."""
        return F.conv_transpose3d(g, self.weight, stride=self.stride, padding=self.pad,
                                  output_padding=self.stride - 1, groups=self.groups)


def upsample2(s: torch.Tensor) -> torch.Tensor:
    """U s: linear interpolation to twice the size per axis (trilinear, half-voxel aligned, borders clamped)."""
    return _cl(F.interpolate(s, scale_factor=2, mode="trilinear", align_corners=False))


def upsample2_adjoint(s: torch.Tensor) -> torch.Tensor:
    """U^T s: the exact adjoint of upsample2 (torch's own backward of the interpolation, itself differentiable)."""
    n = [d // 2 for d in s.shape[2:]]
    return _cl(torch.ops.aten.upsample_trilinear3d_backward(s, list(s.shape[2:]), [s.shape[0], s.shape[1], *n],
                                                            False, 2.0, 2.0, 2.0))


def _cl(t: torch.Tensor) -> torch.Tensor:
    """Channels-last: oneDNN's grouped 3D convolutions (and their backward) are many times faster on CPUs."""
    return t.contiguous(memory_format=torch.channels_last_3d)


class ResizeDictionary(nn.Module):
    """D = U K (K a stride-1 grouped transposed convolution, U linear interpolation when stride = 2),
    normalised by sigma = ||U K|| estimated by power iteration (`joint`: the norm of the summed synthesis
    sum_c D_c, for a dictionary whose classes share one signal; else the largest per-class norm)."""

    def __init__(self, groups: int, sig_ch: int, code_ch: int, kernel_size: int, stride: int, joint: bool = False,
                 probe: int = 12):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"a resize dictionary has stride 1 or 2, not {stride}")
        self.groups, self.sig_ch, self.code_ch = groups, sig_ch, code_ch
        self.stride, self.pad, self.joint = stride, kernel_size // 2, joint
        self.raw = nn.Parameter(torch.randn(groups * code_ch, sig_ch, kernel_size, kernel_size, kernel_size))
        # the power iteration's code vector (persistent: a loaded model has the converged estimate)
        self.probe: torch.Tensor
        self.register_buffer("probe", torch.randn(1, groups * code_ch, probe, probe, probe))
        if not self.raw.is_meta:  # stride-1 kernels' spectra are dense: 30 iterations left ||D|| 1 % above 1
            self.refresh_norm(iters=INIT_ITERS)

    # --- operators with an explicit kernel (the normalisation runs them on the raw kernel) --------------------
    def _synth(self, g, w, groups):
        s = F.conv_transpose3d(g, w, padding=self.pad, groups=groups)
        return upsample2(s) if self.stride == 2 else s

    def _analysis(self, s, w, groups, bias=None):
        s = upsample2_adjoint(s) if self.stride == 2 else s
        return F.conv3d(s, w, bias, padding=self.pad, groups=groups)

    def _op(self, g, w):
        """The normalised operator's map code -> signal that sigma is the norm of (joint: summed over classes)."""
        return self._synth(g, w, 1 if self.joint else self.groups)

    def _op_T(self, s, w):
        return self._analysis(s, w, 1 if self.joint else self.groups)

    @torch.no_grad()
    def refresh_norm(self, iters: int = 1) -> None:
        """`iters` power iterations on D^T D (raw kernel) from the stored probe."""
        w, g = self.raw.detach(), self.probe
        for _ in range(iters):
            g = self._op_T(self._op(g, w), w)
            g = g / g.norm().clamp_min(1e-12)
        self.probe.copy_(g)

    @torch.no_grad()
    def settle_norm(self, iters: int = SETTLE_ITERS, seed: int = 0) -> None:
        """Converge the probe: power iteration from the probe mixed with a random vector (so a class whose
        norm overtook the one the probe tracks during training is found: per-class norms can lie within 1%)."""
        noise = torch.randn(self.probe.shape, generator=torch.Generator().manual_seed(seed)).to(self.probe)
        self.probe.copy_(self.probe / self.probe.norm().clamp_min(1e-12) + noise / noise.norm())
        self.refresh_norm(iters)

    def sigma(self) -> torch.Tensor:
        """||D_raw|| = ||D_raw probe|| for the unit probe (differentiable in the kernel)."""
        g = self.probe / self.probe.norm().clamp_min(1e-12)
        return self._op(g, self.raw).norm()

    def kernel(self) -> torch.Tensor:
        """W = W_raw / sigma: ||D|| = 1 (one power iteration more per training forward)."""
        if self.training and torch.is_grad_enabled():
            self.refresh_norm(1)
        return self.raw / self.sigma()

    # --- the dictionary API of models/mlcsc.py (w: the normalised kernel, from kernel()) -------------------------
    def T_shared(self, s, bias=None, w=None):
        return self._analysis(s, self.kernel() if w is None else w, 1, bias)

    def synthesis_sum(self, g, w=None):
        return self._synth(g, self.kernel() if w is None else w, 1)

    def T(self, s, bias=None, w=None):
        return self._analysis(s, self.kernel() if w is None else w, self.groups, bias)

    def forward(self, g, w=None):
        return self._synth(g, self.kernel() if w is None else w, self.groups)


def settle_norms(model: nn.Module, iters: int = SETTLE_ITERS) -> int:
    """settle_norm every ResizeDictionary of `model` (after training, before validating or saving: one power
    iteration per training step lags the changing kernel, and the saved model would have mu ||D||^2 > 1).
    Returns how many dictionaries were settled."""
    dicts = [m for m in model.modules() if isinstance(m, ResizeDictionary)]
    for d in dicts:
        d.settle_norm(iters)
    return len(dicts)


@torch.no_grad()
def operator_norm(d, size: int = 12, iters: int = 30, groups_apart: bool = False, joint: bool = False) -> list[float]:
    """||D^(c)|| per class (groups_apart) or ||D|| (largest over classes; `joint`: of the summed synthesis)
    by power iteration on D^T D over a size^3 code grid with zero-padded borders."""
    gen = torch.Generator().manual_seed(0)
    w = d.kernel()
    g = torch.randn(1, d.groups * d.code_ch, size, size, size, generator=gen).to(w)
    G = d.groups if groups_apart else 1

    def unit(t):
        t = t.reshape(G, -1)
        return (t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(1, -1, size, size, size)

    def synth(t):
        return d.synthesis_sum(t, w=w) if joint else d(t, w=w)

    def analysis(s):
        return d.T_shared(s, w=w) if joint else d.T(s, w=w)

    g = unit(g)
    for _ in range(iters):
        g = unit(analysis(synth(g)))
    out = synth(g)
    if joint:
        return [float(out.norm())]
    return [float(v) for v in out.reshape(G, -1).norm(dim=1)]
