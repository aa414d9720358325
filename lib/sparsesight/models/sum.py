"""SUM: the simplified U-Net-proxy model with soft-shrinkage activations and Haar wavelet sampling (seed 003).

Zavala-Mondragón et al., "Segmentation CNNs are denoising models". The network is C(x) = Omega(ED_S(alpha)(x))
(eq. 9): an encoder-decoder ED that decomposes the image with bias-free 3x3 convolutions K and the orthonormal
Haar DWT, sparsifies every feature map with soft shrinkage S_{alpha b}(z) = sign(z) max(|z| - alpha b, 0)
(eq. 17, one learned threshold b per channel: b = |theta| >= 0 started at 0.1; the first release's b was signed
and started at 0, config "thresholds"), and reconstructs with the inverse DWT and the
decoder kernels K~ (Fig. 1); the output layer Omega is a 1x1 convolution followed by clipping to [0, 1].

Layout (Fig. 1, levels l = 0..L-1, F_l = features * 2**l feature maps):

    encoder  e_l = S(K_{1,l} S(K_{0,l} a_l)),   a_0 = x,   (a_{l+1}, h_l) = DWT(e_l)   (low band, detail bands)
    decoder  u_l = IDWT(d_{l+1}, h_l)   with d_L = a_L (the deepest approximation band),
             v_l = S(K^u_l u_l + K^d_l e_l)       (the U-Net's concatenation + reduction as a sum of two convs)
             d_l = S(K~_l v_l)  (F_l -> F_{l-1});  at l = 0, ED(x) = K~_0 v_0 (F_0 -> in_channels, linear)
    output   m^_k = C_{0,1}(K_Omega ED(x) + b_Omega)_k   (one binary map per nested region k = 1..K-1)

alpha scales every threshold: alpha = 0 makes ED linear, ED_{alpha=0}(x) = K~...K x (App. B, eqs. 22-24), and
alpha = 1 is the trained model. Training loss (eq. 13-15): soft IoU (Huang et al. 2019, with smoothing) of the
clipped region maps plus lambda_rec * ||x - ED_{alpha=0}(x)||_1 (mean absolute error); lambda_rec = 0.35 gives
SUM_Rec, lambda_rec = 0 SUM_Seg. Works on 3D volumes and 2D slices (`spatial_dims`).

Training device (the model itself is unchanged): C_{0,1} has zero derivative outside [0, 1], so a tumour voxel
pushed below 0 (or a background voxel above 1) could never come back, and with the short budgets of a CPU the
whole output died at 0 (Dice 0). The clip's backward pass therefore lets the gradient through where a voxel is
saturated on the wrong side (the loss asks to move it back into the range) and keeps the true zero derivative
where it is saturated on the right side; Omega's bias starts at 0 (every region off) instead of inside the range.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput
from ..ops.conv import Conv2d, Conv3d
from ..ops.haar import dwt, idwt
from ..ops.soft_threshold import soft_threshold
from . import with_defaults

LAMBDA_REC = 0.35  # Section 4.2: SUM_Rec
ALPHA_RANGE = (0.0, 2.0)
OMEGA_LR_FACTOR = 20.0  # the read-out's learning rate over the network's (lr_multipliers)  # the paper sweeps alpha in [0, 1]; up to 2 shows stronger-than-trained shrinkage


def default_config() -> dict:
    """Hyperparameters (not learned): 4 decomposition levels, 8 feature maps after the first convolution (4.2)."""
    return {
        "in_channels": 4,           # FLAIR, T1, T1ce, T2
        "num_classes": 4,           # background, oedema, non-enhancing core, enhancing (K-1 nested region maps)
        "spatial_dims": 3,          # 3 for volumes, 2 for slices
        "features": 8,              # F_0; doubles with every level
        "levels": 4,                # DWT decomposition levels
        "lambda_rec": LAMBDA_REC,   # eq. 13; 0 trains SUM_Seg
        "smooth": 1.0,              # soft-IoU smoothing
        "init": "identity",         # "identity": filter banks start as a perfect-reconstruction pair (eq. 6) plus
                                    # small noise; "random": variance-preserving Gaussian kernels
        "roi_size": [96, 96, 96],   # sliding-window size used by runners.segmentation.predict (a multiple of 2**levels)
        "thresholds": "nonneg",     # "nonneg": b = |theta| >= 0 by construction, started at threshold_init (issue 17);
                                    # "signed": b = theta, started at 0, may go negative (the first release)
        "threshold_init": 0.1,      # of b (z-scored inputs: about a tenth of a typical coefficient)
    }


def stored_config(config: dict) -> dict:
    """A stored checkpoint's config: one without "thresholds" predates the constraint (signed, started at 0)."""
    return dict(config) if "thresholds" in config else {**config, "thresholds": "signed", "threshold_init": 0.0}


def train_defaults() -> dict:
    """Optimiser settings of Section 4.3 (AdamW, weight decay 0.25); the learning rate suits short CPU budgets."""
    return {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.25}


def check_alpha(alpha) -> float:
    """alpha as a float in ALPHA_RANGE, or InvalidInput with the reason."""
    try:
        if isinstance(alpha, bool):
            raise TypeError
        a = float(alpha)
    except (TypeError, ValueError):
        raise InvalidInput(f"'alpha' must be a number between {ALPHA_RANGE[0]} and {ALPHA_RANGE[1]}, "
                           f"got {alpha!r}") from None
    if not (ALPHA_RANGE[0] <= a <= ALPHA_RANGE[1]):  # also refuses NaN
        raise InvalidInput(f"'alpha' must be between {ALPHA_RANGE[0]} (linear model) and {ALPHA_RANGE[1]}, "
                           f"got {alpha!r}; 1 is the trained model")
    return a


def soft_shrink(z: torch.Tensor, b: torch.Tensor, alpha, inplace: bool = False) -> torch.Tensor:
    """S_{alpha b}(z) = sign(z) max(|z| - alpha b, 0) with one threshold per channel (eq. 17, Fig. 1).
    `inplace` overwrites z (inference on a tensor nothing else holds)."""
    lam = (alpha * b).reshape(1, -1, *([1] * (z.dim() - 2)))
    if bool((lam >= 0).all()):  # the same function (and gradients) in two passes instead of four
        return z.sub_(z.clamp(-lam, lam)) if inplace else z - z.clamp(-lam, lam)
    return soft_threshold(z, lam)  # negative thresholds boost instead (Fig. 6): the general form


def soft_iou(probabilities: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft IoU per class over the batch (Huang et al. 2019): (sum p y + s) / (sum p + sum y - sum p y + s).

    probabilities, target: (B, K, *S) in [0, 1]; returns (K,)."""
    dims = [0] + list(range(2, probabilities.dim()))
    inter = (probabilities * target).sum(dims)
    union = probabilities.sum(dims) + target.sum(dims) - inter
    return (inter + smooth) / (union + smooth)


def region_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary nested-region masks r_k = [y >= k], k = 1..K-1 (BraTS: WT, TC, ET), of integer labels y (B, 1, *S)."""
    k = torch.arange(1, num_classes, device=y.device).reshape(1, -1, *([1] * (y.dim() - 2)))
    return (y >= k).to(torch.float32)


def class_memberships(q: torch.Tensor) -> torch.Tensor:
    """s_k = min(q'_k, 1 - q'_{k+1}), k = 0..K-1, from clipped region maps q (B, K-1, *S) in [0, 1].

    q'_k = min(q_1, ..., q_k) makes the regions nested (q'_0 = 1, q'_K = 0): "inside region k and not inside
    region k+1". The class c decided by thresholding every region at 0.5 (r_1..r_c on, r_{c+1} off) is the only
    one with s_c >= 0.5 (strictly greater unless a region sits exactly at 0.5), so argmax_k s_k reproduces it."""
    nested = [q[:, :1]]  # a running minimum over K-1 channels (torch.cummin is ~20x slower on CPU)
    for k in range(1, q.shape[1]):
        nested.append(torch.minimum(nested[-1], q[:, k:k + 1]))
    nested = torch.cat(nested, 1)
    ones = torch.ones_like(q[:, :1])
    inside = torch.cat([ones, nested], 1)               # q'_0 .. q'_{K-1}
    outside_next = 1.0 - torch.cat([nested, 0 * ones], 1)  # 1 - q'_1 .. 1 - q'_K
    return torch.minimum(inside, outside_next)


class _ClipWrongSide(torch.autograd.Function):
    """C_{0,1}(z) forward; backward passes the gradient where z is in [0, 1] and where z is saturated on the side
    the loss wants to leave (z < 0 asked to grow, z > 1 asked to shrink); zero where it is saturated correctly."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        keep = ((z >= 0) & (z <= 1)) | ((z < 0) & (g < 0)) | ((z > 1) & (g > 0))
        return g * keep


def reconstruction_l1(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """R_Rec = ||x - x^||_1 (eq. 14), as the mean absolute error so that lambda_rec is independent of size."""
    return (x - x_hat).abs().mean()


class SUM(nn.Module):
    """Simplified U-Net-proxy model (seed 003, Fig. 1).

    forward(x, alpha=None, output="logits"): x (B, in_channels, *S) normalised image ->
      "logits": log s_k (B, num_classes, *S), the class memberships of the clipped region maps (argmax: label);
      "regions": K_Omega ED(x) + b_Omega (B, num_classes - 1, *S), the region maps before clipping;
      "ed": ED_alpha(x) (B, in_channels, *S).  alpha=None uses the model's `alpha` buffer (1 after training).
    interpret(x): the named intermediate outputs (see its docstring).
    loss(net, x, y): eq. 13 for a batch with integer labels y (B, 1, *S).
    """

    def __init__(self, **config):
        super().__init__()
        cfg = with_defaults(default_config(), config, "SUM")
        if cfg["spatial_dims"] not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {cfg['spatial_dims']}")
        self.config = cfg
        d, n, L, f0 = cfg["spatial_dims"], cfg["in_channels"], cfg["levels"], cfg["features"]
        self.dims, self.n, self.m, self.L = d, n, cfg["num_classes"], L
        self.scale = 2**L
        feats = [f0 * 2**level for level in range(L)]
        self.features = feats
        conv = lambda cin, cout: _conv(d, cin, cout)  # noqa: E731
        self.enc0 = nn.ModuleList(conv(n if level == 0 else feats[level - 1], feats[level]) for level in range(L))
        self.enc1 = nn.ModuleList(conv(feats[level], feats[level]) for level in range(L))
        self.dec_up = nn.ModuleList(conv(feats[level], feats[level]) for level in range(L))    # K^u_l
        self.dec_skip = nn.ModuleList(conv(feats[level], feats[level]) for level in range(L))  # K^d_l
        self.dec_out = nn.ModuleList(conv(feats[level], n if level == 0 else feats[level - 1]) for level in range(L))
        if cfg["init"] == "identity":
            self._init_identity()
        elif cfg["init"] == "random":
            for up, skip in zip(self.dec_up, self.dec_skip):  # the sum of two convs keeps the variance of one
                for c in (up, skip):
                    with torch.no_grad():
                        c.weight /= math.sqrt(2.0)
        else:
            raise ValueError(f"init must be 'identity' or 'random', got {cfg['init']!r}")
        # per-channel thresholds b = threshold(theta): |theta| >= 0 ("nonneg"), or theta itself ("signed")
        if cfg["thresholds"] not in ("nonneg", "signed"):
            raise ValueError(f"thresholds must be 'nonneg' or 'signed', got {cfg['thresholds']!r}")
        b0 = float(cfg["threshold_init"])
        self.b_enc0 = nn.ParameterList(nn.Parameter(torch.full((f,), b0)) for f in feats)
        self.b_enc1 = nn.ParameterList(nn.Parameter(torch.full((f,), b0)) for f in feats)
        self.b_dec = nn.ParameterList(nn.Parameter(torch.full((f,), b0)) for f in feats)
        self.b_dec_out = nn.ParameterList(nn.Parameter(torch.full((feats[level - 1],), b0)) for level in range(1, L))
        # output layer Omega: 1x1 convolution (with bias: ED is odd, ED(-x) = -ED(x), so offsets need one)
        self.omega = (Conv2d if d == 2 else Conv3d)(n, self.m - 1, kernel_size=1)
        with torch.no_grad():  # every region starts off (at the clip's lower edge); the clip's gradient pulls
            self.omega.weight.normal_(0.0, 0.01)  # the tumour voxels up (_ClipWrongSide)
            self.omega.bias.zero_()
        self.register_buffer("alpha", torch.tensor(1.0))

    @torch.no_grad()
    def _init_identity(self, noise: float = 0.1):
        """Delta kernels that copy the first min(C_in, C_out) channels (K^u, K^d halved), plus Gaussian noise of
        std noise / sqrt(fan_in): with alpha = 0 the network then starts close to ED(x) = x (eq. 6)."""
        centre = (1,) * self.dims
        for mods, gain in ((self.enc0, 1.0), (self.enc1, 1.0), (self.dec_up, 0.5), (self.dec_skip, 0.5),
                           (self.dec_out, 1.0)):
            for c in mods:
                c.weight.normal_(0.0, noise / math.sqrt(c.in_channels * 3**self.dims))
                for k in range(min(c.in_channels, c.out_channels)):
                    c.weight[(k, k, *centre)] += gain

    # --- the maths -----------------------------------------------------------------------------
    def _alpha(self, alpha):
        return self.alpha if alpha is None else alpha

    def ed(self, x: torch.Tensor, alpha=None, masks: dict | None = None) -> torch.Tensor:
        """ED_S(alpha)(x) (Fig. 1, eq. 15 for alpha = 0) on a padded input; fills `masks` (name -> bool tensor
        of the coefficients that survive each shrinkage, |z| > alpha b) when given."""
        a = self._alpha(alpha)
        K = 2**self.dims

        def shrink(z, theta, name):
            b = self.threshold(theta)
            if masks is not None:
                masks[name] = z.abs() > (a * b).reshape(1, -1, *([1] * self.dims))
            return soft_shrink(z, b, a, inplace=not torch.is_grad_enabled())  # z: a fresh convolution output

        skips, details = [], []
        h = x
        for level in range(self.L):
            e = shrink(self.enc0[level](h), self.b_enc0[level], f"encoder_{level}.0")
            e = shrink(self.enc1[level](e), self.b_enc1[level], f"encoder_{level}.1")
            w = dwt(e, self.dims)  # (B, C*K, *S/2): channel c's subbands at c*K .. c*K + K-1, band 0 = approximation
            skips.append(e)
            details.append(w)
            h = _bands(w, K)[..., 0].movedim(-1, 1).contiguous(memory_format=_memory_format(self.dims))  # a_{l+1}
        d = h  # the deepest approximation band goes straight to the inverse DWT
        for level in reversed(range(self.L)):
            u = idwt(_replace_approximation(details[level], d, K), self.dims)
            v = shrink(self.dec_up[level](u) + self.dec_skip[level](skips[level]), self.b_dec[level],
                       f"decoder_{level}.0")
            d = self.dec_out[level](v)
            if level > 0:
                d = shrink(d, self.b_dec_out[level - 1], f"decoder_{level}.1")
        return d

    def threshold(self, theta: torch.Tensor) -> torch.Tensor:
        """The threshold b of a shrinkage layer from its parameter theta: |theta| (>= 0) or theta ("signed")."""
        return theta.abs() if self.config["thresholds"] == "nonneg" else theta

    def omega_logits(self, c: torch.Tensor) -> torch.Tensor:
        """K_Omega c + b_Omega: the region maps before clipping (B, K-1, *S)."""
        return self.omega(c)

    @staticmethod
    def clip(z: torch.Tensor) -> torch.Tensor:
        """C_{0,1}: the saturating part of the output layer Omega (eq. 12); when gradients are recorded its
        backward lets wrongly saturated voxels come back (_ClipWrongSide), the values are the same."""
        return _ClipWrongSide.apply(z) if torch.is_grad_enabled() and z.requires_grad else z.clamp(0.0, 1.0)

    @staticmethod
    def log_memberships(q: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """log(s_k + eps) of the clipped region maps q: the class scores whose argmax is the label."""
        return torch.log(class_memberships(q) + eps)

    # --- nn.Module API -------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor):
        if x.dim() != self.dims + 2 or x.shape[1] != self.n:
            raise InvalidInput(f"SUM expects a (B, {self.n}, {', '.join('XYZ'[:self.dims])}) tensor; "
                               f"got {tuple(x.shape)}")
        sp = tuple(x.shape[2:])
        pads = []
        for s in reversed(sp):
            pads += [0, int(math.ceil(s / self.scale) * self.scale) - s]
        x = F.pad(x, pads) if any(pads) else x
        # channels-last all the way through: oneDNN's convolutions (and the Haar DWT) run 2-5x faster on CPUs
        return x.contiguous(memory_format=_memory_format(self.dims)), sp

    def _crop(self, t: torch.Tensor, size) -> torch.Tensor:
        return t[(..., *[slice(0, s) for s in size])]

    def forward(self, x: torch.Tensor, alpha=None, output: str = "logits") -> torch.Tensor:
        xp, size = self._pad(x)
        if output not in ("logits", "regions", "ed"):
            raise ValueError(f"output must be 'logits', 'regions' or 'ed', got {output!r}")
        c = self.ed(xp, alpha)
        if output == "ed":
            return self._crop(c, size)
        z = self._crop(self.omega_logits(c), size)
        return z if output == "regions" else self.log_memberships(self.clip(z))

    def loss(self, net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L = (1 - mean_k softIoU(C_{0,1}(regions_k), [y >= k])) + lambda_rec ||x - ED_{alpha=0}(x)||_1 (eq. 13-15).

        `net` is this model or its DistributedDataParallel wrapper (both passes go through it)."""
        target = region_targets(y, self.m).to(x.dtype)
        seg = 1.0 - soft_iou(self.clip(net(x, output="regions")), target, self.config["smooth"]).mean()
        lam = self.config["lambda_rec"]
        if not lam:
            return seg
        return seg + lam * reconstruction_l1(x, net(x, alpha=0.0, output="ed"))

    @contextlib.contextmanager
    def using_alpha(self, alpha):
        """Temporarily scale every threshold by `alpha` (None: leave it as it is)."""
        if alpha is None:
            yield self
            return
        old = self.alpha.clone()
        self.alpha.fill_(check_alpha(alpha))
        try:
            yield self
        finally:
            self.alpha.copy_(old)

    @torch.no_grad()
    def interpret(self, x: torch.Tensor, alpha=None, **_) -> dict:
        """Named interpretable outputs for x (B, in_channels, *S):

        - "regions" (B, K-1, *S): K_Omega ED_alpha(x) + b_Omega, the region maps (WT, TC, ET) before clipping.
        - "region_probabilities" (B, K-1, *S): the clipped outputs m^_k = C_{0,1}(regions_k) in [0, 1] (eq. 12).
        - "probabilities" (B, K, *S): the class memberships s_k of the clipped regions (class_memberships).
        - "logits" (B, K, *S): log s_k (argmax: the label, region maps thresholded at 0.5).
        - "ed" (B, in_channels, *S): ED_alpha(x), the denoised signal that enters the output layer ("Inp. sig. O.L.").
        - "ed_linear" (B, in_channels, *S): ED_{alpha=0}(x), what the filter banks alone reconstruct (eq. 15).
        - "masks": {layer name: bool (B, C_l, *S_l)}: the coefficients that survive each shrinkage (|z| > alpha b).
        - "survival" (B, 2L, *S): per level, the fraction of surviving coefficients over the level's encoder
          ("encoder_l") and decoder ("decoder_l") shrinkages, repeated up to the input grid (order: SURVIVAL_NAMES).
        - "sparsity" (n_layers,): fraction of surviving coefficients per shrinkage layer (order: masks' keys).
        """
        a = self._alpha(alpha)
        xp, size = self._pad(x)
        masks: dict = {}
        c = self.ed(xp, a, masks)
        lin = self.ed(xp, 0.0)
        regions = self.omega_logits(c)
        q = self.clip(regions)
        survival = []
        for name in self.survival_names():
            kind, level = name.split("_")
            ms = [m.float().mean(1, keepdim=True) for k, m in masks.items() if k.startswith(f"{kind}_{level}.")]
            frac = torch.stack(ms).mean(0)
            factor = xp.shape[-1] // frac.shape[-1]
            if factor > 1:
                frac = F.interpolate(frac, scale_factor=factor, mode="nearest")
            survival.append(frac)
        return {
            "regions": self._crop(regions, size),
            "region_probabilities": self._crop(q, size),
            "probabilities": self._crop(class_memberships(q), size),
            "logits": self._crop(self.log_memberships(q), size),
            "ed": self._crop(c, size),
            "ed_linear": self._crop(lin, size),
            "masks": masks,
            "survival": self._crop(torch.cat(survival, 1), size),
            "sparsity": torch.stack([m.float().mean() for m in masks.values()]),
        }

    train_defaults = staticmethod(train_defaults)

    def no_weight_decay(self) -> tuple[str, ...]:
        """Omega's kernel is the read-out scale (thresholds are kept from decay by the trainer already)."""
        return ("omega.weight",)

    def lr_multipliers(self) -> dict[str, float]:
        """Omega learns at OMEGA_LR_FACTOR x the base rate: its 12 weights set the scale at which the region maps reach
        the clip's edges (|w| ~ 0.5-0.8 on z-scored ED), but Adam moves a weight by about lr per step, and the
        recipe's ~130 steps left them at the initial ~0.05: only the brightest ED output (core, enhancing rim)
        crossed 0.5 and the oedema never did (WT Dice 0.22). Refitting Omega alone on the frozen ED of those
        weights gave held-out WT 0.945 (training/segmentation.py, parameter_groups)."""
        return {"omega.weight": OMEGA_LR_FACTOR, "omega.bias": OMEGA_LR_FACTOR}

    def survival_names(self) -> list[str]:
        return [f"encoder_{level}" for level in range(self.L)] + [f"decoder_{level}" for level in range(self.L)]

    def parameter_table(self) -> list[dict]:
        """Learned thresholds b per shrinkage layer (summary over channels) and the scalar alpha.

        Rows: layer, channels, b_mean, b_min, b_max, negative (channels with b < 0: those boost instead of
        shrink, Fig. 6), then one row "alpha" with its value."""
        rows = []
        layers = ([(f"encoder_{lv}.0", b) for lv, b in enumerate(self.b_enc0)]
                  + [(f"encoder_{lv}.1", b) for lv, b in enumerate(self.b_enc1)]
                  + [(f"decoder_{lv}.0", b) for lv, b in enumerate(self.b_dec)]
                  + [(f"decoder_{lv + 1}.1", b) for lv, b in enumerate(self.b_dec_out)])
        for name, theta in layers:
            b = self.threshold(theta.detach().cpu())
            rows.append({"layer": name, "channels": int(b.numel()), "b_mean": float(b.mean()),
                         "b_min": float(b.min()), "b_max": float(b.max()), "negative": int((b < 0).sum())})
        alpha = float(self.alpha)  # type: ignore[arg-type]  # (a buffer)
        rows.append({"layer": "alpha", "channels": 1, "b_mean": alpha, "b_min": alpha, "b_max": alpha,
                     "negative": int(alpha < 0)})
        return rows


def _memory_format(dims: int) -> torch.memory_format:
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def _bands(w: torch.Tensor, K: int) -> torch.Tensor:
    """DWT output (B, C*K, *S) as (B, *S, C, K) (a view when w is channels-last)."""
    return w.movedim(1, -1).reshape(*w.shape[:1], *w.shape[2:], w.shape[1] // K, K)


def _replace_approximation(w: torch.Tensor, a: torch.Tensor, K: int) -> torch.Tensor:
    """The subbands w (B, C*K, *S) with each channel's approximation band replaced by a (B, C, *S), laid out
    channels-last (one copy): the decoder's input to the inverse DWT."""
    y = torch.cat([a.movedim(1, -1).unsqueeze(-1), _bands(w, K)[..., 1:]], -1)  # (B, *S, C, K)
    return y.flatten(-2).movedim(-1, 1)


def _conv(dims: int, cin: int, cout: int) -> nn.Module:
    """Bias-free 3x3(x3) convolution, variance-preserving initialisation (no normalisation layers in SUM)."""
    c = (Conv2d if dims == 2 else Conv3d)(cin, cout, kernel_size=3, padding=1, bias=False)
    nn.init.normal_(c.weight, 0.0, 1.0 / math.sqrt(cin * 3**dims))
    return c


def sum_seg(**config) -> SUM:
    """SUM_Seg: trained with the segmentation loss only (lambda_rec = 0)."""
    return SUM(**{**config, "lambda_rec": 0.0})


def sum_rec(**config) -> SUM:
    """SUM_Rec: segmentation loss + 0.35 ||x - ED_{alpha=0}(x)||_1 (Section 4.2)."""
    return SUM(**{**config, "lambda_rec": LAMBDA_REC})
