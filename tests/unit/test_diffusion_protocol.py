"""The protocol as data (data/diffusion/protocol_files.py): FSL / MRtrix / JSON sidecars, units, required
timing, refusals; the radius resolution limit (sensitivity.py); the simplex projection of the fractions."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from sparsesight.data import diffusion as dif
from sparsesight.data.diffusion import protocol_files as pf
from sparsesight.data.diffusion import sensitivity as sens
from sparsesight.errors import InvalidInput
from sparsesight.models import microstructure as ms


def _table(b_max=6000.0):
    """A scanner-like multi-shell table: 6 b=0, 30 at b=1000, 30 at b_max/2, 30 at b_max."""
    bvals = np.r_[np.zeros(6), np.full(30, 1000.0), np.full(30, b_max / 2), np.full(30, b_max)]
    dirs = dif.protocol.hemisphere_directions(30)
    bvecs = np.r_[np.zeros((6, 3)), dirs, dirs, dirs]
    return bvals, bvecs


def _image(tmp_path, m, name="dwi"):
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2, m), np.float32), np.eye(4)), str(path))
    return path


def test_fsl_files_and_json_sidecar_with_per_shell_timing(tmp_path):
    bvals, bvecs = _table()
    img = _image(tmp_path, len(bvals))
    np.savetxt(tmp_path / "dwi.bval", bvals[None], fmt="%g")
    np.savetxt(tmp_path / "dwi.bvec", bvecs.T, fmt="%.6f")
    (tmp_path / "dwi.json").write_text(json.dumps({
        "DiffusionShells": [1000, 3000, 6000], "DiffusionGradientSeparation": [0.030, 0.035, 0.040],
        "DiffusionGradientDuration": [0.010, 0.012, 0.015], "EchoTime": 0.08}))
    p = dif.read_protocol(img, n_volumes=len(bvals))
    assert p.source["b_unit"] == "s/mm2" and p.source["timing_unit"] == "s" and not p.uniform_timing
    np.testing.assert_allclose(p.big_deltas[p.bvals == 6000], 0.040)
    np.testing.assert_allclose(p.small_deltas[p.bvals == 3000], 0.012)
    # b = γ² G² δ² (Δ - δ/3) holds for every volume with its own shell's timing
    b = dif.GAMMA**2 * p.gradient_strength**2 * p.small_deltas**2 * (p.big_deltas - p.small_deltas / 3)
    np.testing.assert_allclose(b, p.b_si, rtol=1e-12)
    rows = {r["b"]: r for r in p.shell_table()}
    assert rows[6000.0]["big_delta_ms"] == 40.0 and rows[1000.0]["volumes"] == 30
    # per-volume timing gives each shell the signal of a protocol with that shell's timing alone
    u, sel = np.array([0.0, 0.6, 0.8]), p.bvals == 6000
    uni = dif.Protocol(np.r_[0.0, p.bvals[sel]], np.r_[np.zeros((1, 3)), p.bvecs[sel]], 0.040, 0.015)
    np.testing.assert_allclose(dif.single_population_signal(p, u, 3.0, 0.6)[sel],
                               dif.single_population_signal(uni, u, 3.0, 0.6)[1:], rtol=1e-12)
    # the sidecar round trip keeps the per-shell timing; the {b: value} form reads the same
    pf.write_sidecar(p, tmp_path / "dwi.json")
    assert dif.read_protocol(img).shell_table() == p.shell_table()
    q = dif.read_protocol(img, big_delta={"1000": 30, "3000": 35, "6000": 40},
                          small_delta={"1000": 10, "3000": 12, "6000": 15})  # ms, detected
    assert q.hash == p.hash and q.source["timing_unit"] == "ms"


def test_mrtrix_btable_and_grad_option(tmp_path):
    bvals, bvecs = _table()
    img = _image(tmp_path, len(bvals), "mr")
    rows = "\n".join(f"{x:.6f} {y:.6f} {z:.6f} {b:g}" for (x, y, z), b in zip(bvecs, bvals))
    (tmp_path / "mr.b").write_text("# command_history: dwigradcheck\n" + rows + "\n")
    p = dif.read_protocol(img, big_delta=0.0218, small_delta=0.0129)
    np.testing.assert_array_equal(p.bvals, bvals)
    assert "mr.b" in p.source["from"]
    g = dif.read_protocol(None, grad=np.c_[bvecs, bvals], big_delta=21.8, small_delta=12.9)
    assert g.hash == p.hash
    (tmp_path / "bad.b").write_text("1 0 0\n")
    with pytest.raises(InvalidInput, match="4 numbers"):
        pf.read_mrtrix(tmp_path / "bad.b")


@pytest.mark.parametrize("factor,unit", [(1.0, "s/mm2"), (1e6, "s/m2"), (1e-3, "ms/um2")])
def test_b_value_units_are_detected(factor, unit):
    bvals, bvecs = _table()
    p = dif.build_protocol(bvals * factor, bvecs, 0.0218, 0.0129)
    assert p.source["b_unit"] == unit
    np.testing.assert_allclose(p.bvals, bvals, rtol=1e-12)


def test_ambiguous_or_wrong_units_are_refused():
    bvals, bvecs = _table()
    with pytest.raises(InvalidInput, match="unit of the b-values"):
        dif.build_protocol(bvals * 80 / 6000, bvecs, 0.0218, 0.0129)  # largest 80: s/mm² or ms/µm²?
    with pytest.raises(InvalidInput, match="unit of Δ"):
        dif.build_protocol(bvals, bvecs, 0.5, 0.0129)  # 0.5 s or 0.5 ms: neither is a PGSE separation
    # timing in seconds read as ms (the option named): the gradient it implies is refused with its value
    with pytest.raises(InvalidInput, match="T/m, beyond any scanner") as e:
        dif.build_protocol(bvals, bvecs, 0.042, 0.03, timing_unit="ms")
    g = np.sqrt(6000e6 / (dif.GAMMA**2 * 0.03e-3**2 * (0.042e-3 - 0.01e-3)))
    assert f"{g:.3g} T/m" in str(e.value)
    # b in s/m² declared as s/mm²
    with pytest.raises(InvalidInput, match="T/m"):
        dif.build_protocol(bvals * 1e6, bvecs, 0.0218, 0.0129, b_unit="s/mm2")
    with pytest.raises(InvalidInput, match="echo time"):
        dif.build_protocol(bvals, bvecs, 0.0218, 0.0129, echo_time=0.02)


@pytest.mark.parametrize("big,small,shells,reason", [
    (None, 0.0129, None, "DiffusionGradientSeparation"),
    (0.0218, None, None, "DiffusionGradientDuration"),
    ([0.02, 0.03], 0.0129, [1000, 3000], "shell b = 6000"),
    ([0.02, 0.03, 0.04], 0.0129, None, "DiffusionShells"),
])
def test_missing_timing_is_refused_naming_the_field(big, small, shells, reason):
    bvals, bvecs = _table()
    with pytest.raises(InvalidInput, match=reason):
        dif.build_protocol(bvals, bvecs, big, small, shells)
    with pytest.raises(InvalidInput, match="big_delta"):
        dif.Protocol.from_config({"bvals": bvals.tolist(), "bvecs": bvecs.tolist()})


def test_bad_gradient_tables(tmp_path):
    bvals, bvecs = _table()
    with pytest.raises(InvalidInput, match="same volumes"):
        dif.build_protocol(bvals[:-1], bvecs, 0.0218, 0.0129)
    zero = bvecs.copy()
    zero[10] = 0
    with pytest.raises(InvalidInput, match=r"zero gradient direction .*volumes \[10\]"):
        dif.build_protocol(bvals, zero, 0.0218, 0.0129)
    scaled = bvecs.copy()
    scaled[12] *= 0.7
    with pytest.raises(InvalidInput, match=r"unit gradient direction.*\[12\]"):
        dif.build_protocol(bvals, scaled, 0.0218, 0.0129)
    with pytest.raises(InvalidInput, match="volumes"):
        dif.build_protocol(bvals, bvecs, 0.0218, 0.0129, n_volumes=len(bvals) + 1)
    img = _image(tmp_path, len(bvals))
    np.savetxt(tmp_path / "dwi.bval", bvals[None], fmt="%g")
    np.savetxt(tmp_path / "dwi.bvec", bvecs[:-3].T, fmt="%.6f")
    with pytest.raises(InvalidInput, match="bval|bvec"):
        dif.read_protocol(img, big_delta=0.0218, small_delta=0.0129)


def test_radius_limit_is_nilssons_in_the_long_pulse_limit():
    # δ = Δ = 60 ms, small radii: Neuman's regime, where Nilsson's closed form is exact to first order
    sigma = sens.noise_floor(30, 30)
    assert sigma == pytest.approx(1.64 / (30 * 0.5 * np.sqrt(30)))
    for g in (0.04, 0.08, 0.3):
        gpa = sens.radius_limit_gpa(g, 0.06, 0.06, sigma)
        assert gpa == pytest.approx(0.5e6 * sens.nilsson_d_min(g, 0.06, sigma), rel=0.03)
    # stronger gradients resolve smaller radii (r_min ∝ G^-1/2 in that limit)
    assert sens.radius_limit_gpa(0.08, 0.06, 0.06, sigma) / sens.radius_limit_gpa(0.32, 0.06, 0.06, sigma) \
        == pytest.approx(2.0, rel=0.05)


def test_radius_is_resolvable_on_hcp_not_on_a_clinical_b2000_protocol():
    # the README's figures: HCP MGH 1.21 µm at b = 10000; clinical 6 b=0 + 32 x b=1000 + 64 x b=2000,
    # Δ/δ = 45/30 ms (30 mT/m): 3.2 µm
    hcp = dif.radius_sensitivity(dif.hcp_mgh_protocol())
    assert hcp["resolvable"] and hcp["shell_b"] == 10000 and hcp["r_min_um"] == pytest.approx(1.21, abs=0.005)
    bvals = np.r_[np.zeros(6), np.full(32, 1000.0), np.full(64, 2000.0)]
    bvecs = np.r_[np.zeros((6, 3)), dif.protocol.hemisphere_directions(32), dif.protocol.hemisphere_directions(64)]
    p = dif.build_protocol(bvals, bvecs, 0.045, 0.030)
    clinical = dif.radius_sensitivity(p)
    assert p.gradient_strength.max() == pytest.approx(0.0298, abs=1e-4)
    assert not clinical["resolvable"] and clinical["r_min_um"] == pytest.approx(3.2, abs=0.005)
    assert "not resolvable" in clinical["reason"]


def test_cramer_rao_bound_is_reached_by_least_squares_at_high_snr():
    # the bound's maths: at high SNR the nonlinear least-squares estimate is efficient, so its spread over noise
    # draws must match √diag(F⁻¹); and the bound scales as 1/SNR and is infinite where the signal is blind
    from scipy.optimize import least_squares

    protocol = dif.hcp_mgh_protocol(8)
    u = np.array([[[0.0, 0.6, 0.8]]])
    truth = np.array([0.7, 5.0, 0.4])  # ν, r (µm), f; ν_fw = 0.3
    snr = 400.0
    crb = sens.cramer_rao(protocol, u, truth[None, :1], truth[None, 1:2], truth[None, 2:], snr)
    bound = np.array([crb["nu"][0, 0], crb["r"][0, 0], crb["f"][0, 0]])
    twice = sens.cramer_rao(protocol, u, truth[None, :1], truth[None, 1:2], truth[None, 2:], 2 * snr)
    np.testing.assert_allclose(twice["r"], crb["r"] / 2, rtol=1e-9)

    def model(t):
        return t[0] * dif.population_signals(protocol, u[:, 0], t[1:2], t[2:])[0] + \
            (1 - t[0]) * dif.free_water_signal(protocol)

    rng = np.random.default_rng(0)
    clean = model(truth)
    fits = np.array([least_squares(lambda t, y=y: model(t) - y, truth, bounds=([0, 0.1, 0.05], [1, 10, 0.95])).x
                     for y in clean + rng.standard_normal((300, protocol.m)) / snr])
    ratio = fits.std(0) / bound
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio
    blind = sens.cramer_rao(protocol, np.repeat(u, 2, 1), np.array([[1.0, 0.0]]), np.array([[5.0, 3.0]]),
                            np.array([[0.4, 0.4]]), snr)
    # a population with no signal: its radius and packing cannot be told, the other population's still can
    assert np.isinf(blind["r"][0, 1]) and np.isinf(blind["f"][0, 1])
    assert np.isfinite(blind["r"][0, 0]) and np.isfinite(blind["nu"]).all()


@pytest.mark.parametrize("law", ["tortuosity", "mc"])
def test_cramer_rao_jacobian_equals_finite_differences_of_the_model(law):
    # the analytic ∂S/∂ν, ∂S/∂f and the per-timing ∂ln E⊥/∂r against central differences of the full two-population
    # model (population_signals), on a protocol whose shells have different Δ/δ, for either extra-axonal law
    law = dif.extra_law(law)
    base = dif.hcp_mgh_protocol(8)
    timing = np.where(base.bvals > 4000, 30e-3, base.big_deltas), np.where(base.bvals > 4000, 10e-3, base.small_deltas)
    protocol = dif.Protocol(base.bvals, base.bvecs, *timing)
    rng = np.random.default_rng(1)
    n = 5
    u = rng.standard_normal((n, 2, 3))
    nu = np.c_[rng.uniform(0.3, 0.6, n), rng.uniform(0.1, 0.3, n)]
    r, f = rng.uniform(0.5, 6, (n, 2)), rng.uniform(0.3, 0.8, (n, 2))

    def signal(nu, r, f):
        un = u / np.linalg.norm(u, axis=-1, keepdims=True)
        s = sum(nu[:, k, None] * dif.population_signals(protocol, un[:, k], r[:, k], f[:, k], law) for k in range(2))
        return s + (1 - nu.sum(1))[:, None] * dif.free_water_signal(protocol)

    jt = sens.jacobian(protocol, u, nu, r, f, law=law)
    assert jt.shape == (n, 6, protocol.m)
    for i, (name, h) in enumerate((("nu", 1e-6), ("r", 1e-4), ("f", 1e-6))):
        for k in range(2):
            args = {"nu": nu, "r": r, "f": f}
            up, down = ({**args, name: args[name] + s * h * np.eye(2)[k]} for s in (1, -1))
            fd = (signal(**up) - signal(**down)) / (2 * h)
            np.testing.assert_allclose(jt[:, 2 * i + k], fd, rtol=1e-5, atol=1e-8 * np.abs(fd).max())
    # the free water's bound is that of ν_fw = 1 - ν_1 - ν_2: √(aᵀ F⁻¹ a), a the sum over the ν_k
    jac = jt.transpose(0, 2, 1)
    fisher = 900.0 * jac.transpose(0, 2, 1) @ jac  # SNR 30
    a = np.array([1.0, 1.0, 0, 0, 0, 0])
    want = np.sqrt(np.einsum("i,nij,j->n", a, np.linalg.inv(fisher), a))
    np.testing.assert_allclose(sens.cramer_rao(protocol, u, nu, r, f, 30.0, law=law)["nu_fw"], want, rtol=1e-6)
    one = sens.cramer_rao(protocol, u[:, :1], nu[:, :1], r[:, :1], f[:, :1], 30.0)  # one population: ν_fw = 1 - ν
    np.testing.assert_allclose(one["nu_fw"], one["nu"][:, 0], rtol=1e-9)
    # the bound per voxel SNR: a per-voxel SNR scales each voxel's bound
    one = sens.cramer_rao(protocol, u, nu, r, f, 1.0)
    per = sens.cramer_rao(protocol, u, nu, r, f, np.arange(1.0, n + 1))
    np.testing.assert_allclose(per["r"], one["r"] / np.arange(1.0, n + 1)[:, None], rtol=1e-12)


def test_noise_level_from_b0_repeats_and_from_the_fit_residual():
    from sparsesight.data.diffusion import noise

    rng = np.random.default_rng(0)
    sigma, s0 = 20.0, rng.uniform(500, 1500, 4000)
    b0 = s0[:, None] + sigma * rng.standard_normal((4000, 3))
    b0[:40] += 400 * rng.standard_normal((40, 3))  # 1 % of the voxels moved between the b = 0 volumes
    est = noise.image_noise(b0.mean(1), 3, b0_var=b0.var(1, ddof=1))
    assert abs(est["sigma"] - sigma) < 0.04 * sigma and "3 b = 0" in est["source"]
    np.testing.assert_allclose(est["snr"], b0.mean(1) / est["sigma"])
    # one b = 0 volume: from the residual sum of squares over the degrees of freedom (M - |w|_0)
    dof = rng.integers(60, 66, 4000)
    rss = sigma**2 * rng.chisquare(dof)
    est = noise.image_noise(s0, 1, rss=rss, dof=dof)
    assert abs(est["sigma"] - sigma) < 0.02 * sigma and "residual" in est["source"]
    with pytest.raises(ValueError):
        noise.image_noise(s0, 1)


def test_simplex_projection_is_the_euclidean_projection():
    rng = np.random.default_rng(0)
    v = rng.normal(0.4, 0.5, (300, 2))
    cap = rng.uniform(0.2, 1.0, 300)
    p = ms.project_capped_simplex(v, cap)
    assert (p >= 0).all() and (p.sum(1) <= cap + 1e-12).all()
    np.testing.assert_allclose(ms.project_capped_simplex(np.array([[0.8, 0.6]]), 1.0), [[0.6, 0.4]])
    np.testing.assert_allclose(ms.project_capped_simplex(np.array([[0.3, -0.2]]), 1.0), [[0.3, 0.0]])
    # optimality: no feasible point (a fine grid of the set) is closer to v than its projection
    a, b = np.meshgrid(np.linspace(0, 1, 101), np.linspace(0, 1, 101))
    grid = np.c_[a.ravel(), b.ravel()]
    for i in range(0, 300, 15):
        feas = grid[grid.sum(1) <= cap[i]]
        assert np.linalg.norm(v[i] - p[i]) <= np.linalg.norm(v[i] - feas, axis=1).min() + 1e-12


def test_cli_checks_the_protocol_writes_the_timing_and_maps_a_dwi(tmp_path, capsys):
    from sparsesight import bundle
    from sparsesight.cli import main

    paths = dif.write_dwi_phantom(tmp_path, dif.hcp_mgh_protocol(8), downsample=8, slices=1, snr=50, seed=2)
    paths["json"].unlink()  # a scanner's FSL export: no timing
    assert main(["dwi-protocol", str(paths["dwi"])]) == 2
    assert "DiffusionGradientSeparation" in capsys.readouterr().err
    assert main(["dwi-protocol", str(paths["dwi"]), "--big-delta", "21.8", "--small-delta", "12.9",
                 "--write-sidecar"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"]["timing_unit"] == "ms" and out["radius"]["resolvable"]
    assert json.loads(paths["json"].read_text())["DiffusionGradientSeparation"] == pytest.approx(0.0218)
    assert main(["microstructure", str(paths["dwi"]), "--out", str(tmp_path / "b.zip"), "--grid", "4", "3"]) == 0
    man = bundle.validate(tmp_path / "b.zip")
    assert man["method"] == "fingerprinting" and man["radius"]["resolvable"] and man["fractions"]["max_sum"] <= 1
    assert man["protocol"]["source"]["b_unit"] == "s/mm2"


def test_no_radius_map_on_a_b2000_protocol_and_nan_voxels_left_out(tmp_path):
    from sparsesight import bundle, models
    from sparsesight.data.io import save_nifti
    from sparsesight.runners import microstructure as run

    bvals, bvecs = _table(2000.0)
    clinical = dif.build_protocol(bvals, bvecs, 0.045, 0.030)
    paths = dif.write_dwi_phantom(tmp_path, clinical, downsample=8, slices=1, snr=50, seed=4)
    img = nib.load(paths["dwi"])
    data = np.asarray(img.dataobj).copy()
    mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
    bad = tuple(np.argwhere(mask)[:3].T)
    data[bad + (5,)] = np.nan
    save_nifti(data, img.affine, paths["dwi"])
    model = models.build("microstructure", {"protocol": clinical.to_config(), "grid": dif.small_grid(4, 3).to_config()})
    out = run.run_bundle(model, "microstructure", "v", paths["dwi"], "dwi", tmp_path / "b.zip",
                         method="fingerprinting", log=lambda s: None)
    man = bundle.validate(out)
    names = {o["name"] for o in man["outputs"]}
    assert not man["radius"]["resolvable"] and "not resolvable" in man["radius"]["reason"]
    assert {"nu/1", "f/1", "nu/2"} <= names and not any(n.startswith(("r/", "nnls/r")) for n in names)
    assert man["nonfinite_voxels"] == 3 and man["voxels"] == int(mask.sum()) - 3
    o = man["orientations"]  # how the CSD peaks were found, the response's source said
    assert o["shell_b"] == 2000 and o["directions"] == 30 and o["response"].startswith(("estimated", "default"))
    maps, _ = run.predict_file(model, paths["dwi"], method="fingerprinting", log=lambda s: None)
    assert (maps[..., [1, 4]] == 0).all() and (maps[bad] == 0).all() and maps[..., 0].max() > 0


def test_csd_takes_the_shell_with_most_distinct_directions():
    from sparsesight.runners import microstructure as run

    d40, d12 = dif.protocol.hemisphere_directions(40), dif.protocol.hemisphere_directions(12)
    assert run._distinct_directions(np.r_[d12, -d12, d12]) == 12  # ±g and repeats count once
    bvals = np.r_[np.zeros(4), np.full(40, 2000.0), np.full(36, 3000.0), np.full(60, 10000.0)]
    bvecs = np.r_[np.zeros((4, 3)), d40, np.r_[d12, d12, d12], np.r_[d40, d40[:20]]]
    p = dif.build_protocol(bvals, bvecs, 0.04, 0.02)  # b 10000 has the most, but lies outside 1000-6000
    sim = dif.simulate(p, 8, 50, 0)
    info: dict = {}
    run.csd_peaks(sim["signal"].reshape(2, 2, 2, p.m).astype(np.float32), p, np.ones((2, 2, 2), bool), info=info)
    assert info["shell_b"] == 2000 and info["directions"] == 40 and info["sh_order"] == 6


def test_a_scanner_export_with_other_timing_and_b_up_to_6000_runs_end_to_end(tmp_path):
    # what a converter writes: b-values as measured (5, 995, 2010, 5990), directions a little off unit length,
    # one bval/bvec pair, the timing per shell in the JSON sidecar (seconds), interleaved b=0 volumes
    from sparsesight import bundle, models
    from sparsesight.runners import microstructure as run

    d, d60 = dif.protocol.hemisphere_directions(24), dif.protocol.hemisphere_directions(60, twist=0.3)
    bvals = np.r_[0.0, np.full(24, 1000.0), 0.0, np.full(24, 2000.0), 0.0, np.full(60, 6000.0)]
    bvecs = np.r_[np.zeros((1, 3)), d, np.zeros((1, 3)), d, np.zeros((1, 3)), d60]
    timing = {"DiffusionShells": [1000, 2000, 6000], "DiffusionGradientSeparation": [0.030, 0.030, 0.033],
              "DiffusionGradientDuration": [0.012, 0.012, 0.015], "EchoTime": 0.072}
    truth = dif.build_protocol(bvals, bvecs, [0.030, 0.030, 0.033], [0.012, 0.012, 0.015], [1000, 2000, 6000])
    paths = dif.write_dwi_phantom(tmp_path, truth, downsample=8, slices=1, snr=40, seed=5, name="sub-01_dwi")
    measured = bvals + np.where(bvals == 0, 5, np.where(bvals == 2000, 10, np.where(bvals == 6000, -10, -5)))
    np.savetxt(paths["bval"], measured[None], fmt="%g")
    np.savetxt(paths["bvec"], (bvecs * 0.998).T, fmt="%.5f")
    paths["json"].write_text(json.dumps(timing))
    p = dif.read_protocol(paths["dwi"], n_volumes=truth.m)
    assert [r["big_delta_ms"] for r in p.shell_table()] == [30.0, 30.0, 30.0, 33.0]  # b=0 takes the lowest shell's
    model = models.build("microstructure", {"protocol": p.to_config(), "grid": dif.small_grid(5, 4).to_config()})
    out = run.run_bundle(model, "microstructure", "v", paths["dwi"], "sub-01", tmp_path / "b.zip",
                         method="fingerprinting", outputs=["maps", "free_water"], log=lambda s: None)
    man = bundle.validate(out)
    assert man["radius"]["resolvable"] and man["radius"]["shell_b"] == 6000  # 60 directions at 115 mT/m: < 2 µm
    assert man["protocol"]["source"]["timing_unit"] == "s" and man["fractions"]["max_sum"] <= 1 + 1e-6
    b = bundle.read(out)
    nu = b.volume("nu/1")[0] + b.volume("nu/2")[0]
    b.close()
    mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
    assert np.median(nu[mask]) > 0.5  # white matter: mostly axonal signal
