"""ML-CSC design 2 (models/mlcsc.py, models/dictionary.py; issue 16): a sparse-coding model kept a real one.

Adjoint pairs, ||D|| = 1, lam >= 0 and mu ||D||^2 <= 1 whatever the raw parameters, no lattice in the synthesis,
class evidence that can only be positive, the objective's terms, and old (design 1) checkpoints."""
import io

import numpy as np
import pytest
import torch

from sparsesight import checkpoint
from sparsesight.errors import InvalidInput
from sparsesight.explain import quality
from sparsesight.models.dictionary import ResizeDictionary, TransposedDictionary, upsample2, upsample2_adjoint
from sparsesight.models.mlcsc import MLCSC, stored_config

SMALL = {"atoms": [2, 3, 3, 4], "T": 2, "M": 1}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MLCSC(**SMALL).eval()


def _inner(a, b):
    return float((a.detach().double() * b.detach().double()).sum())


def test_upsampling_adjoint_and_its_gradient():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 5, 4, 6), torch.randn(2, 3, 10, 8, 12)
    assert _inner(upsample2(a), b) == pytest.approx(_inner(a, upsample2_adjoint(b)), rel=1e-5)
    # the adjoint is differentiable (training back-propagates through D^T): its gradient is U
    b.requires_grad_(True)
    upsample2_adjoint(b).mul(a).sum().backward()
    assert torch.allclose(b.grad, upsample2(a), atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_resize_dictionary_is_an_adjoint_pair_with_unit_norm(stride):
    torch.manual_seed(0)
    d = ResizeDictionary(3, 2, 4, 3, stride, probe=8)
    w = d.kernel()
    g = torch.randn(1, 12, 6, 5, 7)
    s = torch.randn_like(d(g, w=w))
    assert _inner(d(g, w=w), s) == pytest.approx(_inner(g, d.T(s, w=w)), rel=1e-4)
    # normalised by its power-iteration estimate: the largest class norm is 1
    from sparsesight.models.dictionary import operator_norm

    assert max(operator_norm(d, size=8, iters=60, groups_apart=True)) == pytest.approx(1.0, abs=0.02)


def test_settled_norm_finds_the_class_that_overtook_the_tracked_one():
    """Training takes one power iteration per step: when another class's kernel grows past the class the probe
    tracks, the estimate lags and the normalised ||D|| > 1 (the shipped model had mu ||D||^2 up to 1.18);
    settle_norms restarts from the probe mixed with noise and converges to the largest class norm."""
    from sparsesight.models.dictionary import operator_norm, settle_norms

    torch.manual_seed(0)
    d = ResizeDictionary(3, 2, 4, 3, 2, probe=8)
    d.refresh_norm(100)  # probe converged on the initial largest class
    per_class = operator_norm(d, size=8, iters=60, groups_apart=True)
    weakest = int(np.argmin(per_class))
    with torch.no_grad():  # the weakest class's kernel grows to 1.5x the largest: as a training update would
        d.raw[weakest * 4:(weakest + 1) * 4] *= 1.5 * max(per_class) / per_class[weakest]
    d.refresh_norm(1)
    assert max(operator_norm(d, size=8, iters=60, groups_apart=True)) > 1.2  # the lag
    assert settle_norms(torch.nn.Sequential(d)) == 1
    assert max(operator_norm(d, size=8, iters=60, groups_apart=True)) == pytest.approx(1.0, abs=0.02)


def test_no_lattice_in_the_synthesis():
    """D_1 of design 2 (interpolation after a stride-1 convolution) puts almost no energy on the stride-2 lattice
    frequencies; design 1's strided transposed convolution puts a large share there (a checkerboard)."""
    torch.manual_seed(0)
    codes = torch.rand(1, 4, 12, 12, 12)
    new = ResizeDictionary(1, 1, 4, 3, 2)
    old = TransposedDictionary(1, 1, 4, 3, 2)
    with torch.no_grad():
        share_new = quality.lattice_share(new(codes)[0, 0].numpy())
        share_old = quality.lattice_share(old(codes)[0, 0].numpy())
    assert share_new < 0.01 < 0.1 < share_old


def test_thresholds_and_steps_stay_valid_whatever_the_raw_parameters(model):
    with torch.no_grad():
        for p in (model.lam_min_raw, model.lam_raw):
            p.fill_(-50.0)
        for p in (model.mu0_raw, model.mu_raw):
            p.fill_(50.0)
    p = model.learned()
    assert all(float(v.min()) >= 0 for k, v in p.items() if k.startswith("lam"))
    assert all(0 < float(v.min()) and float(v.max()) <= 0.98 + 1e-6 for k, v in p.items() if k.startswith("mu"))
    q = quality.mlcsc_parameter_check(model)
    assert q["negative_thresholds"] == [] and q["max_step_norm"] <= 1.0, q["flags"]
    assert all(r["consistent"] for r in model.parameter_table())


def test_class_evidence_is_non_negative(model):
    """w = softplus(.) >= 0 and codes >= 0: raising class c's deepest code raises logit c only."""
    w, _ = model.readout()
    assert float(w.min()) >= 0
    K = model.D[-1].code_ch
    g = torch.rand(1, model.m * K, 3, 3, 3)
    bump = torch.zeros_like(g)
    bump[:, 2 * K:3 * K] = 1.0  # class 2
    d = model.classify(g + bump) - model.classify(g)
    assert float(d[:, 2].min()) > 0 and float(d[:, [0, 1, 3]].abs().max()) < 1e-6


def test_components_sum_to_the_reconstruction_and_contributions_to_the_logits(model):
    torch.manual_seed(1)
    x = torch.randn(1, 4, 13, 10, 9)
    out = model.interpret(x)
    assert out["components"].shape == (1, 4, 4, 13, 10, 9) and out["components"].dtype == torch.float32
    assert torch.allclose(out["components"].sum(1), out["reconstruction"], atol=1e-5)
    assert torch.allclose(out["logit_contributions"].sum(2) + model.readout()[1].view(1, -1, 1, 1, 1),
                          out["logits"], atol=1e-4)
    assert len(out["step_residuals"]) == model.config["T"] * model.config["M"]
    dec = model(x, decompose=True)
    assert torch.allclose(dec["reconstruction"], out["reconstruction"], atol=1e-5)


def test_objective_terms():
    """loss = DiceCE + beta ||x - x^||^2_B / ||x||^2 + eta sum_c ||component_c||^2 outside class c in B / ||x||^2."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8, 8)
    x[..., :2] = 0  # outside the brain
    y = torch.randint(0, 4, (1, 1, 8, 8, 8))
    plain = MLCSC(**SMALL, beta=0.0, eta=0.0)
    both = MLCSC(**SMALL, beta=2.0, eta=3.0)
    both.load_state_dict(plain.state_dict())
    dec = plain(x, decompose=True)
    brain = (x != 0).any(1)
    energy = (x ** 2).sum()
    rec = (((dec["reconstruction"] - x) ** 2).sum(1) * brain).sum() / energy
    loc = sum((((dec["components"][:, c] ** 2).sum(1)) * (brain & (y[:, 0] != c))).sum() for c in (1, 2, 3)) / energy
    seg = DiceCELoss(to_onehot_y=True, softmax=True)(dec["logits"], y)
    assert float(plain.loss(plain, x, y)) == pytest.approx(float(seg), rel=1e-5)
    assert float(both.loss(both, x, y)) == pytest.approx(float(seg + 2 * rec + 3 * loc), rel=1e-4)
    both.loss(both, x, y).backward()  # differentiable through the normalised dictionaries
    assert both.Phi.raw.grad is not None and float(both.Phi.raw.grad.abs().sum()) > 0


def test_a_checkpoint_without_design_is_design_1(tmp_path):
    torch.manual_seed(0)
    old = MLCSC(design=1, atoms=[2, 2, 2, 2])
    config = {k: v for k, v in old.config.items() if k not in ("design", "beta", "eta", "phi_kernel_size")}
    assert stored_config(config)["design"] == 1
    checkpoint.save(tmp_path / "old.pt", old, "mlcsc", config)
    loaded, meta = checkpoint.load(tmp_path / "old.pt")
    assert loaded.design == 1 and "design" not in meta["config"]
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), old.eval()(x))
    q = quality.mlcsc_parameter_check(loaded)  # the old model's own numbers
    assert q["negative_thresholds"] == [] and "Phi (joint)" in q["operator_norms"]


def test_a_checkpoint_whose_config_does_not_fit_is_refused():
    """Design-2 weights under a design-1 config (or the reverse): InvalidInput naming the mismatch, never a crash."""
    new = MLCSC(atoms=[2, 2, 2, 2])
    buf = io.BytesIO()
    torch.save({"model": "mlcsc", "config": {"atoms": [2, 2, 2, 2]}, "state_dict": new.state_dict()}, buf)
    with pytest.raises(InvalidInput, match="does not fit|missing|unexpected"):
        checkpoint.load_payload(buf.getvalue())
    with pytest.raises(InvalidInput, match="design"):
        checkpoint.load_payload(_payload({"design": 3}, new))


def _payload(config, net):
    buf = io.BytesIO()
    torch.save({"model": "mlcsc", "config": config, "state_dict": net.state_dict()}, buf)
    return buf.getvalue()


def test_design_2_refuses_strided_phi():
    with pytest.raises(ValueError, match="strides"):
        MLCSC(strides=[2, 2, 1, 1])


def test_parameter_table_and_sparsity_layers(model):
    out = model.interpret(torch.randn(1, 4, 8, 8, 8), contributions=False)
    assert out["sparsity"].shape == (4, 4) and np.isfinite(out["step_residuals"].numpy()).all()
    assert {"lam_min_c", "mu_c", "lam_c3", "mu_c3"} <= set(model.parameter_table()[0])


@pytest.mark.parametrize("signed", [True, False])
def test_pointwise_phi_step_equals_the_synthesis_analysis_path(signed, monkeypatch):
    """With a 1x1x1 Phi the layer-0 step g_0 - mu Phi^T (Phi g_0 - x) runs as g_0 M + C (phi_gram): the same codes,
    logits and gradients as the convolutions it replaces (eq. 7), in both threshold variants."""
    torch.manual_seed(2)
    model = MLCSC(**{**SMALL, "M": 2, "signed_gamma_c": signed}).double().eval()  # eval: no norm refresh
    with torch.no_grad():  # away from the identical initial scalars
        model.mu0_raw.uniform_(-1, 2)
        model.lam_min_raw.uniform_(-3, 0)
    x = torch.randn(2, 4, 11, 8, 9, dtype=torch.float64)
    assert model.pointwise_phi

    def run():
        model.zero_grad()
        out = model(x, decompose=True)
        (out["logits"].square().sum() + out["reconstruction"].square().sum()).backward()
        with torch.no_grad():
            codes = model.codes(model._pad(x)[0])
        return out, codes, {n: p.grad.clone() for n, p in model.named_parameters()}

    fused, fused_codes, fused_grads = run()
    monkeypatch.setattr(MLCSC, "pointwise_phi", property(lambda self: False))
    ref, ref_codes, ref_grads = run()
    for k in ("logits", "components"):
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-10, atol=1e-10)
    for a, b in zip(fused_codes, ref_codes):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert (fused_codes[0] < 0).any() == signed and (fused_codes[0] != 0).any()
    for n in ref_grads:
        torch.testing.assert_close(fused_grads[n], ref_grads[n], rtol=1e-8, atol=1e-10)
