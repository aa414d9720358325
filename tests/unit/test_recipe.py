"""The segmentation training recipe (training/segmentation.py): no weight decay on thresholds, step sizes and
biases; warm-up then cosine decay; validation Dice with the best epoch restored and early stopping; ETA."""
from __future__ import annotations

import math

import pytest
import torch

from sparsesight import models
from sparsesight.training import Objective, fit
from sparsesight.training.segmentation import no_decay, parameter_groups, train, warmup_cosine


def test_thresholds_step_sizes_and_biases_are_not_decayed():
    mlcsc = models.build("mlcsc")
    skip = no_decay(mlcsc)
    assert {"lam_raw", "mu_raw", "lam_min_raw", "mu0_raw", "readout_bias"} <= skip
    assert not any(n.endswith("raw") and "Phi" in n or n.startswith("D.") for n in skip)  # dictionaries decay
    sum_ = models.build("sum")
    thresholds = {n for n, _ in sum_.named_parameters() if n.startswith("b_")}
    assert thresholds and thresholds <= no_decay(sum_)
    assert "enc0.0.weight" not in no_decay(sum_)

    # AdamW with weight decay 0.25 and a zero gradient: the decayed weights shrink, thresholds and biases stay
    before = {n: p.detach().clone() for n, p in sum_.named_parameters()}
    opt = torch.optim.AdamW(parameter_groups(sum_, 0.25, lr=0.1), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (0.0 * sum(p.sum() for p in sum_.parameters())).backward()
        opt.step()
    for n, p in sum_.named_parameters():
        if n in no_decay(sum_):
            assert torch.equal(p, before[n]), n
        else:
            assert p.abs().sum() < before[n].abs().sum(), n


def test_sum_read_out_learns_faster_and_is_not_decayed():
    sum_ = models.build("sum")
    groups = parameter_groups(sum_, 0.25, lr=1e-3)
    by_param = {id(p): g for g in groups for p in g["params"]}
    omega = by_param[id(sum_.omega.weight)]
    assert omega["lr"] == pytest.approx(1e-3 * sum_.lr_multipliers()["omega.weight"]) and omega["weight_decay"] == 0
    assert "lr" not in by_param[id(sum_.enc0[0].weight)] and by_param[id(sum_.enc0[0].weight)]["weight_decay"] == 0.25
    assert sum(len(g["params"]) for g in groups) == len(list(sum_.parameters()))
    # the scheduler scales every group from its own rate
    opt = torch.optim.AdamW(groups, lr=1e-3)
    sched = warmup_cosine(opt, epochs=4, warmup=0)
    opt.step(), sched.step()
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(sum_.enc0[0].weight)] < 1e-3
    assert lr_of[id(sum_.omega.weight)] / lr_of[id(sum_.enc0[0].weight)] == pytest.approx(
        sum_.lr_multipliers()["omega.weight"])
    with pytest.raises(ValueError, match="base lr"):
        parameter_groups(sum_, 0.25)


def test_warm_up_then_cosine_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, epochs=10, warmup=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 8)))
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # decays after the warm-up
    # without warm-up it is the cosine schedule the benchmarks were measured with
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=10)
    opt3 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ours = warmup_cosine(opt3, epochs=10, warmup=0)
    for _ in range(9):
        opt2.step(), opt3.step(), ref.step(), ours.step()
        assert opt3.param_groups[0]["lr"] == pytest.approx(opt2.param_groups[0]["lr"])


def test_fit_reports_eta_and_stops_when_the_hook_says_so():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    x = torch.randn(8, 2)
    o = Objective(net, torch.optim.SGD(net.parameters(), lr=0.01), lambda e: [x], lambda b: net(b).pow(2).mean())
    seen = []

    def hook(stats):
        if stats["epochs"] == 3:
            stats["stop"] = "enough"

    stats = fit([o], 10, progress=seen.append, on_epoch_end=hook)
    assert stats["epochs"] == 3 and stats["stop"] == "enough"
    assert seen[-1]["eta_s"] == pytest.approx(seen[-1]["seconds"] / 3 * 7, rel=1e-6)
    assert seen[0]["eta_s"] == pytest.approx(seen[0]["seconds"] * 9, rel=1e-6)


def _phantom_items(tmp_path, n: int) -> list[dict]:
    """Training items of `n` real 4 mm phantoms (seed 3) written under tmp_path."""
    from sparsesight.data.phantom import write_dataset
    from sparsesight.pretrain import items_of

    return items_of(write_dataset(tmp_path / "ph", n_cases=n, seed=3, downsample=4, n_test=0, progress=False),
                    "training")


@pytest.mark.slow
def test_validation_keeps_the_best_epoch_and_stops_early(tmp_path):
    """Real phantoms at 4 mm: validation Dice after every epoch, the best epoch's weights restored, patience."""
    items = _phantom_items(tmp_path, 3)
    model = models.build("sum", {"roi_size": [32, 32, 32]})
    cfg = {"patch_size": [32, 32, 32], "samples_per_image": 1, "val_size": [32, 32, 32], "patience": 2,
           "lr": 0.05, "warmup_epochs": 1}
    stats = train(model, items[:2], epochs=8, config=cfg, val_items=items[2:], show_progress=False)
    vals = stats["val"]
    assert len(vals) == stats["epochs"] and 1 <= stats["best_epoch"] <= stats["epochs"]
    assert stats["best_val"] == max(vals) and vals[stats["best_epoch"] - 1] == max(vals)
    if stats["epochs"] < 8:  # stopped early: exactly `patience` epochs after the best one
        assert stats["epochs"] - stats["best_epoch"] == 2 and "no better validation" in stats["stop"]
    from sparsesight.training.segmentation import validation_crops, validation_dice
    model.eval()
    with torch.no_grad():
        assert validation_dice(model, validation_crops(items[2:], [32, 32, 32]), "cpu") == pytest.approx(stats["best_val"], abs=1e-6)


@pytest.mark.slow
def test_training_draws_leave_the_shared_cache_untouched(tmp_path):
    """The cache is shared with every draw (copy_cache=False): draws of the full augmentation must not write to it,
    and two draws differ."""
    from sparsesight.training.segmentation import default_train_config, training_dataset
    cfg = {**default_train_config(), "patch_size": [32, 32, 32], "augment": "full"}
    ds = training_dataset(_phantom_items(tmp_path, 1), cfg)
    before = {k: v.clone() for k, v in ds._cache[0].items() if k in ("image", "label")}
    draws = [ds[0] for _ in range(6)]
    for k, v in before.items():
        assert torch.equal(ds._cache[0][k], v)
    for d in draws[0]:
        assert d["image"].untyped_storage().data_ptr() != ds._cache[0]["image"].untyped_storage().data_ptr()
    assert not torch.equal(draws[0][0]["image"], draws[1][0]["image"])


def test_publish_without_evaluation_writes_weights_and_a_pending_card(tmp_path):
    """pretrain --no-eval (a GPU lease spent on training alone): the checkpoint and a card that matches it, whose
    evaluation says how to fill it in; no phantom is made."""
    from sparsesight import checkpoint, model_card
    from sparsesight.pretrain import publish
    model = models.build("sum", {"roi_size": [32, 32, 32]})
    training = {"epochs": 1, "spacing_mm": [4.0, 4.0, 4.0], "seed": 5, "command": "python -m sparsesight.pretrain sum"}
    card = publish(model, "sum", training, 2, 4, 5, tmp_path / "out", tmp_path / "work", evaluate_now=False)
    pt = tmp_path / "out" / "sum.pt"
    assert model_card.read(pt)["evaluation"] == card["evaluation"] and "dice" not in card["evaluation"]
    assert card["evaluation"]["data"] == "pending: python -m sparsesight.pretrain sum --republish sum.pt"
    assert (card["evaluation"]["seed"], card["evaluation"]["cases"], card["evaluation"]["downsample"]) == (1005, 2, 4)
    model_card.verify(pt, checkpoint.load(pt)[1], model_card.read(pt))
    assert "No held-out evaluation." in (tmp_path / "out" / "sum.card.md").read_text()
    assert not (tmp_path / "work").exists()


def test_null_model_refuses_cases_on_several_grids(tmp_path):
    """The permuted-label null model pairs images with other cases' label maps: on cases of other shapes (the
    varied phantoms) it is refused with the reason, not left to crash in the data loader (as it did on the GPU)."""
    import nibabel as nib
    import numpy as np

    from sparsesight.errors import InvalidInput
    from sparsesight.pretrain import main, permuted_labels, run
    items = []
    for i, shape in enumerate([(8, 8, 8), (8, 8, 8), (9, 8, 8)]):
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), tmp_path / f"l{i}.nii.gz")
        items.append({"image": f"i{i}", "label": str(tmp_path / f"l{i}.nii.gz")})
    assert [it["label"] for it in permuted_labels(items[:2])] == [items[1]["label"], items[0]["label"]]
    with pytest.raises(InvalidInput, match="one grid; these have 2 shapes"):
        permuted_labels(items)
    with pytest.raises(InvalidInput, match="without --variety-cases"):
        run("sum", epochs=1, variety_cases=2, permute_labels=True, work=tmp_path / "w", out=tmp_path / "o")
    with pytest.raises(SystemExit):
        main(["sum", "--permute-labels", "--variety-cases", "2", "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_the_commands_in_the_cards_parse_back_to_themselves():
    """Every recorded pretrain command (shipped weights, null models, seed runs) read by the command line gives
    RunOptions whose command() is that command again: the card says exactly how to remake the weights."""
    import json
    import shlex
    from pathlib import Path

    from sparsesight.pretrain import options_of, parser
    root = Path(__file__).resolve().parents[2]
    cards = [*root.glob("apps/sparsesight/pretrained/**/*.card.json"), *root.glob("bench/results/seeds*/*/*.card.json")]
    assert len(cards) >= 10
    for path in cards:
        t = json.loads(path.read_text())["training"]
        argv = shlex.split(t["command"])[3:]
        a = parser().parse_args(argv)
        assert options_of(a).command(a.model, a.epochs) == t["command"], path


def test_republishing_keeps_settled_weights_and_settles_stale_ones(tmp_path):
    """pretrain --republish evaluates again: settled weights (what train() saves) come back as they are, the same
    version (it would otherwise alter shipped weights in place: --out defaults to their folder); a checkpoint whose
    norm estimates are stale (saved before settling, issue 16) is settled."""
    from sparsesight import checkpoint
    from sparsesight.models.dictionary import ResizeDictionary, settle_norms
    from sparsesight.pretrain import settled
    torch.manual_seed(0)
    model = models.build("mlcsc", {"atoms": [4, 4, 4, 4], "roi_size": [16, 16, 16]})
    settle_norms(model)
    assert settled(model) is model
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    version = checkpoint.save(a, model, "mlcsc", model.config)
    assert checkpoint.save(b, settled(checkpoint.load(a)[0]), "mlcsc", model.config) == version
    for d in model.modules():
        if isinstance(d, ResizeDictionary):
            d.probe.copy_(torch.randn_like(d.probe))  # a stale estimate
    fixed = settled(model)
    assert fixed is not model and settled(fixed) is fixed


def test_thick_slices_blur_and_resample_along_one_axis_only():
    """thick_slices: a volume constant along the slice axis is unchanged; a 1-voxel plane across it is smeared
    along that axis only, its mass kept (interior), and the result matches scipy's slice profile, sampling and
    linear interpolation done by hand."""
    import numpy as np
    from scipy import ndimage as ndi

    from sparsesight.transforms import RandThickSlicesd, thick_slices
    rng = np.random.default_rng(0)
    xy = ndi.gaussian_filter(rng.normal(size=(1, 12, 10, 1)), 2).repeat(20, axis=3).astype(np.float32)
    torch.testing.assert_close(thick_slices(torch.from_numpy(xy), 2, 2.5), torch.from_numpy(xy), atol=1e-6, rtol=0)
    plane = np.zeros((1, 8, 9, 31), np.float32)
    plane[..., 15] = 1.0
    out = thick_slices(torch.from_numpy(plane), 2, 3.0).numpy()
    assert np.ptp(out[0, :, :, 15]) < 1e-6 and (out[0, 0, 0] > 1e-3).sum() > 3  # smeared along z, same everywhere
    assert out[0, 0, 0].sum() == pytest.approx(1.0, rel=0.1)
    # the same by hand: Gaussian of FWHM sqrt(t^2 - 1), sample every t voxels, linear back
    t, n = 2.4, 31
    line = rng.normal(size=n).astype(np.float32)
    blurred = ndi.gaussian_filter1d(line.astype(np.float64), np.sqrt(t ** 2 - 1) / 2.355, mode="nearest", truncate=3.0)
    m = int(np.floor((n - 1) / t)) + 1
    centres = np.linspace(0, n - 1, m)
    ref = np.interp(np.arange(n), centres, np.interp(centres, np.arange(n), blurred))
    got = thick_slices(torch.from_numpy(line).view(1, 1, 1, n), 2, t).numpy().ravel()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # as a transform: seeded, the image only, one axis
    img = torch.from_numpy(rng.normal(size=(2, 10, 11, 12)).astype(np.float32))
    lab = torch.zeros(1, 10, 11, 12)
    tr = RandThickSlicesd(keys="image", prob=1.0)
    tr.set_random_state(3)
    d = tr({"image": img, "label": lab})
    assert d["label"] is lab and not torch.equal(d["image"], img) and d["image"].shape == img.shape
    torch.testing.assert_close(d["image"], thick_slices(img, tr.axis, tr.t))
    tr.set_random_state(3)
    torch.testing.assert_close(tr({"image": img})["image"], d["image"])
    assert RandThickSlicesd(keys="image", prob=0.0)({"image": img})["image"] is img


def _augmented(augment_seed: int, n: int = 8, spatial_only: bool = False):
    """(label, n draws of the full augmentation (or its spatial steps) of a 32^3 case with a two-class blob whose
    last image channel is 100 x the label, so that image / label alignment can be read off each patch)."""
    import numpy as np
    from monai import transforms as mt

    from sparsesight.transforms import full_augmentation

    grid = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij")).astype(np.float32)
    r = np.sqrt(((grid - np.array([14, 17, 15])[:, None, None, None]) ** 2 * [[[[1.0]]], [[[1.6]]], [[[0.7]]]]).sum(0))
    label = np.where(r < 5, 3, np.where(r < 9, 1, 0)).astype(np.float32)[None]
    image = np.concatenate([np.random.default_rng(0).normal(1, 0.1, (3, 32, 32, 32)), 100 * label]).astype(np.float32)
    steps = full_augmentation([32, 32, 32])
    spatial = (mt.RandAffined, mt.Rand3DElasticd, mt.RandFlipd)
    chain = mt.Compose([t for t in steps if isinstance(t, spatial)] if spatial_only else steps)
    chain.set_random_state(seed=augment_seed)
    return label[0], [chain({"image": torch.from_numpy(image), "label": torch.from_numpy(label)}) for _ in range(n)]


def test_full_augmentation_keeps_label_and_image_aligned_and_is_seeded():
    """Every spatial step moves the label with the image (nearest neighbour: values stay 0, 1, 3), the same seed
    gives the same patches, another seed other ones; an unknown level is refused."""
    import numpy as np

    from sparsesight.errors import InvalidInput

    original, patches = _augmented(1, n=12, spatial_only=True)
    moved = 0
    for p in patches:
        label, marker = p["label"][0].numpy() > 0, p["image"][3].numpy() > 50
        assert p["image"].shape == (4, 32, 32, 32)
        dice = 2 * (label & marker).sum() / (label.sum() + marker.sum())  # interpolation touches the edges only
        assert dice > 0.95, dice
        moved += not np.array_equal(p["label"][0].numpy(), original)
    assert moved >= 3, f"only {moved} of 12 patches were moved: the check above saw too little"
    full = _augmented(1, n=12)[1]
    for p in full:  # with the intensity steps: labels are still 0, 1, 3 only
        assert set(np.unique(p["label"].numpy())) <= {0, 1, 3}
    again, other = _augmented(1, n=12)[1], _augmented(2, n=12)[1]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(full, again))
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(full, other))
    with pytest.raises(InvalidInput, match="unknown augment"):
        train(models.build("sum", {"roi_size": [32, 32, 32]}), [{"image": "x", "label": "y"}], epochs=1,
              config={"augment": "heavy"})


@pytest.mark.slow
def test_probe_picks_the_epochs_that_fit_the_budget_and_leaves_the_model_alone(tmp_path):
    """pretrain --minutes: two epochs on a copy time the second one; epochs = budget / that time (at least 2)."""
    from sparsesight.pretrain import probe_epochs

    items = _phantom_items(tmp_path, 2)
    model = models.build("sum", {"roi_size": [32, 32, 32]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {"patch_size": [32, 32, 32], "samples_per_image": 1, "val_size": [32, 32, 32], "augment": "light"}
    p = probe_epochs(model, items, items[1:], cfg, "cpu", minutes=0.5)
    assert set(p) == {"epochs", "seconds_per_epoch", "minutes"} and p["minutes"] == 0.5
    assert 0 < p["seconds_per_epoch"] < 30
    assert abs(p["epochs"] - max(2, int(30 / p["seconds_per_epoch"]))) <= 1  # (the time is rounded to 1 ms)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # trained a copy
    assert probe_epochs(model, items, [], cfg, "cpu", minutes=1e-4)["epochs"] == 2  # never fewer than the probe


def test_range_noise_is_the_scans_noise_as_the_served_pipeline_normalises_it():
    """RandRangeNoised on a z-scored volume matches noise of the same fraction of the range added to the scan and
    z-scored afterwards (robustness.add_noise, then the served normalisation): the same noise sigma and signal
    scale inside the brain, the background left at 0; a probability of 0 leaves the image alone."""
    import numpy as np

    from sparsesight.bench.robustness import add_noise
    from sparsesight.runners.segmentation import normalise
    from sparsesight.transforms import ChannelRanged, RandRangeNoised

    rng = np.random.default_rng(0)
    raw = np.zeros((2, 40, 40, 40), np.float32)
    brain = np.zeros((40, 40, 40), bool)
    brain[5:35, 5:35, 5:35] = True
    raw[:, brain] = (rng.gamma(4.0, 50.0, size=(2, int(brain.sum()))) + 100).astype(np.float32)
    z = normalise(raw)[0]
    d = ChannelRanged(keys="image")({"image": z})
    t = RandRangeNoised(keys="image", prob=1.0, fraction=(0.1, 0.1))
    t.set_random_state(seed=1)
    out = t(d)["image"]
    served = normalise(add_noise(raw, 0.1, np.random.default_rng(2)))[0]
    for c in range(2):
        s = 0.1 * float(d["image_range"][c])
        scale = 1 / math.sqrt(1 + s * s)
        ours, theirs = out[c][torch.from_numpy(brain)], served[c][torch.from_numpy(brain)]
        assert ours.std().item() == pytest.approx(1.0, rel=0.03)
        assert theirs.std().item() == pytest.approx(1.0, rel=0.03)
        # the clean image's part is scaled alike, and what is left is noise of the same sigma
        for x in (ours, theirs):
            resid = x - scale * z[c][torch.from_numpy(brain)]
            assert resid.std().item() == pytest.approx(s * scale, rel=0.03)
            assert abs(float(np.corrcoef(resid.numpy(), z[c][torch.from_numpy(brain)].numpy())[0, 1])) < 0.02
    assert torch.count_nonzero(out[:, ~torch.from_numpy(brain)]) == 0
    off = RandRangeNoised(keys="image", prob=0.0, fraction=(0.1, 0.1))({"image": z})["image"]
    assert torch.equal(off, z)


def test_train_config_is_checked_before_training():
    """What the train task's pre-flight refuses (a 400): unknown keys, optimizer, augment, a malformed range_noise."""
    from sparsesight.errors import InvalidInput
    from sparsesight.training import check_train_config

    check_train_config({})
    check_train_config({"range_noise": [0.5, 0.1], "augment": "thick", "optimizer": "adamw"})
    for bad in ([0.5], [1.5, 0.1], [0.5, 0.0], [0.5, 2.0], "0.5,0.1", [True, 0.1]):
        with pytest.raises(InvalidInput, match="range_noise"):
            check_train_config({"range_noise": bad})
    for config, reason in (({"lr0": 1}, "unknown train_config keys"), ({"augment": "heavy"}, "augment"),
                           ({"optimizer": "sgd"}, "optimizer")):
        with pytest.raises(InvalidInput, match=reason):
            check_train_config(config)
