"""Multimodal multi-layer convolutional sparse coding for segmentation (seed 000, Lazendic et al.).

Data model (eq. 4): every modality i is a sum of per-class morphological components,

    x^(i) = sum_c Phi_c^(i) D_1^(c) D_2^(c) ... D_L^(c) gamma_{c,L},

with dictionaries Phi_c^(i) (class c -> modality i) and ML-CSC dictionaries D_l^(c); the sparse codes
gamma_c = D_1 ... D_L gamma_{c,L} are shared by all modalities. The network unrolls the merged
Joint-Feature ML-ISTA (eq. 7, generalised to L layers as in ML-ISTA, Sulam et al. 2020):

    g_L = gamma_{c,L},  g_{l-1} = D_l g_l                          (top-down synthesis, eq. 3)
    h_0 = S_{mu_c lam_c(t)}( g_0 - mu_c sum_i Phi_c^(i)T (Phi_c^(i) g_0 - xhat_c^(i)) )
    h_l = S_{mu_{c,l} lam_{c,l}}( g_l - mu_{c,l} D_l^T (g_{l-1} - h_{l-1}) ),   l = 1..L
    gamma_{c,L} <- h_L

Classes are updated together from one residual r = sum_c Phi_c g_0,c - x: with xhat_c = x - sum_{c'!=c} Phi_c' g_0,c'
the gradient term Phi_c^T(Phi_c g_0,c - xhat_c) equals Phi_c^T r, i.e. the block-Jacobi form of the MCA
coordinate relaxation (eq. 6), which is the proximal gradient step on the joint problem (eq. 5).
The feature-extraction threshold lam_c(t) decreases linearly over the T outer iterations to the learned
lam_min,c (salient-to-fine MCA schedule); each outer iteration runs M unrolled steps with shared weights.
Table I: D^T is a convolution, D the transposed convolution with the *same* kernel, S_lam(z) = ReLU(z - lam).
Classification: one 1x1x1 convolution with parameters shared by every class (Section V-B) maps gamma_{c,L}
to the logit of class c; softmax over classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.soft_threshold import soft_threshold
from . import with_defaults

CLASS_NAMES = ("background", "oedema", "non-enhancing core", "enhancing")


def default_config() -> dict:
    """Hyperparameters (not learned). L = 3 ML-CSC layers as in the paper."""
    return {
        "in_channels": 4,            # n modalities
        "num_classes": 4,            # m components / classes
        "atoms": [8, 16, 16, 16],    # channels per class of gamma_c, gamma_{c,1}, gamma_{c,2}, gamma_{c,3}
        "strides": [2, 2, 1, 1],     # stride of Phi_c, D_1, D_2, D_3: gamma_c at 1/2, gamma_{c,1..3} at 1/4 resolution
        "kernel_size": 3,
        "T": 3,                      # joint feature extraction (MCA) iterations, thresholds decreasing to lam_min
        "M": 1,                      # MM-ML-ISTA unrollings per outer iteration
        "rho": 2.0,                  # lam_c(t=1) / lam_min,c of the linearly decreasing schedule
        "nonneg": True,              # S_lam(z) = ReLU(z - lam) (Table I); False: two-sided soft-threshold
        "lam_min_init": 0.1,
        "lam_init": 0.01,
        "mu_init": 1.0,
        "roi_size": [96, 96, 96],    # sliding-window size used by runners.segmentation.predict
    }


class _Dictionary(nn.Module):
    """A convolutional dictionary per class, all classes held in one grouped kernel.

    Kernel W has shape (m*k_code, k_sig, s, s, s); D^T (analysis, code <- signal) is conv3d with W and
    D (synthesis, signal <- code) is conv_transpose3d with the same W, its exact adjoint.
    """

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

    def T_shared(self, s: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """D_c^T s for every class c of one signal s (B, sig) shared by all classes -> (B, m*code).

        Equals T(s repeated m times) with a single dense convolution (m times less input)."""
        return F.conv3d(s, self.weight, bias, stride=self.stride, padding=self.pad)

    def synthesis_sum(self, g: torch.Tensor) -> torch.Tensor:
        """sum_c D_c g_c (B, sig): one dense transposed convolution sums the classes' syntheses."""
        return F.conv_transpose3d(g, self.weight, stride=self.stride, padding=self.pad,
                                  output_padding=self.stride - 1)

    def T(self, s: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """D^T s (+ bias per code channel): analysis (convolution), signal (B, m*sig) -> code (B, m*code)."""
        return F.conv3d(s, self.weight, bias, stride=self.stride, padding=self.pad, groups=self.groups)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        """D g: synthesis (transposed convolution), code (B, m*code) -> signal (B, m*sig)."""
        return F.conv_transpose3d(g, self.weight, stride=self.stride, padding=self.pad,
                                  output_padding=self.stride - 1, groups=self.groups)


class MLCSC(nn.Module):
    """Merged Joint-Feature ML-ISTA segmentation network (seed 000, eqs. 2-7, Table I).

    forward(x): x (B, n, X, Y, Z) normalised modalities -> logits (B, m, X, Y, Z).
    interpret(x): the named intermediate outputs (see its docstring).
    """

    def __init__(self, **config):
        super().__init__()
        cfg = with_defaults(default_config(), config, "MLCSC")
        self.config = cfg
        n, m = cfg["in_channels"], cfg["num_classes"]
        atoms, strides, k = cfg["atoms"], cfg["strides"], cfg["kernel_size"]
        if len(atoms) != 4 or len(strides) != 4:
            raise ValueError("atoms and strides need 4 entries: Phi, D_1, D_2, D_3 (L = 3)")
        self.n, self.m, self.L = n, m, len(atoms) - 1
        self.scale = int(math.prod(strides))
        # Phi_c^(i): code gamma_c (atoms[0] per class) -> n modalities per class
        self.Phi = _Dictionary(m, n, atoms[0], k, strides[0])
        # D_l^(c): gamma_{c,l} (atoms[l]) -> gamma_{c,l-1} (atoms[l-1])
        self.D = nn.ModuleList(_Dictionary(m, atoms[l - 1], atoms[l], k, strides[l]) for l in range(1, 4))
        # learned thresholds and step sizes, one per class and layer (Table III)
        self.lam_min = nn.Parameter(torch.full((m,), float(cfg["lam_min_init"])))
        self.mu0 = nn.Parameter(torch.full((m,), float(cfg["mu_init"])))
        self.lam = nn.Parameter(torch.full((self.L, m), float(cfg["lam_init"])))
        self.mu = nn.Parameter(torch.full((self.L, m), float(cfg["mu_init"])))
        # classifier shared by all classes (Section V-B): logit_c = w . gamma_{c,L} + b
        self.classifier = nn.Conv3d(atoms[-1], 1, kernel_size=1)
        with torch.no_grad():  # start from near-uniform class scores: large initial logits make DiceCE explode
            self.classifier.weight.normal_(0.0, 0.01)
            self.classifier.bias.zero_()

    # --- the maths -----------------------------------------------------------------------------
    def _per_channel(self, v: torch.Tensor, channels: int) -> torch.Tensor:
        """Expand a per-class vector (m,) to the (1, m*channels, 1, 1, 1) layout of grouped codes."""
        return v.repeat_interleave(channels).view(1, -1, 1, 1, 1)

    def lam_schedule(self, t: int) -> torch.Tensor:
        """lam_c(t), t = 0..T-1: linear decrease from rho*lam_min,c to lam_min,c (MCA schedule)."""
        T, rho = self.config["T"], self.config["rho"]
        frac = (T - 1 - t) / (T - 1) if T > 1 else 0.0
        return self.lam_min * (1.0 + (rho - 1.0) * frac)

    def synthesis(self, gamma_L: torch.Tensor) -> list[torch.Tensor]:
        """g_L = gamma_{c,L}, g_{l-1} = D_l g_l (eq. 3); returns [g_0, ..., g_L] with g_0 = gamma_c."""
        g = [gamma_L]
        for D in reversed(self.D):
            g.insert(0, D(g[0]))
        return g

    def components(self, gamma_c: torch.Tensor) -> torch.Tensor:
        """Phi_c^(i) gamma_c for every class c and modality i: (B, m, n, X, Y, Z) (eq. 2)."""
        out = self.Phi(gamma_c)
        return out.reshape(out.shape[0], self.m, self.n, *out.shape[2:])

    def ml_ista_step(self, x: torch.Tensor, gamma_L: torch.Tensor | None, lam0: torch.Tensor) -> list[torch.Tensor]:
        """One merged JF-ML-ISTA step (eq. 7 for L layers); returns [h_0, ..., h_L], h_L = new gamma_{c,L}.

        gamma_L = None stands for gamma_{c,L} = 0 (the first step): every g_l is 0 and the synthesis is skipped,
        which leaves the layered soft-thresholding forward pass of Table I.
        """
        if gamma_L is None:
            g = [0.0] * (self.L + 1)
            r = -x
        else:
            g = self.synthesis(gamma_L)
            r = self.Phi.synthesis_sum(g[0]) - x                  # sum_c Phi_c g_0,c - x
        h = [self._prox_step(g[0], self.mu0, lam0, self.Phi.code_ch, lambda b: self.Phi.T_shared(r, b))]
        for l, D in enumerate(self.D, start=1):
            diff = g[l - 1] - h[l - 1]
            h.append(self._prox_step(g[l], self.mu[l - 1], self.lam[l - 1], D.code_ch, lambda b, D=D, diff=diff: D.T(diff, b)))
        return h

    def _prox_step(self, g, mu, lam, channels: int, analysis) -> torch.Tensor:
        """S_{mu lam}(g - mu A^T s) for per-class mu, lam (m,), with analysis(bias) = A^T s + bias.

        For S_lam(z) = ReLU(z - lam): ReLU(g - mu (A^T s + lam)), the threshold riding on the convolution's
        bias and g - mu(.) fused in one addcmul (g = 0.0 in the first step)."""
        mu_c = self._per_channel(mu, channels)
        nonneg = self.config["nonneg"]
        grad = analysis(lam.repeat_interleave(channels) if nonneg else None)
        z = -mu_c * grad if isinstance(g, float) else torch.addcmul(g, mu_c, grad, value=-1.0)
        return z.relu_() if nonneg else soft_threshold(z, self._per_channel(mu * lam, channels))

    def codes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the T x M unrolled iterations from gamma_{c,L} = 0; returns the last step's [h_0..h_L]."""
        gamma_L, h = None, None  # None: gamma_{c,L} = 0
        for t in range(self.config["T"]):
            lam0 = self.lam_schedule(t)
            for _ in range(self.config["M"]):
                h = self.ml_ista_step(x, gamma_L, lam0)
                gamma_L = h[-1]
        return h  # type: ignore[return-value]  # (T, M >= 1: set in the loop)

    def classify(self, gamma_L: torch.Tensor) -> torch.Tensor:
        """Shared 1x1x1 classifier: (B, m*K_L, ...) -> logits (B, m, ...) at code resolution."""
        B, _, *sp = gamma_L.shape
        per_class = gamma_L.reshape(B * self.m, -1, *sp)
        return self.classifier(per_class).reshape(B, self.m, *sp)

    # --- nn.Module API -------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor):
        sp = x.shape[2:]
        target = [int(math.ceil(s / self.scale) * self.scale) for s in sp]
        pads = []
        for s, t in reversed(list(zip(sp, target))):
            pads += [0, t - s]
        x = F.pad(x, pads) if any(pads) else x
        # channels-last lets oneDNN run the strided transposed convolutions about twice as fast on CPUs
        return x.contiguous(memory_format=torch.channels_last_3d), tuple(sp)

    def _upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        if self.scale > 1:
            logits = F.interpolate(logits, scale_factor=self.scale, mode="trilinear", align_corners=False)
        return logits[(..., *[slice(0, s) for s in size])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, size = self._pad(x)
        h = self.codes(xp)
        return self._upsample(self.classify(h[-1]), size)

    @torch.no_grad()
    def interpret(self, x: torch.Tensor, contributions: bool = True) -> dict[str, torch.Tensor]:
        """Named interpretable outputs for x (B, n, X, Y, Z):

        - "logits" (B, m, X, Y, Z): class scores; "probabilities": their softmax.
        - "components" (B, m, n, X, Y, Z): morphological components Phi_c^(i) gamma_c with
          gamma_c = D_1 D_2 D_3 gamma_{c,L} (eq. 3-4; Fig. 1 of the paper).
        - "reconstruction" (B, n, X, Y, Z) = sum_c components: the model's synthesis of each modality (eq. 2).
        - "residual_energy" (B, X, Y, Z): sum_i (x^(i) - reconstruction^(i))^2.
        - "logit_contributions" (B, m, K_L, X, Y, Z): w_k gamma_{c,L,k} upsampled; summed over k plus the
          classifier bias they give "logits" exactly (the classifier and the upsampling are linear).
          Left out when contributions=False (it is K_L full-resolution maps per class).
        - "code_energy" (B, m, X, Y, Z): ||gamma_{c,L}||^2 per voxel, upsampled.
        - "sparsity" (L+1, m): fraction of non-zero coefficients of gamma_c, gamma_{c,1..L} (last step).
        """
        xp, size = self._pad(x)
        h = self.codes(xp)
        gamma_L = h[-1]
        B, _, *sp = gamma_L.shape
        KL = self.D[-1].code_ch
        g = self.synthesis(gamma_L)
        comps = self.components(g[0])[(..., *[slice(0, s) for s in size])]
        recon = comps.sum(1)
        logits = self._upsample(self.classify(gamma_L), size)
        energy = self._upsample((gamma_L.reshape(B, self.m, KL, *sp) ** 2).sum(2), size)
        sparsity = torch.stack([(hl.reshape(B, self.m, -1) != 0).float().mean(dim=(0, 2)) for hl in h])
        out = {
            "logits": logits,
            "probabilities": torch.softmax(logits, 1),
            "components": comps,
            "reconstruction": recon,
            "residual_energy": ((x - recon) ** 2).sum(1),
            "code_energy": energy,
            "sparsity": sparsity,
        }
        if contributions:
            w = self.classifier.weight.view(1, 1, KL, 1, 1, 1)
            contrib = (gamma_L.reshape(B, self.m, KL, *sp) * w).reshape(B, self.m * KL, *sp)
            out["logit_contributions"] = self._upsample(contrib, size).reshape(B, self.m, KL, *size)
        return out

    def parameter_table(self) -> list[dict]:
        """Learned thresholds and step sizes per class (Table III) with the sign check.

        Rows: class, lam_min_c, mu_c, lam_c1, mu_c1, ..., lam_cL, mu_cL, and "consistent": False when any
        threshold or step size is negative (sparse coding theory requires lam >= 0, mu > 0).
        """
        rows = []
        lam_min, mu0, lam, mu = (p.detach() for p in (self.lam_min, self.mu0, self.lam, self.mu))
        for c in range(self.m):
            row = {"class": CLASS_NAMES[c] if self.m == len(CLASS_NAMES) else f"class_{c}",
                   "lam_min_c": float(lam_min[c]), "mu_c": float(mu0[c])}
            for l in range(self.L):
                row[f"lam_c{l + 1}"] = float(lam[l, c])
                row[f"mu_c{l + 1}"] = float(mu[l, c])
            negative = [k for k, v in row.items() if k != "class" and float(v) < 0]  # type: ignore[arg-type]
            row["negative"] = ";".join(negative)
            row["consistent"] = not negative
            rows.append(row)
        return rows
