"""Latent projections (explain/latent.py): features per model, grid labels, PCA against an SVD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesight import models
from sparsesight.errors import InvalidInput
from sparsesight.explain import latent


def test_grid_labels_are_block_majorities():
    lab = np.zeros((8, 8, 4), np.uint8)
    lab[:4, :4] = 3          # one whole cell of the 2 x 2 x 1 grid is enhancing
    lab[4:, :4, :1] = 1      # a quarter of another is oedema
    dom, frac = latent.grid_labels(lab, (2, 2, 1))
    np.testing.assert_array_equal(dom[..., 0], [[3, 0], [0, 0]])
    np.testing.assert_allclose(frac[..., 0], [[1.0, 0.0], [0.25, 0.0]])


def test_features_of_mlcsc_are_its_deepest_codes():
    torch.manual_seed(0)
    m = models.build("mlcsc", {"design": 1, "atoms": [4, 4, 4, 6], "T": 1}).eval()
    x = torch.randn(1, 4, 16, 16, 8)
    f = latent.latent_features(m, x)
    assert f.shape == (1, 4 * 6, 4, 4, 2)
    torch.testing.assert_close(f, m.codes(m._pad(x)[0])[-1])
    # a named layer through a forward hook
    assert latent.latent_features(m, x, layer="classifier").shape == (4, 1, 4, 4, 2)
    with pytest.raises(InvalidInput, match="no layer"):
        latent.latent_features(m, x, layer="nope")


def test_projection_rows_and_pca_match_an_svd(tmp_path):
    torch.manual_seed(0)
    m = models.build("mlcsc", {"design": 1, "atoms": [4, 4, 4, 4], "T": 1, "lam_init": -0.05}).eval()
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(2):
        lab = np.zeros((16, 16, 8), np.uint8)
        lab[4:12, 4:12, 4:8] = rng.integers(1, 4)
        img = (rng.normal(size=(4, 16, 16, 8)) + 2.0 * (lab > 0)).astype(np.float32)
        images.append(img)
        labels.append(lab)
    rows = latent.project(m, images, labels, ["a", "b"], n_per_image=24, perplexity=5, progress=False)
    assert {r["image"] for r in rows} == {"a", "b"}
    assert {"background"} < {r["label"] for r in rows}
    # PC1 of the standardised features is the first right singular vector's projection (up to sign)
    feats = []
    for img, name in zip(images, ["a", "b"]):
        f = latent.latent_features(m, torch.as_tensor(img)[None])[0].flatten(1).T.numpy()
        pos = [tuple(map(int, r["position"].split("_"))) for r in rows if r["image"] == name]
        grid = latent.latent_features(m, torch.as_tensor(img)[None]).shape[2:]
        feats.append(f[[np.ravel_multi_index(p, grid) for p in pos]])
    X = np.concatenate(feats).astype(np.float64)
    X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-12)
    u, s, vt = np.linalg.svd(X, full_matrices=False)
    pc1 = np.array([r["pc1"] for r in rows])
    assert abs(np.corrcoef(pc1, X @ vt[0])[0, 1]) == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["pc_explained"] == pytest.approx((s[:2] ** 2).sum() / (s ** 2).sum(), abs=1e-3)
    assert latent.plot_png(rows).startswith(b"\x89PNG")
    path = latent.write_csv(rows, tmp_path / "latent.csv")
    assert path.read_text().splitlines()[0].startswith("image,position,label,tumour_fraction,pc1")
