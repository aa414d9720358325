"""ML-CSC maths against the paper (seed 000): soft-thresholding, adjoint dictionaries, eq. 7, eq. 2-4."""
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsesight.models import build
from sparsesight.models.mlcsc import MLCSC
from sparsesight.ops import soft_threshold, soft_threshold_nonneg


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in double precision; restored for the other test modules."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_soft_threshold_closed_form():
    z = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.2, 1.0, 2.5])
    lam = 0.75
    expect = [-2.25, -0.25, 0.0, 0.0, 0.0, 0.25, 1.75]
    assert torch.allclose(soft_threshold(z, lam), torch.tensor(expect))
    assert torch.allclose(soft_threshold_nonneg(z, lam), torch.tensor([0, 0, 0, 0, 0, 0.25, 1.75]))
    # the prox of lam|.|: argmin_u 0.5 (u - z)^2 + lam |u| on a fine grid
    u = torch.linspace(-4, 4, 80001)
    for zi in z:
        obj = 0.5 * (u - zi) ** 2 + lam * u.abs()
        assert abs(float(u[obj.argmin()]) - float(soft_threshold(zi, lam))) < 1e-3


# --- a direct NumPy implementation of strided grouped convolution and its adjoint -----------------------
def np_conv(s, W, stride, groups):
    """D^T s: out[g*k+o, z] = sum_{i, t} W[g*k+o, i, t] s[g*ci+i, stride*z + t - 1] (zero padding 1)."""
    out_sp = [(n + 2 - 3) // stride + 1 for n in s.shape[1:]]
    sp_pad = np.pad(s, [(0, 0)] + [(1, 1)] * 3)
    out = np.zeros((W.shape[0], *out_sp))
    for o, i, i_sig, tap, window in _taps(W, groups, stride, out_sp):
        out[o] += W[(o, i, *tap)] * sp_pad[(i_sig, *window)]
    return out


def np_conv_T(gamma, W, stride, groups, out_sp):
    """D gamma, the exact adjoint of np_conv (scatter-add of every tap)."""
    out = np.zeros((groups * W.shape[1], *[n + 2 for n in out_sp]))
    for o, i, i_sig, tap, window in _taps(W, groups, stride, gamma.shape[1:]):
        out[(i_sig, *window)] += W[(o, i, *tap)] * gamma[o]
    return out[:, 1:-1, 1:-1, 1:-1]


def _taps(W, groups, stride, code_sp):
    """For every grouped connection: code channel o, its kernel's input index i, the signal channel g*ci + i,
    the kernel tap and the (padded) signal window that tap touches over the code grid code_sp."""
    oc, ci = W.shape[0] // groups, W.shape[1]
    for o in range(W.shape[0]):
        g = o // oc
        for i in range(ci):
            for tap in np.ndindex(3, 3, 3):
                yield o, i, g * ci + i, tap, tuple(slice(t, t + stride * n, stride) for t, n in zip(tap, code_sp))


def relu(v):
    return np.maximum(v, 0)


def np_ml_ista_step(model, x, gamma_L, lam0):
    """Eq. 7 for L layers with the paper's marginal residuals xhat_c^(i) = x^(i) - sum_{c'!=c} Phi_c'^(i) g_0,c'."""
    m, n = model.m, model.n
    Ws = [model.Phi.weight.detach().numpy()] + [D.weight.detach().numpy() for D in model.D]
    strides = [model.Phi.stride] + [D.stride for D in model.D]
    sizes = [list(x.shape[1:])]
    for s in strides:
        sizes.append([v // s for v in sizes[-1]])
    # synthesis g_{l-1} = D_l g_l
    g = [None] * 4
    g[3] = gamma_L
    for l in (3, 2, 1):
        g[l - 1] = np_conv_T(g[l], Ws[l], strides[l], m, sizes[l])
    comps = np_conv_T(g[0], Ws[0], strides[0], m, sizes[0]).reshape(m, n, *sizes[0])
    mu0, lam_l, mu_l = (model.mu0.detach().numpy(), model.lam.detach().numpy(), model.mu.detach().numpy())
    a = [model.Phi.code_ch] + [D.code_ch for D in model.D]
    h0 = np.zeros_like(g[0])
    for c in range(m):
        xhat_c = x - (comps.sum(0) - comps[c])
        sel = slice(c * a[0], (c + 1) * a[0])
        res = np.zeros((m * n, *sizes[0]))
        res[c * n:(c + 1) * n] = comps[c] - xhat_c
        grad = np_conv(res, Ws[0], strides[0], m)[sel]
        h0[sel] = relu(g[0][sel] - mu0[c] * grad - mu0[c] * float(lam0[c]))
    h = [h0]
    for l in (1, 2, 3):
        diff = g[l - 1] - h[l - 1]
        grad = np_conv(diff, Ws[l], strides[l], m)
        hl = np.zeros_like(g[l])
        for c in range(m):
            sel = slice(c * a[l], (c + 1) * a[l])
            hl[sel] = relu(g[l][sel] - mu_l[l - 1, c] * grad[sel] - mu_l[l - 1, c] * lam_l[l - 1, c])
        h.append(hl)
    return h


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = MLCSC(design=1, in_channels=2, num_classes=3, atoms=[2, 3, 2, 2], strides=[2, 1, 2, 1], T=2, M=1)
    with torch.no_grad():  # move the learned scalars away from their identical initial values
        model.mu0.uniform_(0.5, 1.2)
        model.lam_min.uniform_(0.0, 0.2)
        model.lam.uniform_(-0.05, 0.1)
        model.mu.uniform_(0.6, 1.1)
    return model


def test_dictionary_adjoint(tiny):
    """<D^T s, g> = <s, D g>: the synthesis (transposed conv) is the exact adjoint of the analysis (conv)."""
    for D in [tiny.Phi, *tiny.D]:
        s = torch.randn(1, D.groups * D.sig_ch, 8, 8, 8)
        gcode = torch.randn_like(D.T(s))
        assert torch.allclose((D.T(s) * gcode).sum(), (s * D(gcode)).sum(), rtol=1e-10)


def test_numpy_conv_matches_torch(tiny):
    D = tiny.D[1]
    s = torch.randn(1, D.groups * D.sig_ch, 4, 4, 4)
    assert np.allclose(np_conv(s[0].numpy(), D.weight.detach().numpy(), D.stride, D.groups), D.T(s)[0].detach().numpy())


def test_jf_ml_ista_step_matches_numpy(tiny):
    """One merged JF-ML-ISTA step (eq. 7, L = 3) equals a direct NumPy implementation of the equation."""
    x = torch.randn(1, 2, 8, 8, 8)
    gamma_L = torch.rand(1, 3 * 2, 2, 2, 2)
    lam0 = tiny.lam_schedule(0)
    h = tiny.ml_ista_step(x, gamma_L, lam0)
    h_np = np_ml_ista_step(tiny, x[0].numpy(), gamma_L[0].numpy(), lam0.detach().numpy())
    assert len(h) == 4
    for a, b in zip(h, h_np):
        assert np.allclose(a[0].detach().numpy(), b, atol=1e-10)
    assert any(float(v.detach().abs().sum()) > 0 for v in h)  # not a trivially zero comparison


def test_first_step_from_zero_is_layered_soft_thresholding(tiny):
    """From gamma_L = 0 the step is the layered forward pass ReLU(mu D^T ... - mu lam) of a CNN (Table I)."""
    x = torch.randn(1, 2, 8, 8, 8)
    lam0 = tiny.lam_schedule(0)
    h = tiny.ml_ista_step(x, torch.zeros(1, 6, 2, 2, 2), lam0)
    h_none = tiny.ml_ista_step(x, None, lam0)  # the shortcut for gamma_L = 0 used by codes()
    assert all(torch.allclose(a, b) for a, b in zip(h, h_none))
    a = tiny._per_channel
    z = torch.relu(a(tiny.mu0, 2) * tiny.Phi.T(x.repeat(1, 3, 1, 1, 1)) - a(tiny.mu0 * lam0, 2))
    assert torch.allclose(h[0], z)
    for l, D in enumerate(tiny.D):
        z = torch.relu(a(tiny.mu[l], D.code_ch) * D.T(z) - a(tiny.mu[l] * tiny.lam[l], D.code_ch))
        assert torch.allclose(h[l + 1], z)


def test_threshold_schedule_decreases_to_lam_min(tiny):
    lams = [tiny.lam_schedule(t) for t in range(tiny.config["T"])]
    assert torch.allclose(lams[0], tiny.config["rho"] * tiny.lam_min)
    assert torch.allclose(lams[-1], tiny.lam_min)


def test_components_sum_to_reconstruction_and_logits_decompose(tiny):
    """Sum_c Phi_c^(i) gamma_c is the synthesis whose residual eq. 7 uses; logits = sum of contributions + b."""
    x = torch.randn(2, 2, 12, 8, 16)  # batch > 1 and unequal sides: channels-last layouts must not break views
    out = tiny.interpret(x)
    gamma_L = tiny.codes(tiny._pad(x)[0])[-1]
    g0 = tiny.synthesis(gamma_L)[0]
    recon = tiny.Phi(g0).reshape(2, 3, 2, 12, 8, 16).sum(1)
    assert out["components"].shape == (2, 3, 2, 12, 8, 16)
    assert torch.allclose(out["components"].sum(1), out["reconstruction"])
    assert torch.allclose(out["reconstruction"], recon)
    assert torch.allclose(out["residual_energy"], ((x - recon) ** 2).sum(1))
    logits = tiny(x)
    assert torch.allclose(out["logits"], logits, atol=1e-10)
    assert torch.allclose(out["logit_contributions"].sum(2) + tiny.classifier.bias, logits, atol=1e-10)
    assert out["sparsity"].shape == (4, 3)
    assert ((out["sparsity"] >= 0) & (out["sparsity"] <= 1)).all()


def test_classifier_shared_by_classes(tiny):
    """Section V-B: one 1x1x1 classifier for all classes; permuting class codes permutes the logits."""
    g = torch.randn(1, 3 * 2, 4, 4, 4)
    perm = [2, 0, 1]
    gp = g.view(1, 3, 2, 4, 4, 4)[:, perm].reshape(1, 6, 4, 4, 4)
    assert torch.allclose(tiny.classify(gp), tiny.classify(g)[:, perm])
    assert sum(p.numel() for p in tiny.classifier.parameters()) == 2 + 1


def test_parameter_table_flags_negative_thresholds(tiny):
    with torch.no_grad():
        tiny.lam[1, 0] = -0.004  # as Table III's HBT row
        tiny.lam[:, 1:] = tiny.lam[:, 1:].abs()
    rows = tiny.parameter_table()
    assert len(rows) == 3 and set(rows[0]) >= {"lam_min_c", "mu_c", "lam_c1", "mu_c1", "lam_c3", "mu_c3"}
    assert rows[0]["consistent"] is False and "lam_c2" in rows[0]["negative"]
    assert all(r["consistent"] for r in rows[1:])


def test_forward_shapes_odd_sizes_and_gradients():
    model = build("mlcsc", {"atoms": [2, 2, 2, 2]})
    x = torch.randn(2, 4, 13, 10, 9, dtype=torch.float64, requires_grad=True)
    model = model.double()
    y = model(x)
    assert y.shape == (2, 4, 13, 10, 9)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="unknown MLCSC config"):
        MLCSC(layers=4)


def test_two_sided_soft_threshold_variant_runs_and_matches_its_definition():
    """nonneg=False: h_0 of the first step is S_{mu lam}(mu Phi^T x) with the two-sided soft-threshold."""
    torch.manual_seed(1)
    model = MLCSC(design=1, in_channels=2, num_classes=2, atoms=[2, 2, 2, 2], strides=[2, 1, 1, 1], nonneg=False)
    x = torch.randn(1, 2, 8, 8, 8)
    lam0 = model.lam_schedule(0)
    h = model.ml_ista_step(x, None, lam0)
    mu = model._per_channel(model.mu0, 2)
    assert torch.allclose(h[0], soft_threshold(mu * model.Phi.T_shared(x), model._per_channel(model.mu0 * lam0, 2)))
    assert (h[0] < 0).any()  # negative coefficients survive, unlike ReLU(z - lam)
    assert model(x).shape == (1, 2, 8, 8, 8)


def test_inference_codes_equal_the_autograd_path():
    """interpret() runs the unrolled steps in place under no_grad; the codes must equal those of the autograd
    path bit for bit (the shipped weights: design 2, signed gamma_c, two-sided soft threshold)."""
    from sparsesight.checkpoint import load

    torch.set_default_dtype(torch.float32)  # the shipped weights' precision (the module fixture restores it)
    model = load(Path(__file__).parents[2] / "apps" / "sparsesight" / "pretrained" / "mlcsc.pt")[0].eval()
    x, _ = model._pad(torch.randn(1, 4, 20, 24, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float32))
    with torch.no_grad():
        fast = model.codes(x)
    with torch.enable_grad():
        ref = model.codes(x)
    assert len(fast) == len(ref) and all(torch.equal(a, b.detach()) for a, b in zip(fast, ref))
    z, lam = torch.randn(3, 5, 7), torch.rand(3, 1, 1)
    assert torch.equal(soft_threshold(z, lam), torch.sign(z) * torch.relu(torch.abs(z) - lam))
    lam[1] = -0.5  # a negative threshold amplifies, as the formula says
    assert torch.equal(soft_threshold(z, lam), torch.sign(z) * torch.relu(torch.abs(z) - lam))
