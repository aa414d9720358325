"""Active-learning scores (sparsesight.active_learning) against closed forms, scipy and the models' own outputs."""
import math
import os
import time

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from torch import nn

from sparsesight import models
from sparsesight.active_learning import (
    FLIPS,
    ScoreCache,
    area_under_curve,
    brain_mask,
    entropy,
    epistemic_score,
    expected_entropy,
    file_fingerprint,
    gains,
    mutual_information,
    predictive_entropy,
    rank,
    rank_fusion,
    relative_residual,
    relative_residual_from_energy,
    residual_from_outputs,
    sparse_residual_score,
    tta_probabilities,
    variance,
)
from sparsesight.data.phantom import make_case
from sparsesight.errors import InvalidInput
from sparsesight.runners.segmentation import normalise


@pytest.fixture(scope="module")
def image():
    img = make_case(3, downsample=4).image  # (X, Y, Z, 4) raw intensities
    return np.ascontiguousarray(np.moveaxis(img, -1, 0), dtype=np.float32)  # (4, 60, 60, 39)


# ------------------------------------------------------------------------------------------- residual
def test_relative_residual_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 6, 7))
    # xhat = a x: with gain 1 it leaves (1 - a)^2 of the energy; the fitted gain 1/a explains all of it
    for a in (0.3, 1.0, 1.5, -2.0):
        assert relative_residual(x, a * x, fit_gain=False) == pytest.approx((1 - a) ** 2)
        assert relative_residual(x, a * x) == pytest.approx(0.0, abs=1e-12)
        assert np.allclose(gains(x, a * x), 1 / a)
    assert relative_residual(x, 0 * x) == pytest.approx(1.0)  # nothing reconstructed: gain 0, R = 1
    # an orthogonal reconstruction explains nothing whatever its gain
    y = rng.normal(size=x.shape)
    y -= (y * x).sum(axis=(1, 2, 3), keepdims=True) / (x ** 2).sum(axis=(1, 2, 3), keepdims=True) * x
    assert relative_residual(x, y) == pytest.approx(1.0)
    # R = 1 - sum_i <x_i, xhat_i>^2 / ||xhat_i||^2 / ||x||^2 = 1 - sum_i ||x_i||^2 cos^2_i / ||x||^2
    xhat = x + rng.normal(size=x.shape)
    cos2 = [(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b)) ** 2 for a, b in zip(x, xhat)]
    expected = 1 - sum(c * (a ** 2).sum() for c, a in zip(cos2, x)) / (x ** 2).sum()
    assert relative_residual(x, xhat) == pytest.approx(expected)
    # by hand on two voxels, gain 1: x = [3, 4] at v0, [1, 0] at v1 (2 channels), xhat = 0 at v0, x at v1
    x = np.zeros((2, 2, 1, 1))
    x[:, 0, 0, 0], x[:, 1, 0, 0] = [3, 4], [1, 0]
    xhat = x.copy()
    xhat[:, 0] = 0
    assert relative_residual(x, xhat, fit_gain=False) == pytest.approx(25 / 26)
    # fitted gains: channel 0 (x = [3, 1], xhat = [0, 1]) s = 1, residual 9; channel 1 (x = [4, 0], xhat = 0): 16
    assert relative_residual(x, xhat) == pytest.approx(25 / 26)
    mask = np.array([False, True]).reshape(2, 1, 1)
    assert relative_residual(x, xhat, mask) == 0.0  # the badly reconstructed voxel is outside Omega


def test_relative_residual_from_energy_matches_and_refuses():
    rng = np.random.default_rng(1)
    x, xhat = rng.normal(size=(3, 4, 4, 4)), rng.normal(size=(3, 4, 4, 4))
    mask = rng.random((4, 4, 4)) > 0.5
    e = ((x - xhat) ** 2).sum(0)
    assert relative_residual_from_energy(e, x, mask) == pytest.approx(relative_residual(x, xhat, mask, False))
    assert relative_residual_from_energy(torch.tensor(e), torch.tensor(x), mask) == pytest.approx(
        relative_residual(x, xhat, mask, fit_gain=False))
    with pytest.raises(InvalidInput, match="shape"):
        relative_residual(x, xhat[:2])
    with pytest.raises(InvalidInput, match="zero inside the brain"):
        relative_residual(np.zeros_like(x), xhat)


def test_brain_mask(image):
    m = brain_mask(image)
    assert image.shape[0] == 4 and m.shape == image.shape[1:] and 0.1 < m.mean() < 0.9
    assert not image[:, ~m].any()
    with pytest.raises(InvalidInput, match="C, X, Y, Z"):
        brain_mask(image[0])


@pytest.mark.slow
def test_mlcsc_residual_energy_and_reconstruction_agree(image):
    """ML-CSC's residual_energy is sum_i (x_i - sum_c Phi_c gamma_c)^2: both routes give the same R."""
    torch.manual_seed(0)
    model = models.build("mlcsc").eval()
    x = normalise(image)
    out = model.interpret(x, contributions=False)
    mask = brain_mask(image)
    r_energy = residual_from_outputs({"residual_energy": out["residual_energy"]}, x, mask)
    r_recon = relative_residual(x[0], out["reconstruction"][0], mask, fit_gain=False)
    assert r_energy == pytest.approx(r_recon, rel=1e-4)
    direct = float(((x[0] - out["reconstruction"][0]) ** 2).sum(0)[torch.from_numpy(mask)].sum()
                   / (x[0] ** 2).sum(0)[torch.from_numpy(mask)].sum())
    assert r_energy == pytest.approx(direct, rel=1e-4)
    # the score fits the gains to the synthesis: never worse than gain 1, and in [0, 1]
    score = sparse_residual_score(model, image)["score"]
    assert score == pytest.approx(residual_from_outputs(out, x, mask), rel=1e-6)
    assert 0 <= score <= min(1.0, r_energy) + 1e-9


def test_residual_prefers_sums_linear_reconstruction():
    x = torch.ones(1, 2, 3, 3, 3)
    out = {"ed_linear": 0.5 * x, "reconstruction": x}  # SUM: ED_{alpha=0}(x) is the reconstruction to use
    assert residual_from_outputs(out, x) == pytest.approx(0.0)  # gain 2 explains it
    assert relative_residual(x[0], out["ed_linear"][0], fit_gain=False) == pytest.approx(0.25)
    torch.manual_seed(0)
    assert residual_from_outputs({"ed_linear": torch.rand_like(x)}, x) > 0  # not a multiple of x
    with pytest.raises(InvalidInput, match="no reconstruction"):
        residual_from_outputs({"logits": x}, x)


class _Perfect(nn.Module):
    """Reconstructs its input exactly; segments nothing."""

    def forward(self, x):
        return torch.zeros(x.shape[0], 4, *x.shape[2:])

    def interpret(self, x):
        return {"reconstruction": x.clone(), "masks": {"not": "a tensor"}}


def test_perfect_reconstruction_scores_zero(image):
    assert sparse_residual_score(_Perfect(), image)["score"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InvalidInput, match="interpret"):
        sparse_residual_score(nn.Conv3d(4, 4, 1), image)


# ------------------------------------------------------------------------------------------- epistemic
def test_entropies_against_scipy_and_closed_forms():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), size=(5, 7)).transpose(0, 2, 1)  # (R=5, K=4, 7 voxels)
    assert np.allclose(entropy(p[0], axis=0), scipy.stats.entropy(p[0], axis=0))
    assert np.allclose(predictive_entropy(p), scipy.stats.entropy(p.mean(0), axis=0))
    assert np.allclose(expected_entropy(p), np.mean([scipy.stats.entropy(q, axis=0) for q in p], axis=0))
    mi = mutual_information(p)
    assert (mi >= 0).all() and (predictive_entropy(p) >= expected_entropy(p) - 1e-12).all()  # Jensen
    # identical samples: no disagreement
    same = np.repeat(p[:1], 3, axis=0)
    assert np.allclose(mutual_information(same), 0) and np.allclose(variance(same), 0)
    # two confident samples that disagree: H[pbar] = log 2, E H = 0, I = log 2; Var = 1/4 per class, 2 classes
    two = np.array([[1.0, 0.0], [0.0, 1.0]])[:, :, None]
    assert predictive_entropy(two)[0] == pytest.approx(math.log(2))
    assert expected_entropy(two)[0] == pytest.approx(0.0)
    assert mutual_information(two)[0] == pytest.approx(math.log(2))
    assert variance(two)[0] == pytest.approx(0.5)


def test_tta_flips_are_undone(image):
    """A pointwise (1x1x1) model commutes with flips: every TTA sample equals the plain prediction."""
    torch.manual_seed(0)
    pointwise = nn.Conv3d(4, 4, 1).eval()
    p = tta_probabilities(pointwise, image, flips=FLIPS)
    assert p.shape == (len(FLIPS), 4, *image.shape[1:])
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.allclose(p, p[:1], atol=1e-5)
    s = epistemic_score(pointwise, image)
    assert s["mutual_information"] == pytest.approx(0, abs=1e-6) and s["variance"] == pytest.approx(0, abs=1e-8)
    assert s["score"] == pytest.approx(float(entropy(p[0], axis=0)[brain_mask(image)].mean()), rel=1e-5)
    with pytest.raises(InvalidInput, match="at least 2"):
        epistemic_score(pointwise, image, flips=[()])


def test_tta_disagreement_of_a_convolutional_model(image):
    """ML-CSC's 3x3x3 kernels are not flip-symmetric: its flipped predictions disagree somewhere."""
    torch.manual_seed(0)
    model = models.build("mlcsc", {"design": 1, "roi_size": [64, 64, 40]}).eval()  # one window over the 60 x 60 x 39 image
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)  # confident enough that the disagreement is visible
    s = epistemic_score(model, image, flips=FLIPS[:2])
    assert s["samples"] == 2 and s["mutual_information"] > 0 and s["variance"] > 0
    assert 0 < s["score"] <= math.log(4)


# ------------------------------------------------------------------------------------------- ranking, AUC
def test_rank_is_descending_reproducible_nan_last():
    assert rank({"b": 0.2, "a": 0.2, "c": 0.9, "d": float("nan"), "e": -1.0}) == ["c", "a", "b", "e", "d"]
    assert rank({}) == []


def test_rank_fusion_is_the_mean_fractional_rank():
    a = {"x": 10.0, "y": 0.5, "z": 3.0, "w": 7.0}  # ranks (low = 0): y 0, z 1, w 2, x 3
    b = {"x": 0.1, "y": 0.4, "z": 0.3, "w": 0.2, "only_b": 9.0}  # x 0, w 1, z 2, y 3 (only_b: not in a)
    f = rank_fusion(a, b)
    assert f == pytest.approx({"x": 0.5, "y": 0.5, "z": 0.5, "w": 0.5})
    assert rank_fusion(a, {k: -v for k, v in a.items()}) == pytest.approx({k: 0.5 for k in a})
    assert rank_fusion(a, a) == pytest.approx({"y": 0, "z": 1 / 3, "w": 2 / 3, "x": 1})
    # scale-free: any increasing transform of a score leaves the fusion unchanged
    assert rank_fusion(a, b) == rank_fusion({k: math.exp(v) for k, v in a.items()}, {k: 5 * v for k, v in b.items()})
    assert rank(rank_fusion(a, {"x": 1.0, "y": 0.0, "z": 0.5, "w": 0.9})) == ["x", "w", "z", "y"]
    assert rank_fusion({"a": 1.0, "b": 1.0, "c": 0.0}) == pytest.approx({"a": 0.75, "b": 0.75, "c": 0})  # ties
    assert rank_fusion({"a": float("nan"), "b": 2.0}, {"a": 1.0, "b": 1.0}) == {"b": 1.0}
    assert rank_fusion({}, {"a": 1.0}) == {}


def test_active_learning_intervals():
    from sparsesight.bench.active_learning import mean_interval, ratio_interval

    x = [0.7, 0.75, 0.72, 0.8, 0.68]
    lo, hi = mean_interval(x)
    assert (lo + hi) / 2 == pytest.approx(np.mean(x))
    assert hi - lo == pytest.approx(2 * scipy.stats.t.ppf(0.975, 4) * scipy.stats.sem(x))
    assert mean_interval([0.5]) is None
    # a strategy 1.2x random in every seed: the interval is that ratio; paired noise widens it around the ratio
    base = np.array([0.5, 0.6, 0.55, 0.65, 0.7])
    assert ratio_interval(1.2 * base, base) == pytest.approx([1.2, 1.2])
    lo, hi = ratio_interval(1.2 * base + [0.05, -0.05, 0.02, -0.02, 0], base)
    assert lo < 1.2 * base.mean() / base.mean() < hi and lo > 1.0
    assert ratio_interval([0.5], [0.4]) is None and ratio_interval([0.5, 0.6], [0.0, 0.0]) is None


def test_benchmark_combines_finished_runs_of_the_same_settings_and_code(tmp_path):
    """--combine: runs of other seeds (same settings, strategies and commit) make one record whose summary is that
    of all their rows (paired by seed), every run's command kept; a partial run, other settings or strategies, a
    seed twice, or code that is not the same committed code is refused."""
    import json

    from sparsesight.bench.active_learning import combine, summarise

    settings = {"pool": 30, "test": 3, "initial": 2, "rounds": 1, "batch": 2, "epochs": 15, "initial_epochs": 60,
                "downsample_mm": 4, "model": "sum", "model_config": {}, "train_config": {"patch_size": [32] * 3},
                "data_seed": 0, "commit": "abc1234"}
    strategies = ("random", "sparse_residual")

    def rows(seeds):
        return [{"strategy": s, "seed": k, "round": r, "n_labels": 2 + 2 * r, "dice": 0.5 + 0.1 * r + 0.01 * k
                 + (0.05 * r if s == "sparse_residual" else 0), "soft_dice": 0.4 + 0.1 * r, "seconds": 1.0}
                for k in seeds for s in strategies for r in (0, 1)]

    def record(name, seeds, **changes):
        rec = {**summarise(rows(seeds), strategies), **settings, "command": f"run {name}", "seeds": len(seeds),
               "seconds": 100.0, "machine": "m", "rows": rows(seeds), **changes}
        (tmp_path / name).mkdir()
        (tmp_path / name / "active_learning.json").write_text(json.dumps(rec))
        return str(tmp_path / name)

    a, b = record("a", [0, 1]), record("b", [2, 3])
    res = combine([a, b], str(tmp_path / "out"))
    assert res["seeds"] == 4 and len(res["rows"]) == 16 and res["seconds"] == 200.0
    assert [(r["command"], r["seeds"], r["commit"]) for r in res["runs"]] == [
        ("run a", [0, 1], "abc1234"), ("run b", [2, 3], "abc1234")]
    assert res["strategies"] == summarise(rows([0, 1, 2, 3]), strategies)["strategies"]
    recorded = json.loads((tmp_path / "out" / "active_learning.json").read_text())
    assert recorded["seeds"] == 4 and recorded["runs"] == res["runs"]
    assert (tmp_path / "out" / "active_learning.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no recorded run"):
        combine([a, str(tmp_path / "none")], str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\]"):
        combine([a, record("c", [1, 4])], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="differs from .* in epochs, data_seed"):
        combine([a, record("d", [5], epochs=3, data_seed=1)], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="in strategies"):
        combine([a, record("e", [6], strategies={"random": {}, "epistemic": {}})], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="did not finish"):
        combine([a, record("f", [7], partial="1 seed(s) so far")], str(tmp_path / "x"))
    for commit in ("abc1234+dirty", "unknown", None):  # edited, unknown or unrecorded code is not the same code
        with pytest.raises(ValueError, match="other code"):
            combine([a, record(f"g{commit}", [8], commit=commit)], str(tmp_path / "x"))


def test_area_under_curve_against_scipy():
    n, d = [2, 3, 4, 6], [0.1, 0.4, 0.5, 0.8]
    assert area_under_curve(n, d) == pytest.approx(scipy.integrate.trapezoid(d, n) / 4)
    assert area_under_curve([1, 5], [0.7, 0.7]) == pytest.approx(0.7)  # flat curve: its value
    assert area_under_curve([3], [0.42]) == 0.42
    with pytest.raises(InvalidInput, match="increase"):
        area_under_curve([2, 2], [0.1, 0.2])
    with pytest.raises(InvalidInput, match="equally long"):
        area_under_curve([1, 2], [0.1])


# ------------------------------------------------------------------------------------------- the cache
def test_score_cache_is_per_model_version_and_image_file(tmp_path):
    img = tmp_path / "a.nii.gz"
    img.write_bytes(b"one")
    fp = file_fingerprint(img)
    cache = ScoreCache(tmp_path / "scores" / "mlcsc.sparse_residual.json", "sparse_residual", "mlcsc")
    assert cache.version() is None and cache.scores("v1") == {}
    cache.put("v1", {"a": {"score": 0.5, "fingerprint": fp}, "b": {"score": 0.1, "fingerprint": [1, 2]}})
    assert cache.version() == "v1"
    assert set(cache.scores("v1")) == {"a", "b"}
    assert cache.scores("v2") == {} and cache.scores(None) == {}  # a new model version invalidates them
    assert set(cache.scores("v1", {"a": fp})) == {"a"}  # only the images asked for, with their current file
    time.sleep(0.01)
    img.write_bytes(b"replaced")  # a replaced image gets a new fingerprint: its score no longer counts
    assert file_fingerprint(img) != fp and cache.scores("v1", {"a": file_fingerprint(img)}) == {}
    cache.put("v1", {"c": {"score": 0.3, "fingerprint": [0, 0]}})  # same version: merged
    assert set(cache.scores("v1")) == {"a", "b", "c"}
    cache.put("v2", {"c": {"score": 0.9, "fingerprint": [0, 0]}})  # new version: the old entries are gone
    assert cache.version() == "v2" and set(cache.scores("v2")) == {"c"} and cache.scores("v1") == {}
    assert ScoreCache(cache.path, "epistemic", "mlcsc").scores("v2") == {}  # another method's file is not read
    assert not [p for p in os.listdir(cache.path.parent) if p.endswith(".tmp")]


def test_soft_dice_of_one_hot_probabilities_is_the_dice():
    from sparsesight.bench.active_learning import region_soft_dice, soft_dice
    from sparsesight.metrics import region_dice

    rng = np.random.default_rng(3)
    pred, truth = rng.integers(0, 4, (6, 5, 4)), rng.integers(0, 4, (6, 5, 4))
    one_hot = np.eye(4)[pred].transpose(3, 0, 1, 2)
    assert region_soft_dice(one_hot, truth) == pytest.approx(region_dice(pred, truth))
    # by hand: p = [0.5, 0.5, 0], y = [1, 0, 0] -> 2 * 0.5 / (1 + 1)
    assert soft_dice(np.array([0.5, 0.5, 0.0]), np.array([1, 0, 0])) == pytest.approx(0.5)
    assert soft_dice(np.zeros(3), np.zeros(3)) == 1.0
