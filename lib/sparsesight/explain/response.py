"""Impulse and frequency responses of a shrinkage network's filter banks, their spread and variation features,
and the alpha sweep (seed 003, Appendices B and C).

With every threshold at zero the soft shrinkage is the identity, so the encoder-decoder is a linear system and
its response to a Dirac delta r = C_{b=0}(I) (eqs. 22-24) characterises the filter banks; the frequency response is
f = |F{r}| (App. B). App. C summarises them with

    FDV(f) = ||f||_TV / ||f||_F                                                         (eq. 25)
    ||f||_TV = sum_n sqrt(d_h[n]^2 + d_v[n]^2),  d = Sobel filters * f                  (eqs. 26-28)
    FDS(f) = sum_p f(p) / sum f * ||p - c||     (c: the zero frequency)                 (eq. 29)
    SDS(r) = sum_p |r(p)| / sum |r| * ||p - z|| (z: where the impulse was put)         (eq. 29)

generalised to N dimensions (the Sobel filter of axis k smooths with [1, 2, 1] along every other axis; in 2D it is
eq. 28). SDS weighs by |r|: an impulse response has negative lobes, and the spread is a distance, not a signed sum.
The convolutions are 'same' with zero padding.

Multi-channel networks have one response per (input channel, output channel) pair: r has shape (C_out, C_in, *S).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..preview import png_bytes, pyplot

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0)


# ------------------------------------------------------------------------------------------- responses
@torch.no_grad()
def impulse_response(linear_fn: Callable[[torch.Tensor], torch.Tensor], in_channels: int, shape: Sequence[int],
                     position: Sequence[int] | None = None, device="cpu") -> np.ndarray:
    """r = C_{b=0}(I) (App. B, eqs. 22-24): the output of `linear_fn` (the network with zero thresholds) for a
    unit impulse at `position` (default: the centre, s // 2) in each input channel. Returns (C_out, C_in, *shape)."""
    shape = tuple(int(s) for s in shape)
    position = tuple(s // 2 for s in shape) if position is None else tuple(position)
    delta = torch.zeros(in_channels, in_channels, *shape, device=device)
    for i in range(in_channels):
        delta[(i, i, *position)] = 1.0
    out = linear_fn(delta)  # batch i = response to the impulse in channel i: (C_in, C_out, *S)
    return out.transpose(0, 1).cpu().numpy().astype(np.float64)


def frequency_response(r: np.ndarray, spatial_dims: int | None = None) -> np.ndarray:
    """f = |F{r}| over the last `spatial_dims` axes, zero frequency moved to the centre (index s // 2)."""
    axes = tuple(range(-(spatial_dims or r.ndim), 0))
    return np.abs(np.fft.fftshift(np.fft.fftn(r, axes=axes), axes=axes))


def sobel_gradients(f: np.ndarray) -> list[np.ndarray]:
    """d_k = s_k * f for every axis k (eqs. 27-28), zero-padded 'same' size."""
    f = np.asarray(f, dtype=np.float64)
    return [ndimage.sobel(f, axis=k, mode="constant", cval=0.0) for k in range(f.ndim)]


def total_variation(f: np.ndarray) -> float:
    """||f||_TV = sum_n sqrt(sum_k d_k[n]^2) with Sobel gradients (eq. 26)."""
    return float(np.sqrt(sum(d**2 for d in sobel_gradients(f))).sum())


def fdv(f: np.ndarray) -> float:
    """Frequency-domain variation FDV(f) = ||f||_TV / ||f||_F (eq. 25); NaN for a zero response."""
    norm = float(np.linalg.norm(np.ravel(f)))
    return total_variation(f) / norm if norm > 0 else float("nan")


def _spread(w: np.ndarray, centre: Sequence[float]) -> float:
    w = np.asarray(w, dtype=np.float64)
    if not w.sum() > 0:
        return float("nan")  # a zero response (e.g. a channel pair the network does not connect) has no spread
    grids = np.meshgrid(*[np.arange(s) for s in w.shape], indexing="ij")
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    return float((w / w.sum() * dist).sum())


def fds(f: np.ndarray, centre: Sequence[float] | None = None) -> float:
    """Frequency-domain spread FDS(f) = sum_p f(p)/sum f ||p - c|| (eq. 29); c defaults to the zero frequency of
    an fftshift-ed spectrum (s // 2)."""
    return _spread(f, [s // 2 for s in f.shape] if centre is None else centre)


def sds(r: np.ndarray, impulse: Sequence[float] | None = None) -> float:
    """Space-domain spread SDS(r) = sum_p |r(p)|/sum |r| ||p - z|| (eq. 29); z defaults to the centre (s // 2)."""
    return _spread(np.abs(r), [s // 2 for s in r.shape] if impulse is None else impulse)


def response_metrics(r: np.ndarray, names: Sequence[str] | None = None, spatial_dims: int | None = None) -> list[dict]:
    """One row per (input, output) channel pair of r (C_out, C_in, *S): SDS, FDS, FDV and the DC gain sum r."""
    d = spatial_dims or r.ndim - 2
    f = frequency_response(r, d)
    names = list(names) if names is not None else [f"ch{i}" for i in range(max(r.shape[:2]))]
    rows = []
    for j in range(r.shape[0]):
        for i in range(r.shape[1]):
            rows.append({"input": names[i], "output": names[j], "SDS": round(sds(r[j, i]), 4),
                         "FDS": round(fds(f[j, i]), 4), "FDV": round(fdv(f[j, i]), 4),
                         "dc_gain": round(float(r[j, i].sum()), 6)})
    return rows


# ------------------------------------------------------------------------------------------- alpha sweep
def _high_pass_energy(x: np.ndarray, spatial_dims: int) -> float:
    """||x - G_1 x||^2 over the spatial axes: the energy of the details (Gaussian of sigma 1 voxel removed)."""
    sigma = [0] * (x.ndim - spatial_dims) + [1.0] * spatial_dims
    return float(((x - ndimage.gaussian_filter(x, sigma)) ** 2).sum())


@torch.no_grad()
def alpha_sweep(model, x: torch.Tensor, alphas: Sequence[float] = DEFAULT_ALPHAS, noise: float = 0.1,
                label: np.ndarray | None = None, seed: int = 0) -> tuple[list[dict], dict]:
    """How the thresholds alpha b trade noise for detail (Section 3.2: alpha scales every threshold).

    For each alpha, on x (1, C, *S) and on x plus Gaussian noise of `noise` x (per-channel dynamic range):
      survival        fraction of coefficients that pass the shrinkages (1 at alpha = 0),
      noise_transfer  ||ED_a(x + n) - ED_a(x)|| / ||ED_0(x + n) - ED_0(x)||: noise let through, relative to linear,
      detail          high-pass energy of ED_a(x) relative to ED_0(x),
      foreground      fraction of voxels whose label is not background,
      dice_WT/TC/ET   with `label` (X, Y, Z) given.
    Returns (rows, {"ed": {alpha: ED_a(x)[0] ndarray}, "ed_noisy": {...}}).
    """
    from ..metrics import region_dice

    d = x.dim() - 2
    gen = torch.Generator().manual_seed(seed)
    span = (x.amax(dim=tuple(range(2, x.dim())), keepdim=True) - x.amin(dim=tuple(range(2, x.dim())), keepdim=True))
    xn = x + noise * span * torch.randn(x.shape, generator=gen).to(x.device)
    lin = model.interpret(x, alpha=0.0)["ed"][0].cpu().numpy()
    lin_n = model.interpret(xn, alpha=0.0)["ed"][0].cpu().numpy()
    lin_noise = float(np.linalg.norm(lin_n - lin)) or 1.0
    lin_detail = _high_pass_energy(lin, d) or 1.0
    rows, images = [], {"ed": {}, "ed_noisy": {}}
    for a in alphas:
        out = model.interpret(x, alpha=float(a))
        out_n = model.interpret(xn, alpha=float(a))
        ed, ed_n = out["ed"][0].cpu().numpy(), out_n["ed"][0].cpu().numpy()
        pred = out["logits"][0].argmax(0).cpu().numpy()
        row = {"alpha": float(a), "survival": round(float(out["sparsity"].mean()), 5),
               "noise_transfer": round(float(np.linalg.norm(ed_n - ed)) / lin_noise, 5),
               "detail": round(_high_pass_energy(ed, d) / lin_detail, 5),
               "foreground": round(float((pred > 0).mean()), 5)}
        if label is not None and d == 3:
            row.update({f"dice_{k}": round(v, 4) for k, v in region_dice(pred, label).items()})
        rows.append(row)
        images["ed"][float(a)], images["ed_noisy"][float(a)] = ed, ed_n
    return rows, images


# ------------------------------------------------------------------------------------------- pictures and files
def _mid(a: np.ndarray) -> np.ndarray:
    """The central slice of the last axis of a 3D array (2D arrays as they are)."""
    return a[..., a.shape[-1] // 2] if a.ndim == 3 else a


def _png(fig) -> bytes:
    return png_bytes(fig, dpi=80)


def plot_response(r: np.ndarray, names: Sequence[str], rows: list[dict] | None = None) -> bytes:
    """PNG: the impulse response (top) and log frequency response (bottom) of every channel onto itself, central
    slice, with SDS / FDS / FDV in the titles (Fig. 3 of the paper)."""
    plt = pyplot()

    d = r.ndim - 2
    f = frequency_response(r, d)
    n = min(r.shape[0], r.shape[1])
    by_pair = {(row["input"], row["output"]): row for row in rows or []}
    fig, axes = plt.subplots(2, n, figsize=(3.0 * n, 6.0), squeeze=False)
    for i in range(n):
        ri, fi = _mid(r[i, i]), _mid(f[i, i])
        lim = float(np.abs(ri).max()) or 1.0
        axes[0, i].imshow(ri.T, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        axes[1, i].imshow(np.log10(fi.T + 1e-6), cmap="magma", origin="lower")
        m = by_pair.get((names[i], names[i]))
        axes[0, i].set_title(f"{names[i]}: impulse" + (f"\nSDS {m['SDS']:.2f}" if m else ""), fontsize=9)
        axes[1, i].set_title("log10 |F{r}|" + (f"\nFDS {m['FDS']:.2f}  FDV {m['FDV']:.2f}" if m else ""), fontsize=9)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Encoder-decoder with zero thresholds (alpha = 0): impulse and frequency responses", fontsize=10)
    return _png(fig)


def plot_alpha_sweep(rows: list[dict], images: dict, channel: int = 0, channel_name: str = "") -> bytes:
    """PNG: ED_alpha(x) (top) and ED_alpha(x + noise) (middle) for each alpha, central slice of one channel, and
    the survival / noise-transfer / detail curves (bottom)."""
    plt = pyplot()

    alphas = [row["alpha"] for row in rows]
    n = len(alphas)
    fig = plt.figure(figsize=(2.4 * n, 7.8))
    grid = fig.add_gridspec(3, n)
    ref = _mid(images["ed"][alphas[0]][channel])
    lo, hi = np.percentile(ref, [1, 99])
    for k, a in enumerate(alphas):
        for row_i, key in enumerate(("ed", "ed_noisy")):
            ax = fig.add_subplot(grid[row_i, k])
            ax.imshow(_mid(images[key][a][channel]).T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(f"alpha {a:g}" + (" + noise" if key == "ed_noisy" else ""), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(grid[2, :])
    for key in ("survival", "noise_transfer", "detail", "foreground"):
        ax.plot(alphas, [row[key] for row in rows], "o-", label=key)
    for key in [k for k in rows[0] if k.startswith("dice_")]:
        ax.plot(alphas, [row[key] for row in rows], "s--", label=key)
    ax.set_xlabel("alpha (scale of every threshold)")
    ax.legend(fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    fig.suptitle(f"ED_alpha(x) of {channel_name or f'channel {channel}'}: thresholds trade noise for detail",
                 fontsize=10)
    return _png(fig)


def write_csv(rows: list[dict], path) -> Path:
    path = Path(path)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def response_size(model, limit: int = 64) -> list[int]:
    """Grid of the impulse-response computation: `limit` per axis (a multiple of the model's 2**levels)."""
    scale = getattr(model, "scale", 1)
    side = max(scale, (limit // scale) * scale)
    return [side] * getattr(model, "dims", 3)


def explain(model, x: torch.Tensor, out_dir, names: Sequence[str] | None = None, label: np.ndarray | None = None,
            alphas: Sequence[float] = DEFAULT_ALPHAS, size: int = 64) -> dict:
    """Write response.png/.csv and alpha_sweep.png/.csv for a SUM-like model and one normalised input x
    (1, C, *S) into out_dir; logs one progress line per step. Returns the file paths and, under "metrics",
    the rows of response.csv (response_metrics)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else [f"ch{i}" for i in range(x.shape[1])]
    model.eval()
    logger.info("response: impulse responses on a %s grid", response_size(model, size))
    r = impulse_response(lambda t: model(t, alpha=0.0, output="ed"), x.shape[1], response_size(model, size),
                         device=x.device)
    rows = response_metrics(r, names)
    files: dict[str, Any] = {"response_csv": write_csv(rows, out / "response.csv"), "metrics": rows}
    files["response_png"] = out / "response.png"
    files["response_png"].write_bytes(plot_response(r, names, rows))
    logger.info("response: alpha sweep over %s", list(alphas))
    sweep, images = alpha_sweep(model, x, alphas, label=label)
    files["alpha_sweep_csv"] = write_csv(sweep, out / "alpha_sweep.csv")
    files["alpha_sweep_png"] = out / "alpha_sweep.png"
    files["alpha_sweep_png"].write_bytes(plot_alpha_sweep(sweep, images, 0, names[0]))
    return files
