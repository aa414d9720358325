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

Two designs share this code (config "design"; docs/ARCHITECTURE.md):

- design 1 (the first release; a checkpoint without "design" is one): strided transposed-convolution
  dictionaries, unconstrained lam and mu, one 1x1x1 classifier shared by every class (Section V-B) and the
  components Phi_c g_0,c of the top-down synthesis. Trained on segmentation alone; issue 16 measured that its
  components neither reconstruct the image nor avoid the stride-2 lattice.
- design 2 (the default): the sparse-coding model is kept a real one.
  * Phi at full resolution (stride 1) and D_l = U K_l (dictionary.ResizeDictionary: linear interpolation after
    a stride-1 convolution), so no synthesis lives on a lattice;
  * ||Phi|| (of the summed synthesis sum_c Phi_c) = ||D_l|| = 1 by power-iteration normalisation,
    0 < mu = 0.98 sigmoid(.) <= 1 / ||D||^2 and lam = softplus(.) >= 0;
  * class evidence by a non-negative read-out per class, logit_c = sum_k w_{c,k} gamma_{c,L,k} + b_c with
    w = softplus(.) >= 0: a class's codes (>= 0) can only add evidence for that class;
  * gamma_c (layer 0) is signed (two-sided S_lam; the deeper codes stay >= 0) and Phi is 1x1x1 at full
    resolution, started as a tight frame (sum_c Phi_c Phi_c^T = I), so one step can fit x; the deeper layers
    carry the spatial context and the class evidence;
  * the components are Phi_c h_0,c of the last step (gamma_c, the layer-0 code after its data-fit update),
    and the objective (loss()) asks sum_c Phi_c gamma_c to reconstruct x in the brain (beta) and the tumour
    classes' components to stay inside their class (eta), besides Dice + CE.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.soft_threshold import soft_threshold
from . import with_defaults
from .dictionary import ResizeDictionary, TransposedDictionary, operator_norm

CLASS_NAMES = ("background", "oedema", "non-enhancing core", "enhancing")
#: the design of a checkpoint whose config predates the "design" key (models/mlcsc.py docstring)
LEGACY_DESIGN = 1
READOUT_LR_FACTOR = 20.0  # the read-out (w_c, b_c) over the base learning rate (lr_multipliers)
SCALAR_LR_FACTOR = 10.0  # the thresholds lam and step sizes mu over the base learning rate


def default_config() -> dict:
    """Hyperparameters (not learned). L = 3 ML-CSC layers as in the paper; design 2 (module docstring)."""
    return {
        "design": 2,                 # 1: the first release (transposed dictionaries, unconstrained); 2: see above
        "in_channels": 4,            # n modalities
        "num_classes": 4,            # m components / classes
        "atoms": [4, 16, 8, 8],      # channels per class of gamma_c, gamma_{c,1}, gamma_{c,2}, gamma_{c,3}
        "strides": [1, 2, 1, 1],     # of Phi_c, D_1, D_2, D_3: gamma_c at full resolution, the deeper codes (and the
                                     # logits) at 1/2: at 1/4 the held-out labels themselves keep only ET Dice 0.87
                                     # (metrics.grid_ceiling_dice), at 1/2 0.96
        "kernel_size": 3,            # of D_1..D_3 (and of Phi in design 1)
        "phi_kernel_size": 1,        # design 2: Phi_c^(i) maps a voxel's codes to its modalities (full resolution)
        "T": 2,                      # joint feature extraction (MCA) iterations, thresholds decreasing to lam_min
        "M": 2,                      # MM-ML-ISTA unrollings per outer iteration
        "rho": 2.0,                  # lam_c(t=1) / lam_min,c of the linearly decreasing schedule
        "nonneg": True,              # S_lam(z) = ReLU(z - lam) (Table I); False: two-sided soft-threshold
        "signed_gamma_c": True,      # design 2: two-sided S_lam for gamma_c (layer 0) whatever "nonneg" says
        "lam_min_init": 0.02,
        "lam_init": 0.01,
        "mu_init": 0.9,
        "beta": 2.0,                 # weight of the reconstruction term ||x - sum_c Phi_c gamma_c||^2_B / ||x||^2_B
        "eta": 1.0,                  # weight of the tumour components' energy outside their class
        "roi_size": [96, 96, 96],    # sliding-window size used by runners.segmentation.predict
    }


def legacy_config() -> dict:
    """Design 1's defaults: what a checkpoint config without "design" was built with."""
    return {**default_config(), "design": 1, "atoms": [8, 16, 16, 16], "strides": [2, 2, 1, 1], "T": 3, "M": 1,
            "lam_min_init": 0.1, "mu_init": 1.0, "beta": 0.0, "eta": 0.0,
            "phi_kernel_size": 3, "signed_gamma_c": False}


def stored_config(config: dict) -> dict:
    """The config a stored checkpoint's model is built with: one without "design" is a design-1 model, whose
    missing keys take design 1's defaults (not today's)."""
    return dict(config) if "design" in config else {"design": LEGACY_DESIGN, **config}


def _inv_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B*X*Y*Z, C), one row per voxel (a view of a channels-last tensor)."""
    return t.permute(0, 2, 3, 4, 1).reshape(-1, t.shape[1])


def _unrows(rows: torch.Tensor, shape) -> torch.Tensor:
    """The inverse of _rows: (B*X*Y*Z, C) -> (B, C, X, Y, Z) channels-last (a view)."""
    B, C, *sp = shape
    return rows.view(B, *sp, C).permute(0, 4, 1, 2, 3)


class MLCSC(nn.Module):
    """Merged Joint-Feature ML-ISTA segmentation network (seed 000, eqs. 2-7, Table I).

    forward(x): x (B, n, X, Y, Z) normalised modalities -> logits (B, m, X, Y, Z)
    (decompose=True: a dict with the logits, the components and the reconstruction).
    interpret(x): the named intermediate outputs (see its docstring).
    """

    def __init__(self, **config):
        super().__init__()
        defaults = legacy_config() if config.get("design", 2) == 1 else default_config()
        cfg = with_defaults(defaults, config, "MLCSC")
        if cfg["design"] not in (1, 2):
            raise ValueError(f"MLCSC design must be 1 or 2, not {cfg['design']!r}")
        self.config = cfg
        self.design = int(cfg["design"])
        n, m = cfg["in_channels"], cfg["num_classes"]
        atoms, strides, k = cfg["atoms"], cfg["strides"], cfg["kernel_size"]
        if len(atoms) != 4 or len(strides) != 4:
            raise ValueError("atoms and strides need 4 entries: Phi, D_1, D_2, D_3 (L = 3)")
        self.n, self.m, self.L = n, m, len(atoms) - 1
        self.scale = int(math.prod(strides))
        L = self.L
        if self.design == 1:
            # Phi_c^(i): code gamma_c (atoms[0] per class) -> n modalities per class
            self.Phi = TransposedDictionary(m, n, atoms[0], k, strides[0])
            # D_l^(c): gamma_{c,l} (atoms[l]) -> gamma_{c,l-1} (atoms[l-1])
            self.D = nn.ModuleList(TransposedDictionary(m, atoms[l - 1], atoms[l], k, strides[l]) for l in range(1, 4))
            # learned thresholds and step sizes, one per class and layer (Table III)
            self.lam_min = nn.Parameter(torch.full((m,), float(cfg["lam_min_init"])))
            self.mu0 = nn.Parameter(torch.full((m,), float(cfg["mu_init"])))
            self.lam = nn.Parameter(torch.full((L, m), float(cfg["lam_init"])))
            self.mu = nn.Parameter(torch.full((L, m), float(cfg["mu_init"])))
            # classifier shared by all classes (Section V-B): logit_c = w . gamma_{c,L} + b
            self.classifier = nn.Conv3d(atoms[-1], 1, kernel_size=1)
            with torch.no_grad():  # start from near-uniform class scores: large initial logits make DiceCE explode
                self.classifier.weight.normal_(0.0, 0.01)
                self.classifier.bias.zero_()
            return
        if strides[0] != 1 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"design 2 needs strides [1, s1, s2, s3] with s in (1, 2), not {strides}")
        self.Phi = ResizeDictionary(m, n, atoms[0], cfg["phi_kernel_size"], 1, joint=True)
        if cfg["phi_kernel_size"] == 1 and atoms[0] >= n and not self.Phi.raw.is_meta:
            self._tight_frame_phi()
        self.D = nn.ModuleList(ResizeDictionary(m, atoms[l - 1], atoms[l], k, strides[l]) for l in range(1, 4))
        # unconstrained parameters of the constrained ones: lam = softplus(.), mu = 0.98 sigmoid(.)
        self.lam_min_raw = nn.Parameter(torch.full((m,), _inv_softplus(cfg["lam_min_init"])))
        self.lam_raw = nn.Parameter(torch.full((L, m), _inv_softplus(cfg["lam_init"])))
        self.mu0_raw = nn.Parameter(torch.full((m,), _logit(cfg["mu_init"] / 0.98)))
        self.mu_raw = nn.Parameter(torch.full((L, m), _logit(cfg["mu_init"] / 0.98)))
        # one non-negative read-out per class: w_c = softplus(readout_raw[c]) >= 0
        self.readout_raw = nn.Parameter(torch.full((m, atoms[-1]), _inv_softplus(0.1)))
        self.readout_bias = nn.Parameter(torch.zeros(m))
        with torch.no_grad():  # background wins where there is no evidence (outside the brain every code is 0)
            self.readout_bias[0] = 1.0

    @torch.no_grad()
    def _tight_frame_phi(self) -> None:
        """Start Phi (1x1x1) as a tight frame: each class's first n atoms are a random orthonormal basis of the n
        modalities (the rest small and random), so sum_c Phi_c Phi_c^T = I after normalisation: with signed
        gamma_c, one ISTA step from 0 with mu = 1 reconstructs x, and every class can represent any modality mix."""
        n, k = self.n, self.Phi.code_ch
        w = self.Phi.raw.view(self.m, k, n)
        for c in range(self.m):
            # rows: orthonormal atoms; the background's larger, so that it carries most of the fit at the start
            w[c, :n] = torch.linalg.qr(torch.randn(n, n))[0].T * (1.0 if c == 0 else 0.5)
            w[c, n:] = torch.randn(k - n, n) * 0.1
        self.Phi.refresh_norm(iters=30)

    @property
    def readout_factor(self) -> int:
        """The logits' grid is gamma_{c,L}'s, 1/scale of the input's (upsampled linearly): pretrain.readout_ceiling."""
        return self.scale

    # --- the learned parameters (design 2: their constrained values) -----------------------------------
    def no_weight_decay(self) -> tuple[str, ...]:
        """Thresholds and step sizes (any shape): weight decay would pull them to 0 (training/segmentation.py)."""
        return ("lam_min", "mu0", "lam", "mu", "lam_min_raw", "lam_raw", "mu0_raw", "mu_raw")

    def lr_multipliers(self) -> dict[str, float]:
        """Design 2's few scalars learn faster than the kernels (training/segmentation.py, parameter_groups): Adam
        moves a parameter by about lr per step, and in the recipe's budget the read-out stayed at its start
        (every w_c ~ 0.1-0.15, so the classes differed only by their codes) and lam, mu within 0.01 of theirs.
        Refitting the read-out alone on the shipped weights' frozen codes moved held-out TC 0.63 -> 0.77, ET
        0.46 -> 0.61."""
        if self.design == 1:
            return {}
        return {"readout_raw": READOUT_LR_FACTOR, "readout_bias": READOUT_LR_FACTOR,
                **{n: SCALAR_LR_FACTOR for n in ("lam_min_raw", "lam_raw", "mu0_raw", "mu_raw")}}

    def learned(self) -> dict[str, torch.Tensor]:
        """lam_min (m,), mu0 (m,), lam (L, m), mu (L, m) as the iterations use them."""
        if self.design == 1:
            return {"lam_min": self.lam_min, "mu0": self.mu0, "lam": self.lam, "mu": self.mu}
        return {"lam_min": F.softplus(self.lam_min_raw), "mu0": 0.98 * torch.sigmoid(self.mu0_raw),
                "lam": F.softplus(self.lam_raw), "mu": 0.98 * torch.sigmoid(self.mu_raw)}

    def readout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w (m, K_L), b (m,)): logit_c = w_c . gamma_{c,L} + b_c (design 1: w_c the shared classifier's)."""
        if self.design == 1:
            w = self.classifier.weight.view(1, -1).expand(self.m, -1)
            return w, self.classifier.bias.expand(self.m)
        return F.softplus(self.readout_raw), self.readout_bias

    @torch.no_grad()
    def operator_norms(self, size: int = 12, iters: int = 30) -> dict:
        """{"Phi": ||sum_c Phi_c||, "D": [[||D_l^(c)|| per class] per layer]} by power iteration (zero borders)."""
        return {"Phi": operator_norm(self.Phi, size, iters, joint=True)[0],
                "D": [operator_norm(d, size, iters, groups_apart=True) for d in self.D]}

    # --- the maths -----------------------------------------------------------------------------
    def _per_channel(self, v: torch.Tensor, channels: int) -> torch.Tensor:
        """Expand a per-class vector (m,) to the (1, m*channels, 1, 1, 1) layout of grouped codes."""
        return v.repeat_interleave(channels).view(1, -1, 1, 1, 1)

    def lam_schedule(self, t: int, lam_min: torch.Tensor | None = None) -> torch.Tensor:
        """lam_c(t), t = 0..T-1: linear decrease from rho*lam_min,c to lam_min,c (MCA schedule)."""
        T, rho = self.config["T"], self.config["rho"]
        frac = (T - 1 - t) / (T - 1) if T > 1 else 0.0
        lam_min = self.learned()["lam_min"] if lam_min is None else lam_min
        return lam_min * (1.0 + (rho - 1.0) * frac)

    def _kernels(self) -> list:
        """The dictionaries' kernels for one forward pass (design 2: normalised once, not at every use)."""
        if self.design == 1:
            return [None] * (self.L + 1)
        return [self.Phi.kernel()] + [d.kernel() for d in self.D]

    def synthesis(self, gamma_L: torch.Tensor, W: list | None = None) -> list[torch.Tensor]:
        """g_L = gamma_{c,L}, g_{l-1} = D_l g_l (eq. 3); returns [g_0, ..., g_L] with g_0 = gamma_c."""
        W = self._kernels() if W is None else W
        g = [gamma_L]
        for l in range(self.L, 0, -1):
            g.insert(0, self.D[l - 1](g[0], w=W[l]))
        return g

    def components(self, gamma_c: torch.Tensor, W: list | None = None) -> torch.Tensor:
        """Phi_c^(i) gamma_c for every class c and modality i: (B, m, n, X, Y, Z) (eq. 2)."""
        W = self._kernels() if W is None else W
        out = self.Phi(gamma_c, w=W[0])
        return out.reshape(out.shape[0], self.m, self.n, *out.shape[2:])

    def ml_ista_step(self, x: torch.Tensor, gamma_L: torch.Tensor | None, lam0: torch.Tensor,
                     W: list | None = None, p: dict | None = None, gram=None) -> list[torch.Tensor]:
        """One merged JF-ML-ISTA step (eq. 7 for L layers); returns [h_0, ..., h_L], h_L = new gamma_{c,L}.

        gamma_L = None stands for gamma_{c,L} = 0 (the first step): every g_l is 0 and the synthesis is skipped,
        which leaves the layered soft-thresholding forward pass of Table I. `gram`: phi_gram(x, ...) of this
        forward pass (pointwise Phi; computed here when not given).
        """
        W = self._kernels() if W is None else W
        p = self.learned() if p is None else p
        g = [0.0] * (self.L + 1) if gamma_L is None else self.synthesis(gamma_L, W)
        nonneg0 = self.config["nonneg"] and not (self.design == 2 and self.config["signed_gamma_c"])
        if self.pointwise_phi:
            gram = self.phi_gram(x, W[0], p["mu0"]) if gram is None else gram
            h = [self._pointwise_prox_step(g[0], gram, p["mu0"], lam0, nonneg0)]
        else:
            # sum_c Phi_c g_0,c - x; the first step (g_0 = 0) passes -r = x (_prox_step)
            r = x if gamma_L is None else self.Phi.synthesis_sum(g[0], w=W[0]) - x
            h = [self._prox_step(g[0], p["mu0"], lam0, self.Phi.code_ch,
                                 lambda b: self.Phi.T_shared(r, b, w=W[0]), nonneg=nonneg0)]
        inplace = not torch.is_grad_enabled()  # inference: g_0..g_{L-1} are fresh and used once, reuse them
        for l, D in enumerate(self.D, start=1):
            if torch.is_tensor(g[l - 1]):
                diff = g[l - 1].sub_(h[l - 1]) if inplace else g[l - 1] - h[l - 1]
            else:  # first step: g_{l-1} = 0, residual -h_{l-1}; _prox_step takes the analysis of its negative
                diff = h[l - 1]
            h.append(self._prox_step(g[l], p["mu"][l - 1], p["lam"][l - 1], D.code_ch,
                                     lambda b, D=D, diff=diff, w=W[l]: D.T(diff, b, w=w)))
        return h

    @property
    def pointwise_phi(self) -> bool:
        """Design 2 with a 1x1x1 Phi: the layer-0 data-fit step is a per-voxel matrix product (phi_gram)."""
        return self.design == 2 and self.config["phi_kernel_size"] == 1

    def phi_gram(self, x: torch.Tensor, w0: torch.Tensor, mu0: torch.Tensor) -> tuple:
        """(M, C, shape) with g_0 - mu_c Phi_c^T (sum_c' Phi_c' g_0,c' - x) = g_0 M + C at every voxel (rows of
        C: voxels): M = I - (Phi Phi^T) diag(mu), C = (x Phi^T) diag(mu), Phi the (m*K_0, n) matrix of the 1x1x1
        kernel; shape: gamma_c's. One (K, K) product per step replaces the synthesis, residual, analysis and
        update passes over the full-resolution codes (the memory traffic that dominates a CPU forward pass); C is
        computed once per forward pass, as x and mu_c do not change between steps."""
        K = w0.shape[0]
        phi = w0.reshape(K, self.n)
        mu = mu0.repeat_interleave(self.Phi.code_ch)
        M = torch.eye(K, dtype=phi.dtype, device=phi.device) - (phi @ phi.T) * mu
        return M, _rows(x) @ (phi.T * mu), (x.shape[0], K, *x.shape[2:])

    def _pointwise_prox_step(self, g0, gram: tuple, mu0, lam0, nonneg: bool) -> torch.Tensor:
        """h_0 = S_{mu lam}(g_0 M + C) (phi_gram; g_0 = 0.0 in the first step)."""
        M, C, shape = gram
        thr = self._per_channel(mu0 * lam0, self.Phi.code_ch)
        if not torch.is_tensor(g0):  # z = C, which the later steps still need: thresholded into a new tensor
            z = _unrows(C, shape)
            return (z - thr).relu_() if nonneg else soft_threshold(z, thr)
        z = _unrows(torch.addmm(C, _rows(g0), M), shape)
        if nonneg:
            return z.sub_(thr).relu_() if not torch.is_grad_enabled() else (z - thr).relu()
        return soft_threshold(z, thr, inplace=not torch.is_grad_enabled())

    def _prox_step(self, g, mu, lam, channels: int, analysis, nonneg: bool | None = None) -> torch.Tensor:
        """S_{mu lam}(g - mu A^T s) for per-class mu, lam (m,), with analysis(bias) = A^T s + bias.

        For S_lam(z) = ReLU(z - lam): ReLU(g - mu (A^T s + lam)), the threshold riding on the convolution's
        bias and g - mu(.) fused in one addcmul. In the first step (g = 0.0) `analysis` is that of -s, so that
        nobody negates s: z = mu (A^T(-s) - bias). nonneg=False (or config "nonneg" False): the two-sided
        S_lam(z) = sign(z) max(|z| - lam, 0)."""
        mu_c = self._per_channel(mu, channels)
        nonneg = self.config["nonneg"] if nonneg is None else nonneg
        bias = lam.repeat_interleave(channels) if nonneg else None
        if isinstance(g, float):
            d = analysis(None if bias is None else -bias)
            z = d.mul_(mu_c) if not torch.is_grad_enabled() else d * mu_c
        else:
            z = torch.addcmul(g, mu_c, analysis(bias), value=-1.0)
        if not nonneg:
            # inference: on the fresh z in place (one temporary less)
            return soft_threshold(z, self._per_channel(mu * lam, channels), inplace=not torch.is_grad_enabled())
        return z.relu_()

    def codes(self, x: torch.Tensor, W: list | None = None, residuals: list | None = None) -> list[torch.Tensor]:
        """Run the T x M unrolled iterations from gamma_{c,L} = 0; returns the last step's [h_0..h_L].
        `residuals` (a list) receives ||sum_c Phi_c h_0,c - x||^2 / ||x||^2 after every step."""
        W = self._kernels() if W is None else W
        p = self.learned()
        gamma_L, h = None, None  # None: gamma_{c,L} = 0
        gram = self.phi_gram(x, W[0], p["mu0"]) if self.pointwise_phi else None
        for t in range(self.config["T"]):
            lam0 = self.lam_schedule(t, p["lam_min"])
            for _ in range(self.config["M"]):
                h = self.ml_ista_step(x, gamma_L, lam0, W, p, gram)
                gamma_L = h[-1]
                if residuals is not None:
                    rec = self.Phi.synthesis_sum(self._gamma_c(h, W), w=W[0])
                    residuals.append(float(((rec - x) ** 2).sum() / (x ** 2).sum().clamp_min(1e-12)))
        return h  # type: ignore[return-value]  # (T, M >= 1: set in the loop)

    def _gamma_c(self, h: list[torch.Tensor], W: list) -> torch.Tensor:
        """The layer-0 code whose components are shown: design 2 h_0 (last step), design 1 D_1 D_2 D_3 h_L."""
        return h[0] if self.design == 2 else self.synthesis(h[-1], W)[0]

    def classify(self, gamma_L: torch.Tensor) -> torch.Tensor:
        """Per-class read-out: (B, m*K_L, ...) -> logits (B, m, ...) at code resolution."""
        B, _, *sp = gamma_L.shape
        if self.design == 1:  # one 1x1x1 classifier shared by every class
            per_class = gamma_L.reshape(B * self.m, -1, *sp)
            return self.classifier(per_class).reshape(B, self.m, *sp)
        w, b = self.readout()
        return F.conv3d(gamma_L, w.reshape(self.m, -1, 1, 1, 1), b, groups=self.m)

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

    def _crop(self, t: torch.Tensor, size) -> torch.Tensor:
        return t[(..., *[slice(0, s) for s in size])]

    def _upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        if self.scale > 1:
            logits = F.interpolate(logits, scale_factor=self.scale, mode="trilinear", align_corners=False)
        return self._crop(logits, size)

    def forward(self, x: torch.Tensor, decompose: bool = False):
        xp, size = self._pad(x)
        W = self._kernels()
        h = self.codes(xp, W)
        logits = self._upsample(self.classify(h[-1]), size)
        if not decompose:
            return logits
        comps = self._crop(self.components(self._gamma_c(h, W), W), size)
        return {"logits": logits, "components": comps, "reconstruction": comps.sum(1)}

    def loss(self, net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Dice + CE on the logits, + beta ||x - sum_c Phi_c gamma_c||^2_B / ||x||^2_B (B: the brain, voxels where
        any modality != 0) + eta sum_{tumour c} ||Phi_c gamma_c||^2 outside class c in B / ||x||^2_B.
        Design 1 (and beta = eta = 0): Dice + CE alone, as it was trained."""
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        beta, eta = float(self.config["beta"]), float(self.config["eta"])
        if self.design == 1 or (beta == 0 and eta == 0):
            return dice_ce(net(x), y)
        out = net(x, decompose=True)
        brain = (x != 0).any(1)                                  # (B, X, Y, Z)
        energy = (x ** 2).sum().clamp_min(1e-6)
        total = dice_ce(out["logits"], y)
        if beta:
            total = total + beta * (((out["reconstruction"] - x) ** 2).sum(1) * brain).sum() / energy
        if eta:
            label = y[:, 0].long()
            for c in range(1, self.m):
                outside = brain & (label != c)
                total = total + eta * ((out["components"][:, c] ** 2).sum(1) * outside).sum() / energy
        return total

    @torch.no_grad()
    def interpret(self, x: torch.Tensor, contributions: bool = True) -> dict[str, torch.Tensor]:
        """Named interpretable outputs for x (B, n, X, Y, Z):

        - "logits" (B, m, X, Y, Z): class scores; "probabilities": their softmax.
        - "components" (B, m, n, X, Y, Z): morphological components Phi_c^(i) gamma_c (eq. 2-4; Fig. 1 of the
          paper); gamma_c is h_0 of the last step (design 2) or D_1 D_2 D_3 gamma_{c,L} (design 1).
        - "reconstruction" (B, n, X, Y, Z) = sum_c components: the model's synthesis of each modality (eq. 2).
        - "residual_energy" (B, X, Y, Z): sum_i (x^(i) - reconstruction^(i))^2.
        - "step_residuals" (T*M,): ||reconstruction - x||^2 / ||x||^2 after each unrolled step (convergence).
        - "logit_contributions" (B, m, K_L, X, Y, Z): w_{c,k} gamma_{c,L,k} upsampled; summed over k plus the
          bias they give "logits" exactly (the read-out and the upsampling are linear).
          Left out when contributions=False (it is K_L full-resolution maps per class).
        - "code_energy" (B, m, X, Y, Z): ||gamma_{c,L}||^2 per voxel, upsampled.
        - "sparsity" (L+1, m): fraction of non-zero coefficients of gamma_c, gamma_{c,1..L} (last step).
        """
        xp, size = self._pad(x)
        W = self._kernels()
        steps: list[float] = []
        h = self.codes(xp, W, residuals=steps)
        gamma_L = h[-1]
        B, _, *sp = gamma_L.shape
        KL = self.D[-1].code_ch
        comps = self._crop(self.components(self._gamma_c(h, W), W), size)
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
            "step_residuals": torch.tensor(steps),
            "code_energy": energy,
            "sparsity": sparsity,
        }
        if contributions:
            w = self.readout()[0].reshape(1, self.m, KL, 1, 1, 1)
            contrib = (gamma_L.reshape(B, self.m, KL, *sp) * w).reshape(B, self.m * KL, *sp)
            out["logit_contributions"] = self._upsample(contrib, size).reshape(B, self.m, KL, *size)
        return out

    def parameter_table(self) -> list[dict]:
        """Learned thresholds and step sizes per class (Table III) with the sign check.

        Rows: class, lam_min_c, mu_c, lam_c1, mu_c1, ..., lam_cL, mu_cL, and "consistent": False when any
        threshold or step size is negative (sparse coding theory requires lam >= 0, mu > 0).
        """
        rows = []
        p = {k: v.detach() for k, v in self.learned().items()}
        for c in range(self.m):
            row = {"class": CLASS_NAMES[c] if self.m == len(CLASS_NAMES) else f"class_{c}",
                   "lam_min_c": float(p["lam_min"][c]), "mu_c": float(p["mu0"][c])}
            for l in range(self.L):
                row[f"lam_c{l + 1}"] = float(p["lam"][l, c])
                row[f"mu_c{l + 1}"] = float(p["mu"][l, c])
            negative = [k for k, v in row.items() if k != "class" and float(v) < 0]  # type: ignore[arg-type]
            row["negative"] = ";".join(negative)
            row["consistent"] = not negative
            rows.append(row)
        return rows
