"""CDL-Lambda (seed 001): (PH) and (PR) against closed forms and SPORCO, the Lambda estimators V1-V3, truncated
back-propagation, training, the metrics and the served runner (sparsesight.runners.cdl).

CPU sizes: the stored 8-filter 7x7 dictionary, 6-16 FISTA iterations and 2-level U-Nets of 4-8 features instead
of the reference K = 32 filters of 9x9, 64 iterations (default_config)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from sparsesight import bundle, checkpoint, metrics, models
from sparsesight.data import convdict, lfmri
from sparsesight.errors import InvalidInput
from sparsesight.models import cdl
from sparsesight.ops import kspace
from sparsesight.ops.fista import synthesis
from sparsesight.runners import cdl as cdl_runner
from sparsesight.training import cdl as cdl_training

SMALL = {"dictionary": "K8_k7", "iterations": 8, "backprop_iterations": 3, "channels": [4, 8]}


def _phantom_slice(h=32, w=28):
    yy, xx = np.mgrid[:h, :w]
    x = ((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.4 * w) ** 2 < 1).astype(np.float32)
    x[h // 3:h // 2, w // 3:2 * w // 3] = 0.4
    x[(yy + xx) % 7 == 0] *= 0.8
    return x


def _acquire(x, keep=0.5, sigma=0.1, seed=0):
    m = lfmri.lowres_mask(x.shape, keep)
    y, s = lfmri.simulate(x, m, sigma, np.random.default_rng(seed))
    return torch.as_tensor(y)[None], torch.as_tensor(m)[None], torch.as_tensor(x / s)[None]


# ------------------------------------------------------------------------------------------ (PH), (PR)
@pytest.mark.slow
@pytest.mark.parametrize("complex_input", [False, True])
def test_lowpass_matches_sporco_tikhonov_filter(complex_input):
    from sporco.signal import tikhonov_filter

    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 26))
    if complex_input:
        x = x + 1j * rng.standard_normal((30, 26))
    ref = tikhonov_filter(x, 5.0, npd=16)[0]
    got = cdl.lowpass(torch.as_tensor(x), 5.0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_lowpass_solves_ph_normal_equations():
    """(I + beta sum_i G_i^T G_i) x_L = x on the periodic grid (npd = 0)."""
    x = torch.randn(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xl = cdl.lowpass(x, 3.0, npd=0)

    def gtg(z):  # sum_i G_i^T G_i z with periodic forward differences
        return sum(2 * z - torch.roll(z, 1, a) - torch.roll(z, -1, a) for a in (0, 1))

    torch.testing.assert_close(xl + 3.0 * gtg(xl), x)


def test_data_gradient_is_autograd_gradient():
    g = torch.Generator().manual_seed(2)
    d = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    mask = torch.as_tensor(lfmri.random_mask((12, 10), 2, seed=0))[None]
    y = kspace.forward(torch.randn(1, 12, 10, generator=g, dtype=torch.float64).to(torch.complex128), mask)
    x0 = kspace.adjoint(y, mask)
    xl = cdl.lowpass(x0, 2.0)
    s = torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.complex(synthesis(s, d)[0, 0], synthesis(s, d)[1, 0])[None] + xl
    f = 0.5 * (kspace.forward(x, mask) - y).abs().pow(2).sum()
    (auto,) = torch.autograd.grad(f, s)
    torch.testing.assert_close(cdl.data_gradient(s.detach(), d, xl, x0, mask), auto)


def test_pr_with_identity_dictionary_is_soft_threshold_of_high_pass():
    """D = I, full sampling, no noise: s* = S_lam(Re(x0 - x_L)) + i S_lam(Im(x0 - x_L)) and x* = x_L + s*."""
    g = torch.Generator().manual_seed(3)
    x = torch.complex(torch.randn(1, 10, 9, generator=g), torch.randn(1, 10, 9, generator=g))
    mask = torch.ones(1, 10, 9, dtype=torch.bool)
    out = cdl.solve_pr(kspace.forward(x, mask), mask, torch.ones(1, 1, 1), 0.2, iterations=60, beta=4.0)
    hp = x - cdl.lowpass(x, 4.0)
    soft = lambda v: torch.sign(v) * (v.abs() - 0.2).clamp(min=0)  # noqa: E731
    torch.testing.assert_close(out["s"][0, :, 0], torch.stack([soft(hp.real[0]), soft(hp.imag[0])]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["x"], out["x_low"] + torch.complex(soft(hp.real), soft(hp.imag)), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ the estimators
@pytest.mark.slow
@pytest.mark.parametrize("variant", cdl.VARIANTS)
def test_lambda_nonnegative_and_bounded(variant):
    torch.manual_seed(0)
    model = cdl.CDL(variant=variant, **SMALL)
    y, m, _ = _acquire(_phantom_slice())
    lam = model.interpret(y, m)["lambda"]
    assert lam.shape == (1, 8, 32, 28) and lam.min() >= 0 and lam.max() <= 10
    for offset in (-200.0, 200.0):  # saturated estimators still give 0 <= Lambda <= lambda_max
        with torch.no_grad():
            model.offset.fill_(offset)
        lam = model.interpret(y, m)["lambda"]
        assert lam.min() >= 0 and lam.max() <= 10 and torch.isfinite(lam).all()


@pytest.mark.slow
def test_v3_is_invariant_to_filter_permutation():
    torch.manual_seed(0)
    model = cdl.CDL(variant="v3", **SMALL)
    y, m, _ = _acquire(_phantom_slice())
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    a = model.interpret(y, m)
    b = model.interpret(y, m, model.filters[perm])
    torch.testing.assert_close(b["reconstruction"], a["reconstruction"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(b["lambda"], a["lambda"][:, perm], atol=1e-6, rtol=1e-5)
    # V1 is dictionary agnostic: the same maps with permuted filters change the reconstruction
    v1 = cdl.CDL(variant="v1", **SMALL)
    with torch.no_grad():
        for p in v1.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert (v1.interpret(y, m, v1.filters[perm])["reconstruction"] - v1.interpret(y, m)["reconstruction"]).abs().max() > 1e-4


@pytest.mark.slow
def test_v3_runs_with_a_filter_count_never_seen_in_training():
    model = cdl.CDL(variant="v3", **SMALL)
    assert {d.shape[0] for _, d in cdl_training.training_dictionaries(model)} == {int(n[1:].split("_")[0]) for n in convdict.available()}
    d5 = torch.as_tensor(convdict.load("K8_k7"))[:5, 1:-1, 1:-1]  # K = 5 filters of 5 x 5: not a stored size
    y, m, _ = _acquire(_phantom_slice())
    out = model.interpret(y, m, d5)
    assert out["lambda"].shape == (1, 5, 32, 28) and torch.isfinite(out["reconstruction"]).all()
    with pytest.raises(InvalidInput, match="K = 8"):
        cdl.CDL(variant="v1", **SMALL).interpret(y, m, d5)


@pytest.mark.slow
def test_truncated_backprop_same_forward_gradient_through_last_iterations():
    torch.manual_seed(0)
    model = cdl.CDL(variant="v3", **SMALL)
    y, m, target = _acquire(_phantom_slice())
    with torch.no_grad():
        ref = model(y, m)  # eval: all iterations, no graph
    model.train()
    x = model(y, m)
    torch.testing.assert_close(x.detach(), ref, atol=1e-6, rtol=1e-5)
    (x - target).abs().pow(2).mean().backward()
    grads = [p.grad for p in model.net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
def test_training_lowers_the_loss_on_held_out_slices():
    refs = np.stack([np.roll(_phantom_slice(24, 24), s, axis=1) for s in range(6)])
    # start from maps far too large (Lambda ~ 2.7: every code thresholded away, x* ~ x_L)
    model = cdl.CDL(variant="v3", offset_init=-1.0, **SMALL)
    y, m, target = _acquire(np.roll(_phantom_slice(24, 24), 3, axis=0), sigma=0.2, seed=9)

    def loss():
        with torch.no_grad():
            return float((model(y, m) - target).abs().pow(2).mean())

    before = loss()
    stats = cdl_training.train(model, refs, epochs=2, config={"steps_per_epoch": 4, "batch_size": 1, "lr": 5e-2,
                                                     "sigma": [0.15, 0.25], "dictionaries": ["K8_k7"]},
                      show_progress=False)
    assert stats["epochs"] == 2 and len(stats["loss"]) == 2
    assert loss() < 0.9 * before


def test_checkpoint_roundtrip(tmp_path):
    model = models.build("cdl", {"variant": "v2", **SMALL})
    y, m, _ = _acquire(_phantom_slice())
    version = checkpoint.save(tmp_path / "cdl.pt", model, "cdl", model.config)
    loaded, meta = checkpoint.load(tmp_path / "cdl.pt")
    assert meta["version"] == version and loaded.variant == "v2"
    torch.testing.assert_close(loaded.interpret(y, m)["reconstruction"], model.eval().interpret(y, m)["reconstruction"])


def test_bad_configs_are_named_errors():
    with pytest.raises(InvalidInput, match="variant"):
        cdl.CDL(variant="v4", **SMALL)
    with pytest.raises(InvalidInput, match="stored"):
        cdl.CDL(dictionary="K7_k3", iterations=2, channels=[4, 8])
    with pytest.raises(InvalidInput, match="train_config"):
        cdl_training.train(cdl.CDL(**SMALL), np.zeros((2, 16, 16), np.float32), epochs=1, config={"lr0": 1})


# ------------------------------------------------------------------------------------------ metrics
def test_mse_hand_computed():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert metrics.mse(x, np.zeros((2, 2))) == 7.5
    assert metrics.mse(x, np.ones((2, 2)), mask=np.array([[0, 1], [1, 0]])) == 2.5  # (1 + 4) / 2


def test_ssim_of_constant_images_is_the_luminance_term():
    """Zero variances: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2."""
    a, b, L = 0.6, 0.3, 1.0
    c1 = (0.01 * L) ** 2
    got = metrics.ssim(np.full((16, 16), a), np.full((16, 16), b), data_range=L)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    x = np.random.default_rng(0).random((16, 16))
    assert metrics.ssim(x, x) == pytest.approx(1.0)


def test_blur_is_crete_roffet_with_sobel_differences():
    """B = max_axes (s_F - s_V) / s_F with s_F = sum |dF|, s_V = sum max(0, |dF| - |dB|), B = F re-blurred by an
    11-tap mean along the axis (the skimage implementation the paper uses), and a blurred image scores higher."""
    from scipy import ndimage as ndi
    from skimage.filters import sobel

    img = np.random.default_rng(1).random((40, 36))
    sharp = np.zeros((40, 36))
    sharp[10:30, 8:28] = 1.0
    vals = []
    for ax in (0, 1):
        f = np.abs(sobel(img, axis=ax))[2:-1, 2:-1]
        b = np.abs(sobel(ndi.uniform_filter1d(img, 11, axis=ax), axis=ax))[2:-1, 2:-1]
        sf, sv = f.sum(), np.maximum(0, f - b).sum()
        vals.append((sf - sv) / sf)
    assert metrics.blur(img) == pytest.approx(max(vals), rel=1e-6)
    assert metrics.blur(ndi.gaussian_filter(sharp, 2)) > metrics.blur(sharp)
    mask = np.zeros((40, 36), bool)
    mask[5:35, 4:32] = True
    assert metrics.blur(img, mask) == pytest.approx(metrics.blur(img[5:35, 4:32]))


# ------------------------------------------------------------------------------------------ served runner
def _volume_file(tmp_path, channels=4):
    base = _phantom_slice(32, 32)
    vol = np.stack([base * (1 + 0.1 * z) for z in range(8)], -1)  # (32, 32, 8)
    vol[..., 0] = 0  # an empty slice stays empty
    data = np.stack([vol * (c + 1) * 100 for c in range(channels)], -1).astype(np.float32)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path, vol


@pytest.mark.slow
def test_run_bundle_from_image_and_from_kspace(tmp_path):
    model = cdl.CDL(variant="v3", **SMALL)
    path, vol = _volume_file(tmp_path)
    out = cdl_runner.run_bundle(model, "cdl", "sha256:test", path, "img", tmp_path / "b.zip",
                                 channel="T1", sigma=0.1, keep=0.625, batch=2)
    man = bundle.validate(out)
    names = {o["name"] for o in man["outputs"]}
    assert {"reconstruction", "zero_filled", "reference", "lambda_mean", "lambda_min", "code_energy",
            "lambda_stats", "metrics", "preview"} <= names
    assert {f"lambda/k{i:02d}" for i in range(8)} <= names and man["acquisition"]["channel"] == "T1"
    b = bundle.read(out)
    rec, affine = b.volume("reconstruction")
    assert rec.shape == (32, 32, 8) and np.allclose(affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert (rec[..., 0] == 0).all() and rec[..., 2].max() > 0
    ref, _ = b.volume("reference")
    np.testing.assert_allclose(ref, vol * 200, rtol=1e-5)  # channel T1 = index 1
    assert b.volume("lambda/k03")[0].min() >= 0
    rows = {r["image"]: r for r in b.table("metrics")}
    assert set(rows) == {"zero_filled", "reconstruction"} and float(rows["reconstruction"]["ssim"]) > 0
    assert len(b.table("lambda_stats")) == 8
    b.close()

    ks, masks, _ = lfmri.simulate_volume(vol, "random", acceleration=2, sigma=0.1, seed=1)
    kpath = tmp_path / "k.nii"
    nib.save(nib.Nifti1Image(ks.astype(np.complex64), np.eye(4)), str(kpath))
    out = cdl_runner.run_bundle(model, "cdl", "sha256:test", kpath, "k", tmp_path / "k.zip",
                                 outputs=["reconstruction", "metrics", "lambda_summary"])
    names = {o["name"] for o in bundle.validate(out)["outputs"]}
    assert names == {"reconstruction", "lambda_mean", "lambda_min"}  # no reference: no metrics
    rec, _ = cdl_runner.predict_file(model, kpath)
    x0 = np.abs(lfmri.zero_filled(ks[..., 2], masks[..., 2]))
    assert rec.shape == (32, 32, 8) and abs(rec[..., 2].mean() - x0.mean()) < 0.2 * x0.mean()


def test_runner_refuses_bad_options(tmp_path):
    model = cdl.CDL(variant="v1", **SMALL)
    path, _ = _volume_file(tmp_path)
    for opts, match in (({"channel": "DWI"}, "channel"), ({"mask": "radial"}, "mask"), ({"sigma": 5}, "sigma"),
                        ({"keep": 0}, "keep"), ({"dictionary": "K16_k7"}, "K = 8"), ({"dictionary": "nope"}, "K32_k9")):
        with pytest.raises(InvalidInput, match=match):
            cdl_runner.predict_file(model, path, **opts)
    with pytest.raises(InvalidInput, match="unknown bundle outputs"):
        cdl_runner.run_bundle(model, "cdl", "v", path, "img", tmp_path / "x.zip", outputs=["label"])
    bad = tmp_path / "k3.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2, 2), np.complex64), np.eye(4)), str(bad))
    with pytest.raises(InvalidInput, match="k-space"):
        cdl_runner.predict_file(model, bad)
