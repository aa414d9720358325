"""DW-MRI protocol, analytic signal model, dictionary, simulator and phantom (data/diffusion/)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sparsesight.data import diffusion as dif
from sparsesight.errors import InvalidInput


@pytest.fixture(scope="module")
def hcp():
    return dif.hcp_mgh_protocol()


def test_hcp_mgh_protocol_shells_and_gradients(hcp):
    assert hcp.m == 552
    counts = {b: int((hcp.bvals == b).sum()) for b in (0, 1000, 3000, 5000, 10000)}
    assert counts == {0: 40, 1000: 64, 3000: 64, 5000: 128, 10000: 256}
    # b = γ² G² δ² (Δ - δ/3) with Δ = 21.8 ms, δ = 12.9 ms gives the scanner's 69.3, 120, 154.9, 219 mT/m
    g = {b: hcp.gradient_strength[hcp.bvals == b][0] * 1e3 for b in (1000, 3000, 5000, 10000)}
    assert g[1000] == pytest.approx(69.3, abs=0.1)
    assert g[3000] == pytest.approx(120.0, abs=0.1)
    assert g[5000] == pytest.approx(154.9, abs=0.1)
    assert g[10000] == pytest.approx(219.0, abs=0.2)
    dw = hcp.bvecs[hcp.bvals > 0]
    np.testing.assert_allclose(np.linalg.norm(dw, axis=1), 1.0, atol=1e-12)
    # directions of a shell are spread: no two closer than 5 degrees (antipodal symmetric)
    shell = hcp.bvecs[hcp.bvals == 3000]
    cos = np.abs(shell @ shell.T) - 2 * np.eye(len(shell))
    assert cos.max() < np.cos(np.deg2rad(5))


def test_gradient_table_round_trip_fsl_and_dipy(tmp_path, hcp):
    bval, bvec = dif.write_bvals_bvecs(hcp, tmp_path / "dwi")
    assert bvec.read_text().count("\n") == 3  # FSL: 3 rows
    back = dif.read_bvals_bvecs(bval, bvec, hcp.big_delta, hcp.small_delta)
    np.testing.assert_array_equal(back.bvals, hcp.bvals)
    np.testing.assert_allclose(back.bvecs, hcp.bvecs, atol=1e-6)
    gtab = back.gtab()
    np.testing.assert_array_equal(gtab.b0s_mask, hcp.bvals == 0)
    assert gtab.big_delta == pytest.approx(21.8) and gtab.small_delta == pytest.approx(12.9)
    cfg = dif.Protocol.from_config(hcp.to_config())
    np.testing.assert_allclose(cfg.bvecs, hcp.bvecs, atol=1e-6)


@pytest.mark.parametrize("bvals,bvecs,n,reason", [
    ([0, 1000, 1000], [[0, 0, 0], [1, 0, 0]], None, "same volumes"),
    ([1000, 1000], [[1, 0, 0], [0, 1, 0]], None, "b = 0"),
    ([0, 1000], [[0, 0, 0], [1, 0, 0]], 5, "5 volumes"),
    ([0, 0], [[0, 0, 0], [0, 0, 0]], None, "diffusion-weighted"),
    ([0, -5], [[0, 0, 0], [1, 0, 0]], None, ">= 0"),
])
def test_bad_gradient_tables_are_refused(bvals, bvecs, n, reason):
    with pytest.raises(InvalidInput, match=reason):
        dif.check_gradients(np.asarray(bvals, float), np.asarray(bvecs, float), n_volumes=n)


def test_bessel_roots_give_neumans_constant():
    # Σ_m 1 / (x_m⁴ (x_m² - 1)) = 7/192 over the roots of J1' (the long-pulse limit of the GPA sum)
    x = dif.bessel_j1p_roots(400)
    assert x[0] == pytest.approx(1.841184, abs=1e-6)
    assert (1 / (x**4 * (x**2 - 1))).sum() == pytest.approx(7 / 192, rel=1e-7)


def test_gpa_cylinder_reduces_to_neuman_for_thin_axons(hcp):
    # D δ >> r²: ln E⊥ -> -7 γ² G² δ r⁴ / (48 D)
    for r in (0.3e-6, 0.6e-6):
        gpa = dif.log_restricted_perp(r, 0.219, hcp.big_delta, hcp.small_delta)
        neu = dif.log_neuman_long_pulse(r, 0.219, hcp.small_delta)
        assert gpa == pytest.approx(neu, rel=0.02)
    # quadratic in G (what the dictionary's rotation relies on)
    a = dif.log_restricted_perp(3e-6, 0.1, hcp.big_delta, hcp.small_delta)
    b = dif.log_restricted_perp(3e-6, 0.2, hcp.big_delta, hcp.small_delta)
    assert b == pytest.approx(4 * a, rel=1e-12)


def test_gpa_cylinder_limits_zero_and_free(hcp):
    b_si = 1000e6
    g = 0.0693
    assert abs(dif.log_restricted_perp(1e-9, g, hcp.big_delta, hcp.small_delta)) < 1e-12  # r -> 0: no attenuation
    free = -b_si * dif.D_AXON
    e20 = dif.log_restricted_perp(20e-6, g, hcp.big_delta, hcp.small_delta, n_roots=2000)
    e100 = dif.log_restricted_perp(100e-6, g, hcp.big_delta, hcp.small_delta, n_roots=2000)
    assert free < e100 < e20 < 0  # restriction lowers attenuation; wide cylinders approach free diffusion
    assert e100 == pytest.approx(free, rel=0.08)
    # monotone in r
    rs = np.linspace(0.4e-6, 7e-6, 12)
    e = dif.log_restricted_perp(rs, 0.219, hcp.big_delta, hcp.small_delta)
    assert (np.diff(e) < 0).all()


def test_signal_model_limits(hcp):
    u = np.array([0.3, -0.5, 0.8])
    u /= np.linalg.norm(u)
    b = hcp.b_si
    c2 = (hcp.bvecs @ u) ** 2
    # f -> 0: only extra-axonal water, D⊥ = D: free diffusion, isotropic
    np.testing.assert_allclose(dif.single_population_signal(hcp, u, 3.0, 0.0), np.exp(-b * dif.D_AXON), rtol=1e-12)
    # r -> 0, f = 1: a stick exp(-b D cos²θ)
    np.testing.assert_allclose(dif.single_population_signal(hcp, u, 1e-4, 1.0), np.exp(-b * dif.D_AXON * c2),
                               rtol=1e-9, atol=1e-15)
    # b = 0 gives S0 = 1; signals decay with b along the fibre
    s = dif.single_population_signal(hcp, u, 2.0, 0.6)
    np.testing.assert_allclose(s[hcp.bvals == 0], 1.0)
    assert (s > 0).all() and (s <= 1 + 1e-12).all()
    np.testing.assert_allclose(dif.free_water_signal(hcp), np.exp(-b * 3e-9))


def test_dictionary_columns_are_the_signal_model_and_rotate_with_the_protocol():
    p = dif.hcp_mgh_protocol(8)
    g = dif.small_grid(5, 4)
    u = np.array([0.0, 0.6, 0.8])
    c = dif.sub_dictionary(p, u, g)
    assert c.shape == (p.m, 20)
    for j in (0, 7, 19):
        np.testing.assert_allclose(c[:, j], dif.single_population_signal(p, u, g.r_of_atom[j], g.f_of_atom[j]),
                                   rtol=1e-12)
    # rotating the gradient directions and the fibre together leaves every fingerprint unchanged
    rot = Rotation.from_euler("xyz", [30, -50, 70], degrees=True).as_matrix()
    pr = dif.Protocol(p.bvals, p.bvecs @ rot.T, p.big_delta, p.small_delta)
    np.testing.assert_allclose(dif.sub_dictionary(pr, rot @ u, g), c, rtol=1e-10)
    d = dif.dictionary(p, [u, [1, 0, 0]], g)
    assert d.shape == (p.m, 41)
    np.testing.assert_allclose(d[:, -1], dif.free_water_signal(p))


def test_simulator_ranges_and_noise():
    p = dif.hcp_mgh_protocol(4)
    s = dif.simulate(p, 400, None, 0)
    np.testing.assert_allclose(s["nu"].sum(1) + s["nu_fw"], 1.0)
    assert (s["nu"][:, 0] >= s["nu"][:, 1]).all()
    assert s["r"].min() >= 0.4 and s["r"].max() <= 7.0 and s["f"].min() >= 0.21 and s["f"].max() <= 0.87
    cos = np.abs((s["u"][:, 0] * s["u"][:, 1]).sum(1))
    np.testing.assert_allclose(np.rad2deg(np.arccos(np.clip(cos, 0, 1))), s["angle"], atol=1e-6)
    np.testing.assert_allclose(s["signal"][:, p.b0_mask], 1.0)
    # Rician noise at SNR 50: the b=0 values scatter with σ = 1/50
    n = dif.simulate(p, 2000, 50, 1)
    r = dif.rician(np.ones(20000), 50, np.random.default_rng(2))
    assert np.std(r) == pytest.approx(0.02, rel=0.05)
    assert np.mean(r) == pytest.approx(np.sqrt(1 + 0.02**2), abs=1e-3)  # E|S + n| for S >> σ
    assert np.abs(n["signal"] - dif.normalise_s0(n["clean"], p)).std() > 0.01


def test_dwi_phantom_has_crossing_white_matter(tmp_path):
    p = dif.hcp_mgh_protocol(8)
    paths = dif.write_dwi_phantom(tmp_path, p, downsample=8, slices=1, snr=30, seed=1)
    import nibabel as nib

    img = nib.load(paths["dwi"])
    assert img.ndim == 4 and img.shape[3] == p.m
    back = dif.read_protocol(paths["dwi"])  # bval/bvec and the timing in the JSON sidecar
    np.testing.assert_array_equal(back.bvals, p.bvals)
    assert back.shell_table() == p.shell_table() and back.source["b_unit"] == "s/mm2"
    np.testing.assert_allclose(back.bvecs, p.bvecs, atol=1e-5)
    mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
    nu = np.asarray(nib.load(paths["nu"]).dataobj)
    assert mask.sum() > 20
    assert (nu[mask][:, 1] > 0.3 * nu[mask].sum(1)).any()  # a crossing region with a sizeable second population
    data = np.asarray(img.dataobj)
    s0 = data[..., p.b0_mask].mean(-1)
    assert s0[mask].mean() > 500  # S0 = 1000 in white matter
    assert np.median(s0[s0 < 100]) < 100  # background: Rician noise floor only
    # in white matter, the diffusion-weighted signal at b = 10000 is well below S0 but above the noise
    dw = data[..., p.bvals == 10000].mean(-1)
    assert 0.05 < np.median(dw[mask] / s0[mask]) < 0.6
