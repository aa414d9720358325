"""SUM (seed 003): soft shrinkage, alpha, the Haar encoder-decoder wiring, the loss of eqs. 13-15, checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsesight import checkpoint, models
from sparsesight.errors import InvalidInput
from sparsesight.models.sum import (
    SUM,
    check_alpha,
    class_memberships,
    reconstruction_l1,
    region_targets,
    soft_iou,
    soft_shrink,
    sum_rec,
    sum_seg,
)

SMALL = {"features": 4, "levels": 2}


def _random_thresholds(model: SUM, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("b_"):
                p.copy_(scale * torch.rand(p.shape, generator=g))
    return model


def _identity_filters(model: SUM, path: str) -> SUM:
    """Delta kernels that copy the first channels (zeros elsewhere); the decoder's sum takes the upsampled
    path ("up") or the encoder's skip ("skip"). Then ED_{alpha=0} must reconstruct x exactly (eq. 6)."""
    with torch.no_grad():
        for name, conv in model.named_modules():
            if not isinstance(conv, (torch.nn.Conv2d, torch.nn.Conv3d)) or name == "omega":
                continue
            conv.weight.zero_()
            use = not ((name.startswith("dec_up") and path == "skip") or (name.startswith("dec_skip") and path == "up"))
            if use:
                centre = (1,) * model.dims
                for c in range(min(conv.in_channels, conv.out_channels)):
                    conv.weight[(c, c, *centre)] = 1.0
    return model


# ----------------------------------------------------------------------------------- soft shrinkage (eqs. 17-18)
def test_soft_shrink_matches_closed_forms():
    z = torch.linspace(-2, 2, 41).view(1, 1, 41).repeat(1, 3, 1)
    b = torch.tensor([0.0, 0.5, -0.25])
    out = soft_shrink(z, b, 1.0)
    for c in range(3):
        # eq. 17: sign(z) max(|z| - b, 0)
        expected = np.sign(z[0, c].numpy()) * np.maximum(np.abs(z[0, c].numpy()) - float(b[c]), 0)
        np.testing.assert_allclose(out[0, c].numpy(), expected, atol=1e-6)
        # eq. 18: (z - b)_+ - (-z - b)_+ (valid for b >= 0)
        if b[c] >= 0:
            relu = lambda t: np.maximum(t, 0)  # noqa: E731
            np.testing.assert_allclose(out[0, c].numpy(), relu(z[0, c].numpy() - float(b[c]))
                                       - relu(-z[0, c].numpy() - float(b[c])), atol=1e-6)
    # alpha scales the threshold; alpha = 0 is the identity
    np.testing.assert_allclose(soft_shrink(z, b, 0.0).numpy(), z.numpy())
    np.testing.assert_allclose(soft_shrink(z, b, 2.0).numpy(), soft_shrink(z, 2 * b, 1.0).numpy())


# ----------------------------------------------------------------------------------- the encoder-decoder
@pytest.mark.parametrize("dims,shape", [(2, (32, 24)), (3, (16, 16, 8))])
@pytest.mark.parametrize("path", ["up", "skip"])
def test_identity_filter_banks_reconstruct_perfectly(dims, shape, path):
    """With delta filters the Haar DWT/IDWT chain is the identity: ED_{alpha=0}(x) = x (eq. 6)."""
    torch.manual_seed(0)
    model = _identity_filters(SUM(spatial_dims=dims, in_channels=2, **SMALL), path).eval()
    x = torch.randn(2, 2, *shape)
    np.testing.assert_allclose(model(x, alpha=0.0, output="ed").detach().numpy(), x.numpy(), atol=1e-5)
    # positive thresholds then remove small coefficients: not the identity any more
    _random_thresholds(model)
    assert not torch.allclose(model(x, alpha=1.0, output="ed"), x, atol=1e-3)


@pytest.mark.parametrize("dims", [2, 3])
def test_alpha_zero_is_linear_and_alpha_one_is_not(dims):
    torch.manual_seed(1)
    model = _random_thresholds(SUM(spatial_dims=dims, **SMALL)).eval()
    shape = (20, 28) if dims == 2 else (12, 20, 9)  # sizes that are not multiples of 2**levels are padded
    x1, x2 = torch.randn(1, 4, *shape), torch.randn(1, 4, *shape)
    with torch.no_grad():
        ed0 = lambda t: model(t, alpha=0.0, output="ed")  # noqa: E731
        np.testing.assert_allclose(ed0(2 * x1 - 3 * x2).numpy(), (2 * ed0(x1) - 3 * ed0(x2)).numpy(), atol=1e-4)
        ed1 = lambda t: model(t, alpha=1.0, output="ed")  # noqa: E731
        assert (ed1(2 * x1 - 3 * x2) - (2 * ed1(x1) - 3 * ed1(x2))).abs().max() > 1e-2
        # alpha = 0 equals the model whose thresholds are zero (App. B: biases set to zero)
        zero = SUM(spatial_dims=dims, **SMALL)
        zero.load_state_dict(model.state_dict())
        for name, p in zero.named_parameters():
            if name.startswith("b_"):
                p.data.zero_()
        np.testing.assert_allclose(zero(x1, output="ed").numpy(), ed0(x1).numpy(), atol=1e-6)
        # odd (ED(-x) = -ED(x)) for every alpha: no biases in ED
        np.testing.assert_allclose(ed1(-x1).numpy(), -ed1(x1).numpy(), atol=1e-6)
    assert model(x1).shape == (1, 4, *shape)


def test_interpret_outputs_and_monotone_sparsity():
    torch.manual_seed(2)
    model = _random_thresholds(SUM(**SMALL)).eval()
    x = torch.randn(1, 4, 16, 12, 8)
    out = model.interpret(x, alpha=1.0)
    assert out["logits"].shape == out["probabilities"].shape == (1, 4, 16, 12, 8)
    assert out["regions"].shape == out["region_probabilities"].shape == (1, 3, 16, 12, 8)
    assert out["ed"].shape == out["ed_linear"].shape == x.shape
    assert 0.0 <= float(out["probabilities"].min()) and float(out["probabilities"].max()) <= 1.0
    np.testing.assert_allclose(out["region_probabilities"].numpy(), out["regions"].clamp(0, 1).numpy())
    np.testing.assert_allclose(out["regions"].numpy(), model(x, output="regions").detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(out["probabilities"].numpy(), class_memberships(out["region_probabilities"]).numpy())
    np.testing.assert_allclose(out["ed_linear"].numpy(), model(x, alpha=0.0, output="ed").detach().numpy(), atol=1e-6)
    assert out["survival"].shape == (1, 2 * model.L, 16, 12, 8)
    assert set(out["masks"]) == {r["layer"] for r in model.parameter_table() if r["layer"] != "alpha"}
    # a larger alpha never lets more coefficients through (positive thresholds)
    s = [float(model.interpret(x, alpha=a)["sparsity"].mean()) for a in (0.0, 0.5, 1.0, 2.0)]
    assert s == sorted(s, reverse=True) and s[0] > s[-1]
    # the label of forward and interpret agree
    assert torch.equal(model(x).argmax(1), out["logits"].argmax(1))


def test_alpha_context_and_validation():
    model = SUM(**SMALL)
    with model.using_alpha(0.25):
        assert float(model.alpha) == 0.25
    assert float(model.alpha) == 1.0
    for bad in ("abc", -0.1, float("nan"), 2.5, True, None, [1]):
        with pytest.raises(InvalidInput, match="alpha"):
            check_alpha(bad)
    assert check_alpha("0.5") == 0.5


# ----------------------------------------------------------------------------------- loss (eqs. 13-15)
def test_soft_iou_hand_computed():
    p = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 3)
    y = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 3)
    # inter = 1.5, union = 1.5 + 2 - 1.5 = 2
    assert float(soft_iou(p, y, smooth=0.0)) == pytest.approx(0.75)
    assert float(soft_iou(p, y, smooth=1.0)) == pytest.approx(2.5 / 3.0)


def test_loss_is_soft_iou_plus_weighted_reconstruction():
    torch.manual_seed(3)
    rec, seg = sum_rec(**SMALL), sum_seg(**SMALL)
    seg.load_state_dict(rec.state_dict())
    assert rec.config["lambda_rec"] == 0.35 and seg.config["lambda_rec"] == 0.0
    x = torch.randn(2, 4, 16, 16, 8)
    y = torch.randint(0, 4, (2, 1, 16, 16, 8))
    with torch.no_grad():
        regions = torch.stack([y[:, 0] >= 1, y[:, 0] >= 2, y[:, 0] == 3], 1).float()  # WT, TC, ET
        assert torch.equal(region_targets(y, 4), regions)
        expected_seg = 1 - soft_iou(rec(x, output="regions").clamp(0, 1), regions, 1.0).mean()
        expected_rec = (x - rec(x, alpha=0.0, output="ed")).abs().mean()
        assert float(seg.loss(seg, x, y)) == pytest.approx(float(expected_seg), rel=1e-5)
        assert float(rec.loss(rec, x, y)) == pytest.approx(float(expected_seg + 0.35 * expected_rec), rel=1e-5)
        assert float(reconstruction_l1(x, torch.zeros_like(x))) == pytest.approx(float(x.abs().mean()))
    # gradients reach the thresholds and the output layer
    rec.loss(rec, x, y).backward()
    assert rec.omega.weight.grad.abs().sum() > 0 and rec.enc0[0].weight.grad.abs().sum() > 0


def test_class_memberships_argmax_is_the_thresholded_regions():
    """argmax_k s_k equals the label of thresholding every nested region at 0.5 (WT on -> 1, also TC -> 2, ...)."""
    g = torch.Generator().manual_seed(0)
    q = torch.rand(1, 3, 4000, generator=g)
    s = class_memberships(q)
    on = q > 0.5
    wt, tc = on[:, 0], on[:, 0] & on[:, 1]
    expected = wt.long() + tc.long() + (tc & on[:, 2]).long()
    assert torch.equal(s.argmax(1), expected)
    assert float(s.max(1).values.min()) >= 0.5  # the chosen class is always a member
    # hand-computed: q = (0.9, 0.7, 0.2) -> s = (0.1, 0.3, 0.7, 0.2)
    s1 = class_memberships(torch.tensor([0.9, 0.7, 0.2]).view(1, 3, 1))[0, :, 0]
    np.testing.assert_allclose(s1.numpy(), [0.1, 0.3, 0.7, 0.2], atol=1e-6)
    # a region inside a region that is off counts as off (nested): q = (0.2, 0.9, 0.9) -> background
    assert int(class_memberships(torch.tensor([0.2, 0.9, 0.9]).view(1, 3, 1)).argmax(1)) == 0


def test_clip_passes_gradient_only_to_wrongly_saturated_voxels():
    """C_{0,1} values are the clamp; its gradient is the clamp's inside [0, 1], passes where a saturated voxel is
    asked to come back, and is 0 where it is asked to go further out."""
    z = torch.tensor([-2.0, -2.0, 0.5, 3.0, 3.0], requires_grad=True)
    out = SUM.clip(z)
    assert torch.equal(out.detach(), z.detach().clamp(0, 1))
    (out * torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0])).sum().backward()  # d loss / d out
    # z=-2 asked up (grad -1): passes; z=-2 asked down: 0; inside: 1; z=3 asked down (grad +1): passes; up: 0
    assert z.grad.tolist() == [-1.0, 0.0, 1.0, 1.0, 0.0]
    with torch.no_grad():
        assert torch.equal(SUM.clip(z), z.clamp(0, 1))


def test_paper_architecture_and_parameters():
    model = models.build("sum")
    assert model.features == [8, 16, 32, 64] and model.L == 4
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(c.bias is None and c.kernel_size == (3, 3, 3) for c in convs if c is not model.omega)
    assert model.omega.kernel_size == (1, 1, 1) and model.omega.out_channels == 3  # WT, TC, ET
    thresholds = [p for n, p in model.named_parameters() if n.startswith("b_")]
    assert thresholds and all(torch.all(p == 0.1) for p in thresholds)  # b started > 0 (issue 17)
    # b = |theta| >= 0 by construction: a parameter pushed below 0 still shrinks, by |theta|
    with torch.no_grad():
        thresholds[0].fill_(-0.3)
    assert all(r["negative"] == 0 and r["b_min"] >= 0 for r in model.parameter_table())
    z = torch.tensor([[-1.0, -0.2, 0.2, 1.0]]).reshape(1, 1, 4, 1, 1).expand(1, 8, 4, 1, 1)
    assert torch.allclose(soft_shrink(z, model.threshold(thresholds[0]), 1.0)[0, 0, :, 0, 0],
                          torch.tensor([-0.7, 0.0, 0.0, 0.7]))
    # a checkpoint config from before the constraint keeps its signed thresholds started at 0
    old = models.build("sum", models.stored_config("sum", {k: v for k, v in model.config.items()
                                                           if k not in ("thresholds", "threshold_init")}))
    assert old.config["thresholds"] == "signed" and all(float(p.abs().sum()) == 0
                                                        for n, p in old.named_parameters() if n.startswith("b_"))
    with torch.no_grad():
        old.b_enc0[0].fill_(-0.3)
    assert old.parameter_table()[0]["negative"] == 8
    table = model.parameter_table()
    assert table[-1]["layer"] == "alpha" and table[-1]["b_mean"] == 1.0
    assert len(table) == 4 * model.L  # 2 encoder + 2 decoder shrinkages per level, minus the linear output, + alpha
    assert model.train_defaults()["optimizer"] == "adamw"


def test_checkpoint_roundtrip(tmp_path):
    model = _random_thresholds(models.build("sum", SMALL))
    version = checkpoint.save(tmp_path / "sum.pt", model, "sum", model.config)
    loaded, meta = checkpoint.load(tmp_path / "sum.pt")
    assert meta["version"] == version and isinstance(loaded, SUM)
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model.eval()(x).numpy(), atol=1e-6)


@pytest.mark.slow
def test_trains_with_its_own_loss_and_adamw(tmp_path):
    import nibabel as nib

    from sparsesight.training import train

    rng = np.random.default_rng(0)
    items = []
    for k in range(2):  # tiny 4-channel volumes with a bright cube labelled 1..3 inside out
        label = np.zeros((24, 24, 16), np.uint8)
        label[6:18, 6:18, 4:12], label[9:15, 9:15, 6:10], label[11:13, 11:13, 7:9] = 1, 2, 3
        image = rng.normal(size=(24, 24, 16, 4)).astype(np.float32) + 2.0 * label[..., None] + 5.0
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"img{k}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"lab{k}.nii.gz")
        items.append({"image": str(tmp_path / f"img{k}.nii.gz"), "label": str(tmp_path / f"lab{k}.nii.gz")})
    model = models.build("sum", SMALL)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train(model, items, epochs=2, config={"patch_size": [16, 16, 16], "samples_per_image": 1,
                                                  "batch_size": 1}, show_progress=False)
    assert stats["config"]["optimizer"] == "adamw" and stats["config"]["weight_decay"] == 0.25
    assert all(math.isfinite(v) for v in stats["loss"]) and len(stats["loss"]) == 2
    assert all(0.0 <= v <= 1.0 + 0.35 * 10 for v in stats["loss"])  # soft-IoU loss in [0, 1] + L1 term
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_learns_to_segment_a_bright_cube(tmp_path):
    """Regression: with the clip's zero gradient and Omega starting inside [0, 1], SUM never segmented (Dice 0).
    A small SUM_Rec must now find the whole tumour of a bright cube within 120 short epochs."""
    import nibabel as nib

    from sparsesight.metrics import region_dice
    from sparsesight.runners.segmentation import predict
    from sparsesight.training import train

    rng = np.random.default_rng(0)
    items = []
    for k in range(2):
        label = np.zeros((24, 24, 16), np.uint8)
        o = 2 * k
        label[6 + o:18, 6:18 - o, 4:12], label[9:15, 9 + o:15, 6:10], label[11:13, 11:13, 7:9] = 1, 2, 3
        image = rng.normal(size=(24, 24, 16, 4)).astype(np.float32) + 2.0 * label[..., None] + 5.0
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"img{k}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"lab{k}.nii.gz")
        items.append({"image": str(tmp_path / f"img{k}.nii.gz"), "label": str(tmp_path / f"lab{k}.nii.gz")})
    torch.manual_seed(0)
    model = models.build("sum", SMALL)
    train(model, items, epochs=120, config={"patch_size": [16, 16, 16], "samples_per_image": 2, "batch_size": 2},
          show_progress=False)
    image = nib.load(items[0]["image"]).get_fdata().astype(np.float32).transpose(3, 0, 1, 2)
    label = np.asarray(nib.load(items[0]["label"]).dataobj)
    assert region_dice(predict(model, image, roi_size=[24, 24, 16]), label)["WT"] > 0.8


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match=r"unknown SUM config keys: \['depth'\]"):
        SUM(depth=5)
