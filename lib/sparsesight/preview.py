"""PNG previews of a segmentation: axial, coronal and sagittal slices through the tumour."""
from __future__ import annotations

import io

import numpy as np

from . import CLASSES, MODALITIES

_LABEL_COLOURS = {1: (0.1, 0.8, 0.1), 2: (0.9, 0.1, 0.1), 3: (1.0, 0.85, 0.0)}  # BraTS viewer convention


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend: the one place the library chooses the backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes (tight layout), closing the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig, path, dpi: int = 90) -> None:
    """A matplotlib figure written as a PNG at `path` (png_bytes, then an atomic replace; folders made)."""
    from pathlib import Path

    from .atomic import replace_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, png_bytes(fig, dpi))


def _centre(label: np.ndarray) -> tuple[int, ...]:
    """Centre of mass of the largest connected tumour region (the volume's centre when there is none)."""
    from scipy import ndimage

    regions, n = ndimage.label(label > 0)
    if n == 0:
        return tuple(int(s // 2) for s in label.shape)
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(regions), regions, index=np.arange(1, n + 1))))
    return tuple(int(round(v)) for v in ndimage.center_of_mass(regions == largest))


def _slices(vol: np.ndarray, c) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a RAS-ordered (X, Y, Z) volume, oriented for display."""
    return [np.rot90(vol[:, :, c[2]]), np.rot90(vol[:, c[1], :]), np.rot90(vol[c[0], :, :])]


def overlay(gray: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB image of a grey slice with the label colours blended in."""
    g = gray.astype(np.float32)
    lo, hi = np.percentile(g, [1, 99.5]) if g.any() else (0.0, 1.0)
    g = np.clip((g - lo) / (hi - lo + 1e-6), 0, 1)
    rgb = np.repeat(g[..., None], 3, -1)
    for k, col in _LABEL_COLOURS.items():
        m = label == k
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array(col)
    return rgb


def preview_png(image: np.ndarray, label: np.ndarray, components: np.ndarray | None = None,
                reference: np.ndarray | None = None, title: str = "") -> bytes:
    """Rows: the four modalities, the predicted label (and the reference label if given) over FLAIR,
    and per-class morphological components of T1ce; columns: axial, coronal, sagittal through the tumour.

    image (C, X, Y, Z); label (X, Y, Z); components (m, n, X, Y, Z) or None.
    """
    plt = pyplot()

    c = _centre(label if label.any() else (reference if reference is not None else label))
    rows: list[tuple[str, list, str | None]] = [(f"{MODALITIES[i]}", _slices(image[i], c), "gray") for i in range(image.shape[0])]
    flair = _slices(image[0], c)
    rows.append(("prediction on FLAIR", [overlay(f, l) for f, l in zip(flair, _slices(label, c))], None))
    if reference is not None:
        rows.append(("reference on FLAIR", [overlay(f, l) for f, l in zip(flair, _slices(reference, c))], None))
    if components is not None:
        t1ce = MODALITIES.index("T1ce")
        for k in range(components.shape[0]):
            rows.append((f"component {CLASSES[k]}\n(T1ce)", _slices(components[k, t1ce], c), "RdBu_r"))
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.3 * len(rows)))
    for r, (name, ims, cmap) in enumerate(rows):
        vmax = max(float(np.abs(s).max()) for s in ims) or 1.0
        for j, im in enumerate(ims):
            ax = axes[r, j]
            if cmap == "RdBu_r":
                ax.imshow(im, cmap=cmap, vmin=-vmax, vmax=vmax)
            elif cmap:  # grey: 0 (outside the brain) is black, brain windowed to its 99.5th percentile
                ax.imshow(im, cmap=cmap, vmin=0, vmax=float(np.percentile(im[im > 0], 99.5)) if (im > 0).any() else 1)
            else:
                ax.imshow(im)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(("axial", "coronal", "sagittal")[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig, dpi=80)
