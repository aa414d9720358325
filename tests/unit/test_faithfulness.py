"""Faithfulness (explain/faithfulness.py): AUC, deletion / insertion curves, model randomisation; served options."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sparsesight import bundle, models
from sparsesight.errors import InvalidInput
from sparsesight.explain import attribution as A
from sparsesight.explain import faithfulness as Fa
from sparsesight.explain import served


class BoxModel(nn.Module):
    """A model with a known relevant region: the class-1 logit of every pixel is k * (mean of channel 0 over the
    box R - 0.5); class 0 is 0. Nothing outside R matters."""

    def __init__(self, box=(slice(4, 10), slice(6, 12)), k=8.0):
        super().__init__()
        self.box, self.k = box, k
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        s = self.k * (x[:, 0][(slice(None), *self.box)].mean(dim=(1, 2)) * self.scale - 0.5)
        z1 = s.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(z1), z1], 1)


def test_auc_closed_forms():
    assert Fa.auc([0.7] * 11) == pytest.approx(0.7)
    assert Fa.auc(np.linspace(0, 1, 5)) == pytest.approx(0.5)  # int_0^1 f df
    f = np.linspace(0, 1, 101)
    assert Fa.auc(f ** 2) == pytest.approx(1 / 3, abs=1e-4)


def test_curve_endpoints_are_the_scores_at_the_input_and_the_baseline():
    net = BoxModel()
    x = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    attr = torch.randn(1, 16, 16)
    r = Fa.deletion_insertion(net, x, attr, 1, region="all", steps=8, insertion_baseline="zero")
    p = lambda t: float(torch.softmax(net(t[None]), 1)[0, 1].mean())  # noqa: E731
    assert r["deletion_curve"][0] == pytest.approx(p(x))
    assert r["deletion_curve"][-1] == pytest.approx(p(torch.zeros_like(x)))
    assert r["insertion_curve"][0] == pytest.approx(p(torch.zeros_like(x)))
    assert r["insertion_curve"][-1] == pytest.approx(p(x))
    assert len(r["fractions"]) == 9


def test_good_map_beats_random_map():
    """Deletion of the relevant box first drops the score at once (low AUC), its insertion raises it at once
    (high AUC); a random order does neither."""
    net = BoxModel()
    x = torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(1)) + 0.5
    good = A.attribute(net, x, "ig", target=1, region="all", steps=8)
    assert good[0][net.box].abs().sum() > 0 and good.abs().sum() == pytest.approx(good[0][net.box].abs().sum())
    rand = torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(2))
    rg = Fa.deletion_insertion(net, x, good, 1, region="all", steps=16, insertion_baseline="zero")
    rr = Fa.deletion_insertion(net, x, rand, 1, region="all", steps=16, insertion_baseline="zero")
    assert rg["deletion_auc"] < rr["deletion_auc"] - 0.2
    assert rg["insertion_auc"] > rr["insertion_auc"] + 0.2
    png = Fa.curves_png({"ig": rg, "random": rr})
    assert png.startswith(b"\x89PNG")


def _tiny_mlcsc():
    torch.manual_seed(0)
    m = models.build("mlcsc", {"design": 1, "atoms": [4, 4, 4, 4], "T": 1, "lam_init": -0.05, "lam_min_init": 0.05})
    with torch.no_grad():
        m.classifier.weight.normal_(0.0, 1.0)
    return m.eval()


@pytest.mark.slow
def test_randomising_the_weights_lowers_map_similarity():
    """Adebayo et al. 2018: the trained model's gradient map against the maps of ever more randomised copies."""
    net = _tiny_mlcsc()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 16, 16, 12, generator=torch.Generator().manual_seed(3))
    rows = Fa.randomisation_check(net, x, "gradient", target=1, region="all")
    assert rows[0]["layer"] == "(trained)" and rows[0]["spearman_abs"] == pytest.approx(1.0)
    assert [r["layer"] for r in rows[1:]] == ["classifier", "D.2", "D.1", "D.0", "Phi", "(root)"]
    assert rows[-1]["spearman_abs"] < 0.5 and rows[-1]["spearman"] < 0.5
    assert min(r["spearman_abs"] for r in rows[1:]) < rows[0]["spearman_abs"] - 0.5
    # the model itself keeps its weights
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert Fa.randomisation_png(rows).startswith(b"\x89PNG")


def test_similarity_closed_forms():
    a = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(4))
    s = Fa.similarity(a, 3 * a)
    assert s["spearman_abs"] == pytest.approx(1.0) and s["spearman"] == pytest.approx(1.0)
    assert s["ssim_abs"] == pytest.approx(1.0)
    inv = Fa.similarity(a, -a)
    assert inv["spearman"] == pytest.approx(-1.0) and inv["spearman_abs"] == pytest.approx(1.0)
    assert not Fa.passes(inv["spearman"])  # an inverted map is the same picture
    # the maps are compared as shown: summed over channels (a channel swap changes nothing)
    assert Fa.similarity(a, a.flip(0))["spearman"] == pytest.approx(1.0)
    # a constant map ranks nothing: undefined, and the check fails (it was written 0, a pass)
    const = Fa.similarity(a, torch.zeros_like(a))
    assert const["spearman"] is None and const["spearman_abs"] is None and not Fa.passes(None)


def _tiny_sum():
    torch.manual_seed(0)
    return models.build("sum", {"levels": 2, "features": 4}).eval()


def test_randomised_layers_come_from_the_models_own_random_initialisation():
    """Adebayo et al. 2018 re-initialise to the initialisation's random weights. SUM starts from near-identity
    filter banks (not random): its layers come from SUM's random initialisation (variance-preserving, so the
    randomised network's output is not shrunk to a constant and the check stays defined); ML-CSC's
    dictionaries come with their power-iteration probe, so ||D|| = 1 holds for the new kernels."""
    net = _tiny_sum()
    rand, layers = Fa.randomised_layers(net, seed=3)
    assert [n for n, _ in layers][:2] == ["omega", "b_dec_out"] and layers[-1][0] == "enc0.0"
    for _, randomise in layers:
        randomise()
    twin = models.build("sum", {**net.config, "init": "random"})
    for (name, p), (_, q) in zip(rand.named_parameters(), net.named_parameters()):
        assert not torch.equal(p, q) or name.startswith("b_") or name == "omega.bias", name  # constant starts
    assert float(rand.enc1[0].weight.std()) == pytest.approx(float(twin.enc1[0].weight.std()), rel=0.2)
    assert torch.equal(rand.alpha, net.alpha)  # the root's settings are kept
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    r = Fa.model_randomisation(net, x, A.attribute(net, x, "gradient", 1, region="all"), "gradient", 1, region="all")
    assert r["spearman"] is not None and r["spearman_abs"] is not None
    # ML-CSC design 2: every dictionary of the randomised copy still has norm 1
    torch.manual_seed(0)
    m = models.build("mlcsc", {"atoms": [8, 8, 8, 8]}).eval()
    rand, layers = Fa.randomised_layers(m, seed=1)
    for _, randomise in layers:
        randomise()
    for name in ("Phi", "D.0", "D.2"):
        d = rand.get_submodule(name)
        assert not torch.equal(d.raw, m.get_submodule(name).raw)
        d2 = type(d)(d.groups, d.raw.shape[1], d.code_ch, d.raw.shape[-1], d.stride, d.joint)
        d2.raw.data.copy_(d.raw)
        d2.refresh_norm(200)
        assert float(d.sigma()) == pytest.approx(float(d2.sigma()), rel=0.02), name


def test_voxel_order_ranks_the_channel_sum():
    attr = torch.tensor([[[0.1, 3.0], [2.0, -1.0]], [[0.0, 0.0], [1.5, 0.0]]])
    np.testing.assert_array_equal(Fa.voxel_order(attr).numpy(), [[2, 1], [0, 3]])


def test_served_options_are_checked():
    assert served.parse_options({}) is None
    req = served.parse_options({"attribution": "ig, gradient", "attribution_target": "enhancing,1",
                                "attribution_steps": "8", "attribution_region": "1,2,3"})
    assert req["methods"] == ["integrated_gradients", "gradient"] and req["targets"] == [3, 1]
    assert req["steps"] == 8 and req["region"] == (1, 2, 3)
    for bad, msg in [({"attribution": "lime"}, "unknown attribution method"),
                     ({"attribution": "ig", "attribution_target": "tumour"}, "unknown attribution_target"),
                     ({"attribution": "ig", "attribution_steps": 0}, "attribution_steps"),
                     ({"attribution": "ig", "attribution_steps": 2.5}, "attribution_steps"),
                     ({"attribution": "ig", "attribution_baseline": "grey"}, "attribution_baseline"),
                     ({"attribution": "ig", "attribution_region": "centre"}, "attribution_region"),
                     ({"attribution_nifti": True}, "name the method"),
                     ({"attribution": "ig", "attribution_step": 4}, r"unknown infer options \['attribution_step'\]")]:
        with pytest.raises(InvalidInput, match=msg):
            served.parse_options(bad)


@pytest.mark.slow
def test_served_bundle_entries_carry_faithfulness(tmp_path, monkeypatch):
    from sparsesight.explain import null_models

    net = _tiny_mlcsc()
    torch.manual_seed(7)
    (tmp_path / "null").mkdir()
    _null_folder(tmp_path / "null", models.build("mlcsc", net.config))
    monkeypatch.setattr(null_models, "NULL_DIR", tmp_path / "null")
    x = torch.randn(1, 4, 16, 16, 12, generator=torch.Generator().manual_seed(5))
    w = bundle.BundleWriter("mlcsc", "v", "case", np.eye(4), (16, 16, 12))
    entries = served.add_attributions(w, net, x, {"attribution": "ig,gradient", "attribution_target": "oedema",
                                                  "attribution_steps": 4, "attribution_region": "all",
                                                  "attribution_sanity": True},
                                      progress=False, model_name="mlcsc")
    m = bundle.validate(w.write(tmp_path / "b.zip"))
    assert m["data_randomisation"]["version"].startswith("sha256:")
    names = [o["name"] for o in m["outputs"]]
    assert names == ["attribution/ig/oedema", "attribution/gradient/oedema", "attribution/quality",
                     "attribution/faithfulness"]
    for e in entries:
        assert e["kind"] == "scalar" and e["target"] == "oedema" and e["steps"] == 4
        f = e["faithfulness"]
        assert 0 <= f["deletion_auc"] <= 1 and 0 <= f["insertion_auc"] <= 1
        assert math.isclose(sum(e["modality_share"].values()), 1.0, rel_tol=1e-4)
        # the sanity check: the same method on a randomly re-initialised copy, flagged when it barely changes
        # (judged on the map as shown, summed over modalities and signed; its magnitude gets its own verdict)
        q = e["quality"]
        assert -1 <= q["model_randomisation_spearman"] <= 1 and -1 <= q["model_randomisation_spearman_abs"] <= 1
        assert q["sane"] == (abs(q["model_randomisation_spearman"]) <= Fa.SANITY_MAX_SPEARMAN)
        assert q["magnitude_sane"] == (abs(q["model_randomisation_spearman_abs"]) <= Fa.SANITY_MAX_SPEARMAN)
        flags = [f for f in q["flags"] if "model-randomisation" in f]
        assert len(flags) == (not q["sane"] or not q["magnitude_sane"])
        assert any(f.startswith("its magnitude fails") for f in flags) == (q["sane"] and not q["magnitude_sane"])
        # what the map follows besides the model: the image (no distance: the region is the whole image)
        assert -1 <= q["vs_image"] <= 1 and "abs_vs_region_distance" not in q
        # and the data randomisation: the same method on the null model (same configuration, other weights)
        assert q["data_sane"] == (abs(q["data_randomisation_spearman"]) <= Fa.SANITY_MAX_SPEARMAN)
        assert q["magnitude_data_sane"] == (abs(q["data_randomisation_spearman_abs"]) <= Fa.SANITY_MAX_SPEARMAN)
        assert any("data-randomisation" in f for f in q["flags"]) == (not q["data_sane"] or
                                                                      not q["magnitude_data_sane"])
    rows = bundle.read(tmp_path / "b.zip").table("attribution/quality")
    for check in ("model", "data"):
        for metric in (f"{check}_randomisation_spearman", f"{check}_randomisation_spearman_abs"):
            sanity = [r for r in rows if r["metric"] == metric]
            assert len(sanity) == 2 and all(r["aim"] == "|rho| <= 0.3" and r["status"] in ("ok", "FAIL")
                                            for r in sanity)
    # the stored map is the channel sum of attribute()
    ig = A.attribute(net, x, "ig", 1, region="all", steps=4)
    vol, _ = bundle.read(tmp_path / "b.zip").volume("attribution/ig/oedema")
    np.testing.assert_allclose(vol, ig[0].sum(0).numpy(), rtol=1e-5, atol=1e-6)


def test_data_randomisation_against_a_null_model_of_known_maps():
    """Adebayo et al. 2018 Sec. 3.2: a null model that attends to the same voxels fails the check (Spearman 1),
    one that attends to other voxels passes; both on the trained model's region."""
    x = torch.rand(1, 2, 16, 18, generator=torch.Generator().manual_seed(2))
    model = BoxModel()
    attr = A.attribute(model, x, "gradient", 1, region="all")
    same = Fa.data_randomisation(model, BoxModel(), x, attr, "gradient", 1, region="all")
    assert same["spearman_abs"] == pytest.approx(1.0) and same["sane"] is False
    other = Fa.data_randomisation(model, BoxModel(box=(slice(11, 16), slice(0, 5))), x, attr, "gradient", 1,
                                  region="all")
    assert other["spearman_abs"] < Fa.SANITY_MAX_SPEARMAN and other["sane"] is True


def _null_folder(folder, null):
    from sparsesight import checkpoint, model_card

    path = folder / "mlcsc.pt"
    version = checkpoint.save(path, null, "mlcsc", null.config)
    model_card.write(path, {"model": "mlcsc", "version": version, "config": checkpoint.load(path)[1]["config"],
                            "description": "null", "parameters": 0, "training": {"labels": "permuted"},
                            "evaluation": {}, "limits": []})
    return path


def test_null_models_are_found_by_name_and_configuration(tmp_path):
    from sparsesight.explain import null_models

    net = _tiny_mlcsc()
    model, info = null_models.find("mlcsc", net, tmp_path)
    assert model is None and "--permute-labels" in info["note"]
    torch.manual_seed(1)
    path = _null_folder(tmp_path, models.build("mlcsc", net.config))
    model, info = null_models.find("mlcsc", net, tmp_path)
    assert model is not None and model.config == net.config and info["version"].startswith("sha256:")
    assert not torch.equal(model.classifier.weight, net.classifier.weight)
    other = models.build("mlcsc", {**net.config, "atoms": [4, 4, 4, 8]})
    assert null_models.find("mlcsc", other, tmp_path)[0] is None
    path.write_bytes(path.read_bytes()[:-10])  # no longer the card's file: refused, never served
    model, info = null_models.find("mlcsc", net, tmp_path)
    assert model is None and "refused" in info["note"]


def test_permuted_labels_leave_no_image_with_its_own_label(tmp_path):
    import nibabel as nib

    from sparsesight.pretrain import permuted_labels

    items = []
    for k in range(5):  # label maps on one grid (permuted_labels checks it)
        nib.save(nib.Nifti1Image(np.full((4, 4, 4), k, np.uint8), np.eye(4)), tmp_path / f"l{k}.nii.gz")
        items.append({"image": f"i{k}", "label": str(tmp_path / f"l{k}.nii.gz")})
    out = permuted_labels(items)
    assert [it["image"] for it in out] == [it["image"] for it in items]
    assert sorted(it["label"] for it in out) == sorted(it["label"] for it in items)
    assert all(it["label"] != str(tmp_path / f"l{it['image'][1:]}.nii.gz") for it in out)


def test_null_model_cards_say_what_the_run_did():
    from sparsesight import model_card
    from sparsesight.pretrain import PERMUTED_NOTE, card_limits

    null = card_limits("sum", {"labels": PERMUTED_NOTE, "config": {"augment": "light"}})
    assert any("null model" in x for x in null) and not any("misses most of the oedema" in x for x in null)
    assert any("light augmentation" in x for x in null)
    full = card_limits("sum", {"config": {"augment": "full"}})
    assert any("full augmentation" in x for x in full) and not any("null model" in x for x in full)
    assert any("light augmentation" in x for x in card_limits("mlcsc", {"config": {}}))  # recipes before augment
    card = {"model": "sum", "kind": "null", "version": "v", "sha256": "s", "parameters": 1, "config": {},
            "training": {}, "evaluation": {"dice": {}}, "limits": null}
    assert "(null model of the data-randomisation check)" in model_card.markdown(card).splitlines()[0]


def test_what_a_map_follows_besides_the_model():
    """follows(): a map whose magnitude falls off with the distance to the region ranks with minus that distance
    (Spearman 1), a map that is the image times a constant ranks with the image; no region, no distance."""
    from scipy import ndimage

    roi = np.zeros((12, 14, 10), bool)
    roi[4:7, 5:9, 3:6] = True
    dist = Fa.region_distance(roi, roi.shape)
    assert dist[roi].max() == 0 and dist[~roi].min() == 1
    np.testing.assert_allclose(dist, ndimage.distance_transform_edt(~roi))
    assert Fa.region_distance("all", roi.shape) is None and Fa.region_distance(np.zeros_like(roi), roi.shape) is None
    x = torch.randn(2, *roi.shape, generator=torch.Generator().manual_seed(0))
    falling = torch.from_numpy(np.exp(-dist))[None].repeat(2, 1, 1, 1) * torch.tensor([1.0, -3.0]).view(2, 1, 1, 1)
    f = Fa.follows(falling, x, dist)
    assert f["abs_vs_region_distance"] == pytest.approx(1.0)
    g = Fa.follows(-2.5 * x, x, None)
    assert g["vs_image"] == pytest.approx(-1.0) and g["abs_vs_image"] == pytest.approx(1.0)
    assert g["abs_vs_region_distance"] is None


def test_a_failed_check_names_what_both_maps_share():
    """shared_rankings(): the magnitude check's failure is put down to the region's distance only when both maps'
    magnitudes follow it; the signed check's to the image only when both maps follow it with the same sign."""
    def result(sane, magnitude_sane, a, b, a_abs=0.1, b_abs=0.1):
        return {"sane": sane, "magnitude_sane": magnitude_sane,
                "follows": {"abs_vs_region_distance": a[0], "vs_image": a[1], "abs_vs_image": a_abs},
                "other_follows": {"abs_vs_region_distance": b[0], "vs_image": b[1], "abs_vs_image": b_abs}}

    assert Fa.shared_rankings(result(True, False, (0.9, 0.1), (0.8, 0.0))) == ["region distance"]
    assert Fa.shared_rankings(result(True, False, (0.9, 0.1), (0.4, 0.0))) == []  # only one of them
    assert Fa.shared_rankings(result(True, True, (0.9, 0.1), (0.8, 0.0))) == []  # nothing failed
    assert Fa.shared_rankings(result(False, True, (None, 0.7), (None, 0.65))) == ["image"]
    assert Fa.shared_rankings(result(False, True, (None, 0.7), (None, -0.65))) == []  # opposite signs
    assert Fa.shared_rankings(result(False, False, (0.95, -0.8), (0.9, -0.7))) == ["region distance", "image"]
    assert Fa.shared_rankings(result(True, False, (0.2, 0.1), (0.1, 0.0), 0.8, 0.9)) == ["image magnitude"]
    assert Fa.shared_rankings(result(True, True, (0.2, 0.1), (0.1, 0.0), 0.8, 0.9)) == []


def test_a_map_that_is_the_image_fails_the_check_and_says_why():
    """x * (a positive weight) for the trained model and for another one alike: the signed check fails, and the
    flag says both maps follow the image (the input, not what the model learned)."""

    class Gain(nn.Module):  # logit of class 1 = w * x summed over channels, per voxel; w > 0
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.rand(2) + 0.5)

        def forward(self, x):
            z1 = (x * self.w.view(1, -1, 1, 1, 1)).sum(1, keepdim=True)
            return torch.cat([torch.zeros_like(z1), z1], 1)

    torch.manual_seed(0)
    x = torch.randn(1, 2, 10, 10, 10, generator=torch.Generator().manual_seed(1))
    net, other = Gain(), Gain()
    attr = A.attribute(net, x, "ig", 1, region="all", steps=4)
    r = Fa.data_randomisation(net, other, x, attr, "ig", 1, region="all", steps=4)
    assert r["sane"] is r["magnitude_sane"] is False and r["follows"]["vs_image"] > 0.9
    assert r["shared"] == ["image magnitude", "image"]
    q = {"flags": []}
    served._record_check(q, "data_randomisation", "data_sane", r, "data-randomisation check", "the null model")
    assert q["vs_image"] == r["follows"]["vs_image"] and "abs_vs_region_distance" not in q
    assert "both maps follow the image" in q["flags"][0]
    # the magnitude of the same maps (the image's magnitude) passes nothing either, and says so when asked alone
    r2 = {**r, "sane": True}
    q2 = {"flags": []}
    served._record_check(q2, "data_randomisation", "data_sane", {**r2, "shared": Fa.shared_rankings(r2)},
                         "data-randomisation check", "the null model")
    assert q2["flags"][0].startswith("its magnitude fails") and "follow the image's magnitude" in q2["flags"][0]


def test_distance_profile_of_a_map_that_falls_off_with_the_distance():
    """bench.attribution.distance_profile: mean |map| per whole voxel of distance, as a share of the largest;
    NaN where no voxel lies at that distance."""
    from sparsesight.bench.attribution import distance_profile

    roi = np.zeros((9, 9, 9), bool)
    roi[4, 4, 4] = True
    dist = Fa.region_distance(roi, roi.shape)
    amap = torch.from_numpy(-2.0 * 0.5 ** dist)[None]  # (1, *spatial), signed: the profile is of |map|
    prof = distance_profile(amap, dist, bins=12)
    ring = np.floor(dist) == 1  # 1, sqrt 2, sqrt 3 voxels away
    assert prof[0] == pytest.approx(1.0) and prof[1] == pytest.approx(float((0.5 ** dist[ring]).mean()))
    assert all(a >= b for a, b in zip(prof[:7], prof[1:7]))  # falls off
    assert math.isnan(prof[11])  # the farthest corner is sqrt(48) < 7 voxels away
