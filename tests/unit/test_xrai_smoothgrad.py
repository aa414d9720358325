"""XRAI's region ranking and SmoothGrad (explain/xrai.py, gradients.py) on cases whose answer is known: a model
that only reads one region, hand-computed greedy rankings, closed forms of the smoothed gradient; and the
deletion gain over a random map (explain/faithfulness.py) on them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_attribution import PixelFunction  # the same small model (tests/unit is on the path)
from torch import nn

from sparsesight.explain import attribution as A
from sparsesight.explain import faithfulness as Fa
from sparsesight.explain import xrai


class RegionModel(nn.Module):
    """Class-1 logit of every voxel = k * (mean of the input over the region R - 0.5), class 0 = 0: only R
    matters, and deleting it (setting it to 0) lowers the class-1 probability."""

    def __init__(self, region: torch.Tensor, k: float = 8.0):
        super().__init__()
        self.register_buffer("region", region.to(torch.float64))
        self.k = k

    def forward(self, x):
        r = self.region.to(x.dtype)
        s = self.k * ((x.sum(1) * r).flatten(1).sum(1) / (x.shape[1] * r.sum()) - 0.5)
        z1 = s.view(-1, 1, *[1] * (x.ndim - 2)).expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(z1), z1], 1)


def brain_with_cube(shape=(16, 16, 16), channels=2, seed=0):
    """A 'head' (a ball of tissue, intensity ~1, background 0) holding a brighter cube R (~2): (x, R)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    centre = torch.tensor([(s - 1) / 2 for s in shape], dtype=torch.float64).view(-1, *[1] * len(shape))
    ball = ((grid - centre) ** 2).sum(0).sqrt() <= min(shape) / 2 - 0.5
    cube = torch.zeros(shape, dtype=torch.bool)
    cube[4:9, 3:8, 5:10] = True
    x = (1.0 + 0.05 * torch.randn((channels, *shape), generator=g, dtype=torch.float64)) * ball
    x = torch.where(cube, x + 1.0, x)
    return x, cube


def deletion_gain(net, x, amap, seed=0) -> float:
    """Deletion AUC of a random map over that of `amap` (> 1: amap deletes what matters sooner than chance)."""
    rand = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    d = lambda a: Fa.deletion_insertion(net, x, a, 1, region="all", steps=16)["deletion_auc"]  # noqa: E731
    return d(rand) / d(amap)


# ---------------------------------------------------------------------------------------------- XRAI: by hand
def test_xrai_trace_by_hand_full_and_fast():
    """attr [4, 4, 0, -2, 1] (one row), masks B = {0, 1} (density 4), A = {0, 1, 3} (own density 2),
    C = {4} (1). full: B, then A's remainder {3} gains -2 < C's 1, so C, then {3}; fast ranks masks by their own
    density, ignoring overlap: B, A (adds {3}), C. Voxel 2 is in no mask: the last region."""
    attr = np.array([[4.0, 4.0, 0.0, -2.0, 1.0]])
    masks = [np.array([[0, 1, 0, 1, 0]], bool), np.array([[1, 1, 0, 0, 0]], bool),
             np.array([[0, 0, 0, 0, 1]], bool)]
    full, ranks_full = xrai.xrai_regions(attr, masks, min_diff=1, algorithm="full")
    np.testing.assert_array_equal(ranks_full, [[1, 1, 4, 3, 2]])
    # the map is 1 - the share of the image added before the region
    np.testing.assert_allclose(full, [[1.0, 1.0, 0.2, 0.4, 0.6]])
    trace = xrai.xrai_trace(attr, masks, min_diff=1, algorithm="full")
    assert [g for _, g in trace] == [4.0, 1.0, -2.0]
    _, ranks_fast = xrai.xrai_regions(attr, masks, min_diff=1, algorithm="fast")
    np.testing.assert_array_equal(ranks_fast, [[1, 1, 4, 2, 3]])
    # min_diff = 2: the one-voxel remainders are dropped, everything left is the last region
    _, ranks_md = xrai.xrai_regions(attr, masks, min_diff=2, algorithm="full")
    np.testing.assert_array_equal(ranks_md, [[1, 1, 2, 2, 2]])


def test_xrai_sums_modalities_where_pair_takes_the_max():
    """Region P: channel 0 +1, channel 1 -3 (net -2: deleting P raises the score); region Q: +0.5 in both
    (net +1). The voxel's IG share is the sum over channels: Q first; PAIR's RGB max would put P first."""
    base = np.zeros((2, 1, 4))
    base[:, 0, :2] = [[1.0, 1.0], [-3.0, -3.0]]
    base[:, 0, 2:] = 0.5
    masks = [np.array([[1, 1, 0, 0]], bool), np.array([[0, 0, 1, 1]], bool)]
    for reduce, first in (("sum", [0, 0, 1, 1]), ("max", [1, 1, 0, 0])):
        _, ranks = xrai.xrai_regions(xrai.voxel_attribution(base, reduce), masks, min_diff=1)
        np.testing.assert_array_equal(ranks[0] == 1, np.array(first, bool), err_msg=reduce)


# ---------------------------------------------------------------------------------------------- XRAI: 3D model
@pytest.mark.parametrize("algorithm", ["full", "fast"])
def test_xrai_ranks_the_region_the_model_reads_first(algorithm):
    """Only the cube R matters to the model: the first region lies mostly in R, every region holding a voxel of
    R comes before every region without one (their gain is 0; the dilated supervoxels overlap R's edge), and the
    map's deletion AUC beats a random map's."""
    x, cube = brain_with_cube()
    net = RegionModel(cube)
    amap, ranks = xrai.xrai(A.TargetScore(net, 1), x[None], steps=8, return_ranks=True, min_diff=8,
                            algorithm=algorithm, segment_options={"n_segments": (8, 32, 96)})
    amap = amap[0]
    assert amap.shape == x.shape and torch.equal(amap[0], amap[1])
    first = ranks == 1
    assert first.sum() > 0 and (first & cube.numpy()).sum() / first.sum() > 0.5
    in_cube = np.unique(ranks[cube.numpy()])
    assert in_cube.max() < np.setdiff1d(np.unique(ranks), in_cube).min()
    assert deletion_gain(net, x, amap) > 1.5


def test_xrai_map_is_the_rank_as_a_share_of_the_image():
    """Ranks 1..N partition the volume; the map is constant on a region, 1 on the first and falls with the rank
    as 1 - (voxels of lower rank) / n, so {map > 1 - k} covers the top k of the image."""
    x, cube = brain_with_cube(shape=(12, 12, 10), seed=1)
    net = RegionModel(cube)
    amap, ranks = xrai.xrai(A.TargetScore(net, 1), x[None], steps=4, return_ranks=True, min_diff=4,
                            segment_options={"n_segments": (8, 24)})
    m, n = amap[0, 0].numpy(), ranks.size
    labels = np.unique(ranks)
    np.testing.assert_array_equal(labels, np.arange(1, len(labels) + 1))
    assert len(labels) > 3
    before = 0
    for r in labels:
        region = ranks == r
        assert np.ptp(m[region]) == 0 and m[region][0] == pytest.approx(1 - before / n)
        before += int(region.sum())


# ---------------------------------------------------------------------------------------------- XRAI: PAIR (2D)
def test_xrai_region_ranking_agrees_with_saliency_package():
    """Our XRAI against the PAIR `saliency` package's on the same attribution and segments (2D, PAIR's channel
    max): the same regions, the same first region, and rank agreement (Spearman over voxels) >= 0.95: PAIR sorts
    the added regions by gain, we keep the order they were added in, which differs only where a later remainder
    gains more."""
    saliency = pytest.importorskip("saliency.core")
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    h = w = 32
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([np.sin(xx / 4.0 + k) * np.cos(yy / 5.0) + 0.2 * rng.normal(size=(h, w)) for k in range(3)])
    attr = np.stack([np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 40.0) + 0.3 * rng.normal(size=(h, w))
                     for _ in range(3)])
    segs = xrai.segments_2d(img, scales=(50, 150, 500), min_size=60, resize=64, dilation=2)
    for algorithm in ("full", "fast"):
        params = saliency.XRAIParameters(algorithm=algorithm, return_xrai_segments=True)
        params.experimental_params["min_pixel_diff"] = 10
        ref = saliency.XRAI().GetMaskWithDetails(np.moveaxis(img, 0, -1), None,
                                                 base_attribution=np.moveaxis(attr, 0, -1), segments=segs,
                                                 extra_parameters=params)
        _, ours = xrai.xrai(None, torch.tensor(img)[None], base_attribution=torch.tensor(attr)[None], masks=segs,
                            algorithm=algorithm, min_diff=10, reduce="max", return_ranks=True)
        pairs = {(int(a), int(b)) for a, b in zip(ours.ravel(), ref.segments.ravel())}
        assert len(pairs) == len(np.unique(ours)) == len(np.unique(ref.segments)), algorithm  # same partition
        assert np.array_equal(ours == 1, ref.segments == 1), algorithm
        assert spearmanr(ours.ravel(), ref.segments.ravel())[0] >= 0.95, algorithm


# ---------------------------------------------------------------------------------------------- SmoothGrad
def test_smoothgrad_noise_is_a_fraction_of_the_brain_range_and_stays_in_the_brain():
    """F = sum a sin(w x); brain values in [2, 3] (range 1), background 0 (whole range 3). In the brain
    E[grad(x + eps)] = grad(x) exp(-w^2 s^2 / 2) with s = noise * 1 (the brain's range); the background gets
    no noise, so its SmoothGrad is the plain gradient a w cos(0) = a w."""
    a, w, noise = 0.5, 2.0, 0.4
    net = PixelFunction(lambda x: a * torch.sin(w * x))
    brain = torch.linspace(2, 3, 24 * 24, dtype=torch.float64).view(1, 24, 24)
    x = torch.cat([brain, torch.zeros(1, 8, 24, dtype=torch.float64)], 1)
    sg = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=400, noise=noise, squared=False)
    np.testing.assert_allclose(sg[0, 24:].numpy(), a * w)
    damp = float((sg[0, :24] * torch.cos(w * brain[0])).sum() / (a * w * torch.cos(w * brain[0]) ** 2).sum())
    assert damp == pytest.approx(math.exp(-(w * noise) ** 2 / 2), abs=0.05)
    assert abs(damp - math.exp(-(w * noise * 3) ** 2 / 2)) > 0.3  # what the whole range would give


def test_smoothgrad_squared_closed_form_for_a_quadratic():
    """F = sum a x^2 / 2: grad = a x, E[(a (x + eps))^2] = a^2 (x^2 + s^2) (SmoothGrad-Squared)."""
    a, noise = 1.5, 0.2
    net = PixelFunction(lambda x: a * x ** 2 / 2)
    x = torch.linspace(0.5, 1.5, 16 * 16, dtype=torch.float64).view(1, 16, 16)
    s = noise * 1.0
    sq = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=800, noise=noise, squared=True)
    expected = a ** 2 * (x ** 2 + s ** 2)
    assert float(((sq - expected) / expected).abs().mean()) < 0.05
    # unsquared, the noise averages out: a x
    sg = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=800, noise=noise, squared=False)
    assert float(((sg - a * x) / (a * x)).abs().mean()) < 0.05


def test_smoothgrad_is_reproducible_and_chunking_does_not_change_it():
    x, _ = brain_with_cube(shape=(8, 8, 8))
    net = PixelFunction(torch.sin)
    one = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=6, batch=6)
    chunked = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=6, batch=4)
    torch.testing.assert_close(one, chunked)
    other = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=6, seed=1)
    assert not torch.equal(one, other)


@pytest.mark.parametrize("squared", [False, True])
def test_smoothgrad_deletes_the_region_the_model_reads_first(squared):
    """Only R matters: SmoothGrad (and SG-Squared) must rank R first, deletion gain over random > 1.5."""
    x, cube = brain_with_cube(shape=(12, 12, 12))
    net = RegionModel(cube)
    sg = A.attribute(net, x, "smoothgrad", target=1, region="all", samples=8, squared=squared)
    assert sg[:, ~cube].abs().max() < 1e-3 * sg[:, cube].abs().min()
    assert deletion_gain(net, x, sg) > 1.5


# ---------------------------------------------------------------------------------------------- served quality
def test_a_map_is_measured_against_random_and_sobel_rankings_and_flagged_when_no_better_than_chance():
    """assess: the map that ranks the region the model reads first beats a random ranking and the image's edge
    map (Sobel) and is faithful; the same map reversed (the region last) is flagged 'not faithful'."""
    x, cube = brain_with_cube()
    net = RegionModel(cube).eval()
    refs = {k: Fa.deletion_insertion(net, x, m, 1, region="all", steps=16) for k, m in Fa.reference_maps(x).items()}
    assert set(refs) == {"random", "sobel"}
    good = cube.to(x.dtype).expand_as(x) + 0.01 * x  # the region first
    q = Fa.assess(Fa.deletion_insertion(net, x, good, 1, region="all", steps=16), refs)
    assert q["faithful"] and q["flags"] == []
    assert q["deletion_gain_vs_random"] > 1.5 and q["deletion_gain_vs_sobel"] > 1.0
    assert q["insertion_gain_vs_random"] > 1.0
    bad = Fa.assess(Fa.deletion_insertion(net, x, -good, 1, region="all", steps=16), refs)
    assert not bad["faithful"] and bad["deletion_gain_vs_random"] < 1.0
    assert any(f.startswith("not faithful") for f in bad["flags"])
    # the Sobel reference is the gradient magnitude of each channel: largest on the cube's faces, 0 far outside
    edges = Fa.reference_maps(x)["sobel"]
    assert edges.shape == x.shape and float(edges[:, 0, 0, 0].abs().max()) == 0.0
