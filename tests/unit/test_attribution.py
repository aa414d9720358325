"""Attribution methods (explain/attribution.py, gradients.py, xrai.py): closed forms, finite differences, the PAIR `saliency` reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sparsesight import models
from sparsesight.errors import InvalidInput
from sparsesight.explain import attribution as A
from sparsesight.explain import gradients, xrai


# ---------------------------------------------------------------------------------------------- small models
class PixelFunction(nn.Module):
    """Logits (B, 2, *spatial): class 0 is 0, class 1 is f(x) summed over channels, voxel by voxel."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        z1 = self.f(x).sum(1, keepdim=True)
        return torch.cat([torch.zeros_like(z1), z1], 1)


def smooth_cnn(dims=2, channels=1, classes=3, seed=0, dtype=torch.float64):
    """A tiny CNN with smooth activations (its gradient is defined everywhere)."""
    torch.manual_seed(seed)
    Conv = nn.Conv2d if dims == 2 else nn.Conv3d
    net = nn.Sequential(Conv(channels, 4, 3, padding=1), nn.Softplus(), Conv(4, 4, 3, padding=1), nn.Tanh(),
                        Conv(4, classes, 1))
    return net.to(dtype).eval()


def tiny_mlcsc(seed=0):
    """ML-CSC with few atoms and one iteration; classifier weights large enough for distinct class scores."""
    torch.manual_seed(seed)
    m = models.build("mlcsc", {"design": 1, "atoms": [4, 4, 4, 4], "T": 1, "lam_init": -0.05, "lam_min_init": 0.05})
    with torch.no_grad():
        m.classifier.weight.normal_(0.0, 1.0)
    return m.eval()


def score(model, x, target, region="all"):
    mask, _ = A.region_mask(model, x[None], target, region)
    with torch.no_grad():
        return float(A.TargetScore(model, target, mask)(x[None])[0])


# ---------------------------------------------------------------------------------------------- gradient
def test_gradient_equals_central_finite_differences():
    net = smooth_cnn(dims=3, channels=2)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = A.attribute(net, x, "gradient", target=1, region="all")
    h = 1e-6
    e = h * torch.eye(x.numel(), dtype=x.dtype).view(-1, *x.shape)  # every coordinate's step, one batch
    with torch.no_grad():
        F = A.TargetScore(net, 1)
        fd = ((F(x + e) - F(x - e)) / (2 * h)).view_as(x)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def test_gradient_of_mlcsc_matches_directional_derivative():
    net = tiny_mlcsc().double()
    x = torch.randn(4, 12, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = A.attribute(net, x, "gradient", target=2, region="all")
    assert g.abs().sum() > 0
    v = torch.randn_like(x)
    h = 1e-5
    fd = (score(net, x + h * v, 2) - score(net, x - h * v, 2)) / (2 * h)
    assert float((g * v).sum()) == pytest.approx(fd, rel=1e-4)


def test_voxel_region_is_the_gradient_of_one_logit():
    net = smooth_cnn()
    x = torch.randn(1, 9, 9, dtype=torch.float64)
    g = A.attribute(net, x, "gradient", target=2, region=(4, 5))
    xr = x[None].clone().requires_grad_(True)
    net(xr)[0, 2, 4, 5].backward()
    torch.testing.assert_close(g, xr.grad[0])
    # receptive field of two 3x3 convolutions: nothing outside the 5x5 neighbourhood
    assert g[0, :2].abs().sum() == 0 and g[0, 4:7, 3:8].abs().sum() > 0


def test_a_region_target_is_the_log_sum_exp_of_its_classes():
    """Target TC = (2, 3): F = sum_v log(exp z_2 + exp z_3) over the voxels predicted 2 or 3; its gradient by
    autograd, and the served option names (WT / TC / ET) map to the BraTS class sets."""
    from sparsesight.explain import served

    net = smooth_cnn(classes=4)
    x = torch.randn(1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = A.attribute(net, x, "gradient", target=(2, 3), region="predicted")
    xr = x[None].clone().requires_grad_(True)
    z = net(xr)
    mask = torch.isin(z.detach().argmax(1), torch.tensor([2, 3]))
    assert mask.any()
    (torch.logsumexp(z[:, [2, 3]], 1) * mask).sum().backward()
    torch.testing.assert_close(g, xr.grad[0])
    # a one-class set is that class
    torch.testing.assert_close(A.attribute(net, x, "gradient", target=(3,), region="all"),
                               A.attribute(net, x, "gradient", target=3, region="all"))
    req = served.parse_options({"attribution": "ig", "attribution_target": "WT,tc,enhancing"})
    assert req["targets"] == [(1, 2, 3), (2, 3), 3]
    assert [served.target_name(t, served.CLASSES) for t in req["targets"]] == ["WT", "TC", "enhancing"]


# ---------------------------------------------------------------------------------------------- IG
def test_ig_closed_form_for_a_quadratic():
    """F(x) = sum w x^2, zero baseline: IG_i = x_i int_0^1 2 w_i alpha x_i dalpha = w_i x_i^2 (exact)."""
    w = torch.linspace(-1, 2, 36, dtype=torch.float64).view(1, 6, 6)
    net = PixelFunction(lambda x: w * x ** 2)
    x = torch.randn(1, 6, 6, dtype=torch.float64)
    ig = A.attribute(net, x, "ig", target=1, region="all", steps=4)
    torch.testing.assert_close(ig, w * x ** 2)


@pytest.mark.parametrize("baseline", ["zero", "min", "blur"])
def test_ig_completeness_on_a_smooth_model(baseline):
    """sum_i IG_i = F(x) - F(x') (Sundararajan et al. 2017, prop. 1): within 1e-4 of |F(x) - F(x')| at 32
    Gauss-Legendre points on a smooth network."""
    net = smooth_cnn(dims=3, channels=2)
    x = torch.randn(2, 10, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ig = A.attribute(net, x, "ig", target=1, region="all", steps=32, baseline=baseline)
    delta = score(net, x, 1) - score(net, gradients.make_baseline(x[None], baseline)[0], 1)
    assert abs(delta) > 1e-2
    assert float(ig.sum()) == pytest.approx(delta, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_ig_completeness_on_mlcsc(baseline):
    """The same on ML-CSC, piecewise linear (ReLU thresholds): the quadrature error comes from its kinks and
    falls with the steps; within 2 % at 256 steps (double precision)."""
    net = tiny_mlcsc().double()
    x = torch.randn(4, 12, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    delta = score(net, x, 1) - score(net, gradients.make_baseline(x[None], baseline)[0], 1)
    assert abs(delta) > 1e-2
    err = {n: abs(float(A.attribute(net, x, "ig", target=1, region="all", steps=n, baseline=baseline).sum())
                  - delta) / abs(delta) for n in (8, 256)}
    assert err[256] < 0.02 and err[256] < err[8]


def test_ig_chunked_equals_one_batch():
    net = tiny_mlcsc()
    x = torch.randn(4, 12, 12, 8, generator=torch.Generator().manual_seed(4))
    one = A.attribute(net, x, "ig", target=3, region="all", steps=12, batch=12)
    chunked = A.attribute(net, x, "ig", target=3, region="all", steps=12, batch=5)
    torch.testing.assert_close(one, chunked, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- SmoothGrad
def test_smoothgrad_is_the_gaussian_smoothed_gradient_and_lowers_variance():
    """F = sum a sin(w x): grad = a w cos(w x); E[grad(x + eps)] = a w cos(w x) exp(-w^2 s^2 / 2), so the
    map's spatial variance shrinks by exp(-w^2 s^2) (Smilkov et al. 2017, eq. 3 in closed form)."""
    a, w = 0.5, 3.0
    net = PixelFunction(lambda x: a * torch.sin(w * x))
    x = torch.linspace(-1, 1, 32 * 32, dtype=torch.float64).view(1, 32, 32)
    noise = 0.15
    s = noise * 2.0  # sigma = noise * (max x - min x)
    grad = A.attribute(net, x, "gradient", target=1, region="all")
    sg = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=400, noise=noise, squared=False)
    expected = a * w * torch.cos(w * x) * math.exp(-(w * s) ** 2 / 2)
    torch.testing.assert_close(grad, a * w * torch.cos(w * x))
    rms = float(((sg - expected) ** 2).mean().sqrt()) / (a * w)
    assert rms < 0.06  # Monte-Carlo error of 400 samples is about 0.03
    ratio = float(sg.var() / grad.var())
    assert ratio == pytest.approx(math.exp(-(w * s) ** 2), abs=0.08)
    assert ratio < 0.6


# ---------------------------------------------------------------------------------------------- PAIR reference (2D)
def _pair_call(net, target):
    """call_model_function of the `saliency` package for our torch model (images H x W x C, float64)."""
    import saliency.core as saliency

    def call(images, call_model_args=None, expected_keys=None):
        x = torch.tensor(np.moveaxis(np.asarray(images), -1, 1), dtype=torch.float64, requires_grad=True)
        A.TargetScore(net, target)(x).sum().backward()
        return {saliency.INPUT_OUTPUT_GRADIENTS: np.moveaxis(x.grad.numpy(), 1, -1)}
    return call


def _image(seed=0, c=3, h=20, w=20):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([np.sin(xx / 3.0 + k) * np.cos(yy / 4.0) + 0.3 * rng.normal(size=(h, w)) for k in range(c)])
    return torch.tensor(img, dtype=torch.float64)


@pytest.mark.slow
def test_guided_ig_agrees_with_saliency_package():
    import saliency.core as saliency

    net = smooth_cnn(channels=3)
    x = _image()
    ours = A.attribute(net, x, "guided_ig", target=1, region="all", steps=16, fraction=0.25, max_dist=0.1)
    ref = saliency.GuidedIG().GetMask(np.moveaxis(x.numpy(), 0, -1), _pair_call(net, 1), x_steps=16,
                                      fraction=0.25, max_dist=0.1)
    np.testing.assert_allclose(ours.numpy(), np.moveaxis(ref, -1, 0), rtol=1e-6, atol=1e-9)
    # the adaptive path still ends at x: completeness holds up to the Riemann error of 16 steps
    delta = score(net, x, 1) - score(net, torch.zeros_like(x), 1)
    assert float(ours.sum()) == pytest.approx(delta, rel=0.1)


def test_blur_ig_agrees_with_saliency_package():
    import saliency.core as saliency

    net = smooth_cnn(channels=3)
    x = _image(1)
    ours = A.attribute(net, x, "blur_ig", target=2, region="all", steps=20, max_sigma=6.0, batch=7)
    ref = saliency.BlurIG().GetMask(np.moveaxis(x.numpy(), 0, -1), _pair_call(net, 2), max_sigma=6.0, steps=20)
    np.testing.assert_allclose(ours.numpy(), np.moveaxis(ref, -1, 0), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["full", "fast"])
def test_xrai_agrees_with_saliency_package(algorithm):
    """The paper's settings (Felzenszwalb at 6 scales on 224^2, dilated by a disk of 5; min_pixel_diff) give
    PAIR's segments, and with PAIR's channel max the same regions, the same first one and a region ranking that
    agrees (Spearman over pixels; PAIR sorts the added regions by gain, ours keeps the order they were added in)."""
    saliency = pytest.importorskip("saliency.core")
    from saliency.core import xrai as pair_xrai
    from scipy.stats import spearmanr

    net = smooth_cnn(channels=3)
    x = _image(2, h=40, w=40)
    img = np.moveaxis(x.numpy(), 0, -1)
    ours_segs = xrai.segments_2d(x.numpy())
    ref_segs = pair_xrai._get_segments_felzenszwalb(img)
    assert len(ours_segs) == len(ref_segs)
    assert all(np.array_equal(a, b) for a, b in zip(ours_segs, ref_segs))
    base = A.attribute(net, x, "ig", target=1, region="all", steps=16)
    params = saliency.XRAIParameters(algorithm=algorithm, return_xrai_segments=True)
    params.experimental_params["min_pixel_diff"] = 20
    ref = saliency.XRAI().GetMaskWithDetails(img, None, base_attribution=np.moveaxis(base.numpy(), 0, -1),
                                             segments=ref_segs, extra_parameters=params)
    _, ranks = xrai.xrai(None, x[None], base_attribution=base[None], masks=ours_segs, algorithm=algorithm,
                         min_diff=20, reduce="max", return_ranks=True)
    assert len({(int(a), int(b)) for a, b in zip(ranks.ravel(), ref.segments.ravel())}) == len(np.unique(ranks))
    np.testing.assert_array_equal(ranks == 1, ref.segments == 1)
    # fast adds masks by their own density, so its order departs from the remainders' gains more than full's
    assert spearmanr(ranks.ravel(), ref.segments.ravel())[0] >= (0.95 if algorithm == "full" else 0.8)


def test_xrai_regions_partition_a_volume():
    """3D XRAI on ML-CSC: ranks 1..N cover every voxel once, in the order the greedy search added them
    (non-increasing gain for the regions no later remainder outgains); the map is 1 on the first region and
    1 - (share of the image ranked before) on each other."""
    net = tiny_mlcsc()
    x = torch.randn(4, 16, 16, 12, generator=torch.Generator().manual_seed(5))
    amap, ranks = xrai.xrai(A.TargetScore(net, 1), x[None], steps=4, return_ranks=True, min_diff=10)
    assert ranks.shape == x.shape[1:] and ranks.min() == 1
    labels = np.unique(ranks)
    np.testing.assert_array_equal(labels, np.arange(1, len(labels) + 1))
    assert len(labels) > 5
    m = amap[0, 0].numpy()
    before = 0
    for r in labels:
        region = ranks == r
        assert np.ptp(m[region]) == 0 and m[region][0] == pytest.approx(1 - before / ranks.size)
        before += int(region.sum())
    # every channel carries the same region map
    assert torch.equal(amap[0, 0], amap[0, 3])
    # the first region has the highest gain density of all masks (the greedy search's first pick)
    base = gradients.integrated_gradients(A.TargetScore(net, 1), x[None], torch.zeros_like(x[None]), steps=4)
    a = base[0].sum(0).numpy()
    masks = xrai.segments_3d(x.numpy())
    assert a[ranks == 1].mean() == pytest.approx(max(a.ravel()[mk].mean() for mk in masks if len(mk) >= 10))


# ---------------------------------------------------------------------------------------------- entry point
#: each method's own options at a size that runs in a moment
TINY_OPTIONS = {"smoothgrad": {"samples": 2}, "xrai": {"segment_options": {"n_segments": (4, 16)}, "min_diff": 4}}


def test_every_method_returns_the_input_shape_on_mlcsc():
    net = tiny_mlcsc()
    x = torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(6))
    for method in A.METHODS:
        a = A.attribute(net, x, method, target=1, steps=2, **TINY_OPTIONS.get(method, {}))
        assert a.shape == x.shape and torch.isfinite(a).all(), method
    b = A.attribute(net, x[None], "ig", target=1, steps=4)
    assert b.shape == x[None].shape


def test_bad_requests_raise_invalid_input():
    net = tiny_mlcsc()
    x = torch.randn(4, 8, 8, 8)
    with pytest.raises(InvalidInput, match="unknown attribution method"):
        A.attribute(net, x, "lime", target=1)
    with pytest.raises(InvalidInput, match="steps"):
        A.attribute(net, x, "ig", target=1, steps=0)
    # a misspelt or misplaced option is refused, naming the method's own options
    with pytest.raises(InvalidInput, match=r"unknown option\(s\) \['sample'\] for smoothgrad.*'samples'"):
        A.attribute(net, x, "smoothgrad", target=1, sample=4)
    with pytest.raises(InvalidInput, match=r"\['samples'\] for integrated_gradients"):
        A.attribute(net, x, "ig", target=1, samples=4)
    with pytest.raises(InvalidInput, match="inside"):
        A.attribute(net, x, "gradient", target=1, region=(8, 0, 0))
    with pytest.raises(InvalidInput, match="ROI mask has shape"):
        A.attribute(net, x, "gradient", target=1, region=np.ones((4, 4, 4)))
    with pytest.raises(InvalidInput, match="baseline"):
        A.attribute(net, x, "ig", target=1, baseline="grey")
    with pytest.raises(InvalidInput, match="classes"):
        A.attribute(net, x, "gradient", target=7, region="all")
    with pytest.raises(InvalidInput, match="NaN"):
        A.attribute(net, torch.full((4, 8, 8, 8), float("nan")), "gradient", target=1)


@pytest.mark.slow
def test_sum_model_every_method_and_ig_completeness():
    """SUM (soft-shrinkage Haar U-Net proxy) through the same entry point: maps of x's shape, IG complete."""
    if "sum" not in models.NAMES:
        pytest.skip("SUM is not registered")
    torch.manual_seed(0)
    net = models.build("sum", {"features": 2, "levels": 2}).eval()
    x = torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(7))
    for method in A.METHODS:
        a = A.attribute(net, x, method, target=3, steps=2, **TINY_OPTIONS.get(method, {}))
        assert a.shape == x.shape and torch.isfinite(a).all(), method
    net = net.double()
    xd = x.double()
    ig = A.attribute(net, xd, "ig", target=3, region="all", steps=128)
    delta = score(net, xd, 3) - score(net, torch.zeros_like(xd), 3)
    assert abs(delta) > 1e-3
    assert float(ig.sum()) == pytest.approx(delta, rel=0.02)
