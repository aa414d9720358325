"""Figures of the microstructure model's explanations: t-SNE of the hybrid's activations (Fig. 4) and the
fingerprints NNLS chose per voxel on the (r, f) grid (models/microstructure.py)."""
from __future__ import annotations

import numpy as np

from ..models.microstructure import K, Microstructure
from ..preview import png_bytes, pyplot


def tsne_png(activations: dict, colour: dict, layers: list[str] | None = None, seed: int = 0,
             max_points: int = 1500) -> bytes:
    """t-SNE embeddings of layer activations (sklearn.manifold.TSNE), one column per layer, one row per
    parameter used as colour (e.g. r_1, f_1, ν_1), as in Fig. 4. Returns PNG bytes."""
    plt = pyplot()
    from sklearn.manifold import TSNE

    layers = layers or list(activations)
    n = len(next(iter(activations.values())))
    pick = np.random.default_rng(seed).permutation(n)[:max_points]
    fig, axes = plt.subplots(len(colour), len(layers), figsize=(3.1 * len(layers), 2.8 * len(colour)),
                             squeeze=False)
    for c, layer in enumerate(layers):
        a = np.asarray(activations[layer])[pick]
        emb = TSNE(n_components=2, init="pca", perplexity=min(30.0, max(5.0, len(a) / 4)),
                   random_state=seed).fit_transform(a.astype(np.float32))
        for rrow, (cname, cval) in enumerate(colour.items()):
            ax = axes[rrow, c]
            sc = ax.scatter(emb[:, 0], emb[:, 1], c=np.asarray(cval)[pick], s=3, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if rrow == 0:
                ax.set_title(layer, fontsize=8)
            if c == len(layers) - 1:
                fig.colorbar(sc, ax=ax, fraction=0.046).set_label(cname, fontsize=8)
    return png_bytes(fig, dpi=80)


def weights_png(model: Microstructure, w: np.ndarray, truth: dict | None = None, titles=None) -> bytes:
    """NNLS weights of a few voxels on the (r, f) grid, one panel per voxel and population (the fingerprints
    the first stage chose), with the true (r, f) marked when given."""
    plt = pyplot()

    w = np.atleast_2d(w)
    nr, nf, n = len(model.grid.radii_um), len(model.grid.fractions), model.grid.n
    fig, axes = plt.subplots(len(w), K, figsize=(3.4 * K, 2.6 * len(w)), squeeze=False)
    for v in range(len(w)):
        for k in range(K):
            ax = axes[v, k]
            img = w[v, k * n:(k + 1) * n].reshape(nr, nf)
            ax.imshow(img.T, origin="lower", aspect="auto", cmap="magma",
                      extent=[model.grid.radii_um[0], model.grid.radii_um[-1],
                              model.grid.fractions[0], model.grid.fractions[-1]])
            if truth is not None:
                ax.plot(truth["r"][v, k], truth["f"][v, k], "c+", ms=10, mew=2)
            ax.set_xlabel("r (µm)", fontsize=7)
            ax.set_ylabel("f", fontsize=7)
            t = f"|w|_0={int((w[v] > 0).sum())}" if k == 0 else ""
            ax.set_title(f"{titles[v] + ' ' if titles else ''}population {k + 1} {t}", fontsize=7)
    return png_bytes(fig, dpi=80)
