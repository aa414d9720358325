"""Explanation-quality metrics (explain/quality.py) on constructed cases whose answer is known."""
import json
import math

import numpy as np
import pytest
import torch

from sparsesight.explain import quality

MODS = ["FLAIR", "T1"]


def _case(shape=(20, 18, 15)):
    """A brain (ellipsoid) of smooth positive intensities on a zero background, a tumour region inside it, and a
    perfect two-class decomposition: the tumour component is the image in the tumour, the background one the rest."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (g ** 2).sum(0) < 0.8
    tumour = ((g - 0.2) ** 2).sum(0) < 0.1
    x = np.stack([brain * (2.0 + g[0]), brain * (1.5 + g[1] ** 2)])
    comps = np.stack([x * ~tumour, x * tumour])  # (m=2, n=2, X, Y, Z)
    return x, comps, brain, tumour.astype(np.uint8)


def test_perfect_decomposition_has_error_0_energy_1_localisation_inf():
    x, comps, brain, label = _case()
    assert np.array_equal(quality.brain_mask(x), brain)
    recon = comps.sum(0)
    q = quality.assess(x, recon, MODS, components=comps, label=label, classes={1: "tumour"})
    for m in q["reconstruction"]["per_modality"].values():
        assert m["relative_error"] == pytest.approx(0, abs=1e-12)
        assert m["relative_error_after_gain"] == pytest.approx(0, abs=1e-12)
        assert m["gain"] == pytest.approx(1) and m["correlation"] == pytest.approx(1)
        assert m["energy_in_brain"] == 1.0
        assert m["lattice_share"] == pytest.approx(m["image_lattice_share"])
    assert q["localisation"]["per_class"]["tumour"]["localisation_ratio"] == math.inf
    assert q["faithful"] and q["reconstruction"]["flags"] == [] and q["localisation"]["flags"] == []
    json.loads(json.dumps(quality.jsonable(q), allow_nan=False))  # inf as "inf": strict JSON
    rows = quality.table_rows(q)
    assert rows[-1]["status"] == "ok" and not any(r["status"].startswith("FAIL") for r in rows)


def test_failing_decomposition_is_flagged_not_faithful():
    x, comps, brain, label = _case()
    noise = np.random.default_rng(0).normal(size=x.shape)  # energy outside the brain, no relation to x
    q = quality.assess(x, 50 * noise, MODS, components=np.stack([comps[0], comps[0]]), label=label,
                       classes={1: "tumour"})
    rec = q["reconstruction"]["per_modality"]["FLAIR"]
    assert rec["relative_error"] > 10 and rec["relative_error_after_gain"] > 0.9 and rec["energy_in_brain"] < 0.9
    assert any("relative error" in f for f in q["reconstruction"]["flags"])
    assert any("energy in brain" in f for f in q["reconstruction"]["flags"])
    assert q["localisation"]["per_class"]["tumour"]["localisation_ratio"] < 5 and q["localisation"]["flags"]
    assert not q["faithful"]
    assert any(r["status"] == "FAIL: not faithful" for r in quality.table_rows(q))
    assert quality.summary(q)[-1].startswith("NOT FAITHFUL")


def test_gain_corrected_error_is_scale_invariant():
    x, _, brain, _ = _case()
    rng = np.random.default_rng(1)
    recon = x[0] + 0.3 * rng.normal(size=x[0].shape)
    e = quality.relative_error_after_gain(recon, x[0], brain)
    assert 0 < e < 1
    for k in (1e-3, 7.0, 1e3, -2.0):
        assert quality.relative_error_after_gain(k * recon, x[0], brain) == pytest.approx(e, rel=1e-9)
        assert quality.best_gain(k * recon, x[0], brain) == pytest.approx(quality.best_gain(recon, x[0], brain) / k)
    # the plain error is not: a reconstruction 100x too bright is 99 relative errors off
    assert quality.relative_error(100 * x[0], x[0], brain) == pytest.approx(99)


@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 14, 13)])
def test_lattice_share_of_checkerboard_is_1_smooth_is_0(shape):
    idx = np.indices(shape).sum(0)
    checker = (-1.0) ** idx
    assert quality.lattice_share(checker) == pytest.approx(1, abs=0.05 if shape[0] % 2 else 1e-9)
    # a stride-2 pattern along one (even) axis only also lies on the lattice planes
    stripes = (-1.0) ** np.indices(shape)[1] + 0.1
    assert quality.lattice_share(stripes) == pytest.approx(1, abs=1e-9)
    g = np.indices(shape) / np.array(shape)[:, None, None, None]
    smooth = np.exp(-((g - 0.5) ** 2).sum(0) / 0.05)
    assert quality.lattice_share(smooth) < 1e-3
    noise = np.random.default_rng(0).normal(size=shape)
    planes = 1 - np.prod([1 - (1 if n % 2 == 0 else 2) / n for n in shape])
    assert quality.lattice_share(noise) == pytest.approx(planes, rel=0.3)


def test_negative_threshold_and_large_step_are_flagged():
    ok = quality.parameter_check({"lam_1[a]": 0.1, "lam_1[b]": 0.0}, {"mu_1[a]": (0.5, 1.2)})
    assert ok["flags"] == [] and ok["max_step_norm"] == pytest.approx(0.72)
    bad = quality.parameter_check({"lam_1[a]": 0.1, "lam_1[b]": -0.01}, {"mu_1[a]": (2.0, 1.0)})
    assert bad["negative_thresholds"] == ["lam_1[b]"] and len(bad["flags"]) == 2
    assert "lambda < 0" in bad["flags"][0] and "mu ||D||^2" in bad["flags"][1]


def test_mlcsc_parameter_check_reads_the_model():
    from sparsesight.models.mlcsc import MLCSC

    torch.manual_seed(0)
    model = MLCSC(design=1, atoms=[2, 2, 2, 2])
    # mu = 1 and lam > 0 at initialisation: mu ||D||^2 is ||D||^2, the largest class' that of the grouped operator
    q = quality.mlcsc_parameter_check(model)
    assert q["negative_thresholds"] == [] and q["min_threshold"] > 0
    for l, d in enumerate(model.D, start=1):
        per_class = [v for k, v in q["step_norms"].items() if k.startswith(f"mu_{l}[")]
        assert max(per_class) == pytest.approx(d.operator_norm(size=12 * d.stride, iters=60) ** 2, rel=0.05)
    # the joint synthesis sum_c Phi_c of 4 classes is at least as long as one class', at most sqrt(4) x
    assert 0.9 <= q["operator_norms"]["Phi (joint)"] <= 2.05
    with torch.no_grad():
        model.lam[1, 3] = -0.5
        model.mu[0, 2] = 10.0
    q = quality.mlcsc_parameter_check(model)
    assert q["negative_thresholds"] == ["lam_2[enhancing]"]
    assert q["step_norms"]["mu_1[non-enhancing core]"] > 5 and len(q["flags"]) == 2


def test_spectral_norm_of_a_known_operator():
    a = torch.diag(torch.tensor([3.0, 1.0, 0.5]))
    assert quality.spectral_norm(lambda v: a @ v, lambda v: a.T @ v, torch.ones(3)) == pytest.approx(3, rel=1e-4)


def test_shrinkage_activity_counts_zeroed_coefficients_and_negative_thresholds():
    rows = [{"layer": "encoder_0.0", "channels": 8, "negative": 0}, {"layer": "decoder_0.0", "channels": 8,
                                                                       "negative": 3},
            {"layer": "alpha", "channels": 1, "negative": 0}]
    s = quality.shrinkage_activity([0.75, 0.25], ["encoder_0.0", "decoder_0.0"], rows)
    assert s["zeroed_share"] == {"encoder_0.0": 0.25, "decoder_0.0": 0.75} and s["zeroed_share_mean"] == 0.5
    assert s["negative_thresholds"] == 3 and s["thresholds"] == 16 and "3 of 16" in s["flags"][0]
    q = quality.assess(np.ones((1, 4, 4, 4)), np.ones((1, 4, 4, 4)), ["FLAIR"], shrinkage=s)
    assert not q["faithful"] and any(r["set"] == "shrinkage" and r["status"] == "FAIL" for r in quality.table_rows(q))
    clean = quality.shrinkage_activity([0.5], ["encoder_0.0"], rows[:1])
    x = np.random.default_rng(0).uniform(1, 2, (1, 6, 6, 6))
    assert clean["flags"] == [] and quality.assess(x, x, ["FLAIR"], shrinkage=clean)["faithful"]


def test_sums_output_signal_is_measured_as_a_map_not_as_a_reconstruction():
    """SUM's ED_alpha(x) (the signal entering the output layer) is not held to the reconstruction aim: a signal that
    keeps the tumour and pushes the rest of the brain down (the paper's Fig. 2) passes; one spilled outside the
    brain is flagged; the share the shrinkages removed and the correlation with the tumour are what they are."""
    x, _, brain, label = _case()
    tumour = label.astype(bool)
    linear = x.copy()  # ED_0(x) = x: the filter banks pass the image
    signal = np.where(tumour, x, -0.5 * x)  # the tumour kept, the rest pushed below 0
    s = quality.assess_output_signal(signal, linear, x, tumour, brain, MODS)
    m = s["per_modality"]["FLAIR"]
    assert s["faithful"] and s["flags"] == []
    assert m["removed_by_shrinkage"] == pytest.approx(quality.relative_error(signal[0], x[0], brain))
    assert m["tumour_correlation"] > m["image_tumour_correlation"] and m["energy_in_brain"] == 1.0
    same = quality.assess_output_signal(linear, linear, x, tumour, brain, MODS)["per_modality"]["T1"]
    assert same["removed_by_shrinkage"] == 0.0  # alpha = 0: nothing removed
    assert same["tumour_correlation"] == pytest.approx(same["image_tumour_correlation"])
    spilled = signal + 10.0 * ~brain  # energy outside the brain
    bad = quality.assess_output_signal(spilled, linear, x, tumour, brain, MODS)
    assert not bad["faithful"] and all("energy in brain" in f for f in bad["flags"])
    # in the manifest beside the linear reconstruction: the verdict is theirs together, each flag names its set
    q = quality.assess(x, linear, MODS, brain=brain, output_signal=bad)
    assert q["reconstruction"]["faithful"] and not q["faithful"]
    assert "signal entering the output layer: FLAIR: energy in brain" in quality.summary(q)[-1]
    rows = [r for r in quality.table_rows(q) if r["set"] == "output_signal"]
    assert {r["metric"] for r in rows} >= {"removed_by_shrinkage", "tumour_correlation", "energy_in_brain"}
    assert [r["status"] for r in rows if r["metric"] == "energy_in_brain"] == ["FAIL", "FAIL"]
    assert all(r["status"] == "" for r in rows if r["metric"] in ("removed_by_shrinkage", "tumour_correlation"))


def test_code_energy_and_shrinkage_maps_carry_their_figures():
    """ML-CSC's code energy is judged like its components (localisation in the predicted class region); a SUM
    shrinkage map carries its level's zeroed share and flags a threshold b < 0."""
    x, comps, brain, label = _case()
    energy = np.stack([~label.astype(bool) * 1.0, label * 9.0 + 0.01])  # class 1's evidence inside its region
    q = quality.assess(x, comps.sum(0), MODS, label=label, classes={1: "tumour"}, brain=brain, code_energy=energy)
    assert q["code_localisation"]["per_class"]["tumour"]["localisation_ratio"] == pytest.approx(901.0)
    assert q["faithful"] and "code energy localisation: tumour 901" in "\n".join(quality.summary(q))
    spread = quality.assess(x, comps.sum(0), MODS, label=label, classes={1: "tumour"}, brain=brain,
                            code_energy=np.ones_like(energy))
    assert not spread["faithful"] and "code energy: tumour: localisation ratio 1 < 5" in quality.summary(spread)[-1]
    params = [{"layer": "encoder_0.0", "channels": 8, "negative": 0}, {"layer": "encoder_0.1", "channels": 8,
                                                                      "negative": 3},
              {"layer": "decoder_0.0", "channels": 8, "negative": 1}]
    act = quality.shrinkage_activity([0.25, 0.5, 0.9], ["encoder_0.0", "encoder_0.1", "decoder_0.0"], params)
    level = quality.shrinkage_level(act, params, "encoder_0")
    assert level["zeroed_share"] == {"encoder_0.0": 0.75, "encoder_0.1": 0.5}
    assert (level["negative_thresholds"], level["thresholds"]) == (3, 16) and not level["faithful"]
    assert quality.shrinkage_level(act, params, "decoder_0")["negative_thresholds"] == 1
