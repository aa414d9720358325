"""Latent projections (seed 004, Sec. 4): PCA and t-SNE of what a model computes inside, coloured by label content.

Features per model (latent_features): ML-CSC's deepest sparse codes gamma_{c,L} (all classes' codes stacked,
m * K_L channels at 1/prod(strides) of the input resolution), SUM's bottleneck (the shrunk output of the deepest
encoder convolution, S(K_{1,L-1} ...), before its DWT), or any module's output named by `layer` (forward hook). Every position of the
feature grid is one sample; its label is the dominant class of the voxels it covers (one-hot label average-pooled
to the grid), and its tumour fraction the share of tumour voxels.

    python -m sparsesight.explain.latent --model mlcsc --checkpoint model.pt --images a.nii.gz b.nii.gz \
        --labels la.nii.gz lb.nii.gz --out out/latent

writes latent.csv (image, position, label, tumour_fraction, pc1, pc2, tsne1, tsne2) and latent.png.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import CLASSES
from ..errors import InvalidInput
from ..preview import png_bytes, pyplot


@torch.no_grad()
def latent_features(model, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """(B, F, *grid) features of x (B, C, *spatial): see the module doc for what each model gives."""
    if layer is not None:
        mods = dict(model.named_modules())
        if layer not in mods:
            raise InvalidInput(f"model has no layer {layer!r}; it has {[n for n in mods if n][:20]} ...")
        out = {}
        handle = mods[layer].register_forward_hook(lambda m, i, o: out.setdefault("f", o))
        try:
            model(x)
        finally:
            handle.remove()
        return out["f"]
    if hasattr(model, "latent_features"):
        return model.latent_features(x)
    if hasattr(model, "codes") and hasattr(model, "_pad"):  # ML-CSC: gamma_{c,L}
        return model.codes(model._pad(x)[0])[-1]
    if hasattr(model, "enc1") and hasattr(model, "b_enc1"):  # SUM: the deepest encoder output, shrunk
        from ..models.sum import soft_shrink

        z = latent_features(model, x, layer=f"enc1.{len(model.enc1) - 1}")
        return soft_shrink(z, model.threshold(model.b_enc1[-1]), model._alpha(None))
    raise InvalidInput(f"no latent features known for {type(model).__name__}: name a `layer`")


def grid_labels(label: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
    """Dominant class and tumour fraction (label > 0) of each feature-grid cell (average pooling of one-hot)."""
    lab = torch.as_tensor(np.asarray(label, dtype=np.int64))
    k = max(int(lab.max()) + 1, len(CLASSES))
    onehot = F.one_hot(lab, k).movedim(-1, 0).float()[None]
    pooled = F.adaptive_avg_pool3d(onehot, tuple(grid)) if lab.ndim == 3 else F.adaptive_avg_pool2d(onehot, tuple(grid))
    pooled = pooled[0]
    return pooled.argmax(0).numpy(), (1 - pooled[0]).numpy()


def sample_positions(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n flat positions: every class gets an equal share where it has enough cells (tumour is rare)."""
    flat = labels.ravel()
    classes = np.unique(flat)
    per = max(1, n // len(classes))
    picks = [rng.choice(np.flatnonzero(flat == c), size=min(per, int((flat == c).sum())), replace=False)
             for c in classes]
    return np.sort(np.concatenate(picks))


def project(model, images: list[np.ndarray], labels: list[np.ndarray], names: list[str] | None = None,
            n_per_image: int = 200, seed: int = 0, layer: str | None = None, device="cpu",
            perplexity: float = 30.0, progress: bool = True) -> list[dict]:
    """PCA and t-SNE of the latent features of normalised images (C, *spatial) with their label maps.

    Returns one row per sampled feature-grid position: image, position, label, tumour_fraction, pc1, pc2,
    tsne1, tsne2 (PCA on standardised features; t-SNE, sklearn, PCA-initialised)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if len(images) != len(labels) or not images:
        raise InvalidInput("give as many label maps as images (at least one)")
    names = names or [f"image_{i}" for i in range(len(images))]
    rng = np.random.default_rng(seed)
    model = model.to(device).eval()
    feats, rows = [], []
    for name, img, lab in tqdm(list(zip(names, images, labels)), desc="latent features", disable=not progress):
        f = latent_features(model, torch.as_tensor(img, dtype=torch.float32)[None].to(device), layer)[0].cpu()
        grid = f.shape[1:]
        dom, frac = grid_labels(lab, grid)
        pos = sample_positions(dom, n_per_image, rng)
        feats.append(f.flatten(1).T[pos].numpy())
        for p in pos:
            rows.append({"image": name, "position": "_".join(map(str, np.unravel_index(p, grid))),
                         "label": CLASSES.get(int(dom.ravel()[p]), str(int(dom.ravel()[p]))),
                         "tumour_fraction": round(float(frac.ravel()[p]), 4)})
    X = np.concatenate(feats).astype(np.float64)
    X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-12)
    # one OpenMP thread: t-SNE's threads oversubscribe a shared CPU (100 points took 100 s instead of 2 s)
    with threadpool_limits(1):
        pca = PCA(n_components=2, random_state=seed).fit(X)
        pcs = pca.transform(X)
        tsne = TSNE(n_components=2, perplexity=min(perplexity, max(2.0, (len(X) - 1) / 3)), init="pca",
                    random_state=seed).fit_transform(X)
    for r, pc, ts in zip(rows, pcs, tsne):
        r.update(pc1=float(pc[0]), pc2=float(pc[1]), tsne1=float(ts[0]), tsne2=float(ts[1]),
                 pc_explained=round(float(pca.explained_variance_ratio_[:2].sum()), 4))
    return rows


def write_csv(rows: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def plot_png(rows: list[dict], title: str = "") -> bytes:
    """PCA and t-SNE scatter plots coloured by the dominant class of each position."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    colours = {"background": "#bbbbbb", "oedema": "#2ca02c", "non-enhancing core": "#1f77b4", "enhancing": "#d62728"}
    for ax, (a, b), t in ((axes[0], ("pc1", "pc2"), f"PCA ({rows[0]['pc_explained']:.0%} of the variance)"),
                          (axes[1], ("tsne1", "tsne2"), "t-SNE")):
        for lab in dict.fromkeys(r["label"] for r in rows):
            pts = np.array([(r[a], r[b]) for r in rows if r["label"] == lab])
            ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7, label=lab, color=colours.get(lab))
        ax.set_title(t, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig, dpi=90)


def main(argv=None):
    from .. import checkpoint, models
    from ..data.io import load_image, load_label
    from ..runners.segmentation import normalise

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlcsc")
    p.add_argument("--checkpoint", help="a checkpoint (sparsesight.checkpoint); a fresh model without one")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--per-image", type=int, default=200)
    p.add_argument("--out", default="out/latent")
    a = p.parse_args(argv)
    model = checkpoint.load(a.checkpoint)[0] if a.checkpoint else models.build(a.model)
    imgs = [normalise(load_image(f)[0])[0].as_subclass(torch.Tensor).numpy() for f in a.images]
    labs = [load_label(f)[0] for f in a.labels]
    rows = project(model, imgs, labs, [Path(f).name.split(".")[0] for f in a.images], a.per_image)
    out = Path(a.out)
    write_csv(rows, out / "latent.csv")
    (out / "latent.png").write_bytes(plot_png(rows, f"{a.model}: latent features"))
    print(f"written: {out / 'latent.csv'}, {out / 'latent.png'} ({len(rows)} positions)")


if __name__ == "__main__":
    main()
