"""The extra-axonal laws (data/diffusion/extra_axonal.py): the gamma law's maths, the pooling over radii, the same
signal through every path (dictionary basis, simulation, one population), and the calibrated law against walkers
it was not fitted to (the Monte-Carlo bench's packings)."""
from __future__ import annotations

import numpy as np
import pytest

from sparsesight.bench import microstructure_mc as mcb
from sparsesight.data import diffusion as dif
from sparsesight.data.diffusion import extra_axonal as ea
from sparsesight.errors import InvalidInput

MC = dif.extra_law("mc")


def test_gamma_law_cumulants_and_limits():
    # -d lnE/db at b = 0 is D⊥ and d² lnE/db² is D⊥² K / 3 (the kurtosis' definition); K -> 0 is Gaussian
    d, k, h = 1.3, 0.8, 1e-4
    lnE = [mcb.gamma_log_perp(b, d, k) for b in (0.0, h, 2 * h)]
    assert abs(-(lnE[1] - lnE[0]) / h - d) < 1e-3
    assert abs((lnE[2] - 2 * lnE[1] + lnE[0]) / h**2 - d**2 * k / 3) < 1e-3
    b = np.linspace(0, 5, 11)
    np.testing.assert_allclose(mcb.gamma_log_perp(b, d, 1e-9), -b * d, rtol=1e-6)
    # bounded and monotone at high b where a cumulant expansion -bD + b²D²K/6 turns back up
    big = mcb.gamma_log_perp(np.array([10.0, 20.0, 40.0]), d, k)
    assert np.all(np.diff(big) < 0)


def test_pooled_coefficients_are_the_mixture_cumulants():
    cal = ea.load_calibration()
    t = np.array([0.0175, 0.040])
    dbar, kbar = ea.pooled_coefficients(t, cal)
    assert dbar.shape == kbar.shape == (len(cal["fractions"]), 2)
    # the mixture of the per-radius gamma signals has the pooled D⊥ and K as its first two cumulants
    order = np.argsort(cal["tau"])
    b, h = 0.0, 1e-4
    for p in (0, len(cal["fractions"]) - 1):
        for j, tj in enumerate(t):
            tau = dif.D_AXON * tj / (np.asarray(ea.REFERENCE_RADII_UM) * 1e-6) ** 2
            d = np.interp(np.log(tau), np.log(cal["tau"][order]), cal["dperp_over_d"][p][order])
            k = np.interp(np.log(tau), np.log(cal["tau"][order]), cal["kurtosis"][p][order])
            lnE = [np.log(np.mean(np.exp(mcb.gamma_log_perp(b + i * h, d, k)))) for i in range(3)]
            assert abs(-(lnE[1] - lnE[0]) / h - dbar[p, j]) < 1e-3
            assert abs((lnE[2] - 2 * lnE[1] + lnE[0]) / h**2 - dbar[p, j] ** 2 * kbar[p, j] / 3) < 2e-3
    # denser packings hinder more; the tortuosity law's D⊥ = D (1 - f) is the long-time floor it approaches
    assert np.all(np.diff(dbar[:, 0]) < 0)


def test_every_path_gives_the_same_extra_axonal_signal():
    protocol = dif.hcp_mgh_protocol(8)
    grid = dif.small_grid(4, 5)
    rng = np.random.default_rng(0)
    u = dif.random_unit(rng, 3)
    c2 = dif.cos2_angles(protocol, u)
    rows = dif.extra_signal(protocol, c2, grid.fractions, law=MC)  # (3, N_f, M): the dictionary basis
    for j, f in enumerate(grid.fractions):
        per_voxel = np.exp(MC.log_signal(protocol, c2, np.full(3, f)))
        np.testing.assert_allclose(rows[:, j], per_voxel, rtol=1e-12)
    # one population: the same law through population_signals and single_population_signal
    r = np.array([1.0, 3.0, 6.0])
    f = np.array([0.3, 0.5, 0.8])
    pop = dif.population_signals(protocol, u, r, f, MC)
    for i in range(3):
        np.testing.assert_allclose(pop[i], dif.single_population_signal(protocol, u[i], r[i], f[i], MC), rtol=1e-12)
    # the laws differ (the point of the calibrated one) and both are 1 at b = 0 and along the axons Gaussian in D
    tort = dif.population_signals(protocol, u, r, f)
    assert np.abs(pop - tort).max() > 0.01
    along = dif.Protocol(np.array([0.0, 1000.0]), np.array([[1.0, 0, 0], [0, 0, 1.0]]), 0.0218, 0.0129)
    s = np.exp(MC.log_signal(along, np.array([[1.0, 1.0]]), np.array([0.5])))
    np.testing.assert_allclose(s[0], [1.0, np.exp(-1e9 * dif.D_AXON)], rtol=1e-12)


def test_model_config_carries_the_law_and_refuses_an_unknown_one():
    from sparsesight.models import microstructure as ms

    protocol = dif.hcp_mgh_protocol(8)
    grid = dif.small_grid(4, 5)
    model = ms.Microstructure(protocol.to_config(), grid.to_config(), extra_axonal="mc")
    assert model.config["extra_axonal"] == "mc" and model.extra_law == MC
    assert ms.Microstructure(protocol.to_config(), grid.to_config()).config["extra_axonal"] == "tortuosity"
    # the NNLS problem is built on the law's atoms: a voxel made of one atom is fitted exactly
    u = np.array([[[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]]])
    atom = grid.atom(3.4, 0.54)
    y = dif.sub_dictionary(protocol, u[0, 0], grid)[:, atom]  # the tortuosity atom: not in the mc dictionary
    y_mc = (grid.fractions[atom % 5] * dif.intra_signal(protocol, dif.cos2_angles(protocol, u[0, 0]),
                                                      dif.intra_log_perp_table(protocol, grid.radii_um))[atom // 5]
            + (1 - grid.fractions[atom % 5]) * np.exp(MC.log_signal(protocol, dif.cos2_angles(protocol, u[0, 0]),
                                                                   np.float64(grid.fractions[atom % 5]))))
    res_mc = ms.nnls_weights(model, y_mc[None], u)["residual"][0]
    res_t = ms.nnls_weights(model, y[None], u)["residual"][0]
    assert res_mc < 1e-6 < res_t
    with pytest.raises(InvalidInput, match="extra-axonal law"):
        ms.Microstructure(protocol.to_config(), grid.to_config(), extra_axonal="zeppelin")


def test_calibrated_law_is_closer_to_walkers_it_was_not_fitted_to():
    # the bench's Monte-Carlo tables (other packings, other seeds, 7 orientations, 4 shells): the calibrated law's
    # largest extra-axonal gap per packing must be below the tortuosity law's
    tables = mcb.load_tables()
    protocol = mcb._protocol(4)
    gaps = {name: mcb.forward_gap(tables, protocol, dif.extra_law(name)) for name in dif.EXTRA_AXONAL_LAWS}
    keys = [k for k in gaps["mc"][0] if k.startswith("extra")]
    worst = {name: max(row[k] for row in g for k in keys) for name, g in gaps.items()}
    mean = {name: np.mean([row[k] for row in g for k in keys]) for name, g in gaps.items()}
    assert worst["mc"] < worst["tortuosity"] and mean["mc"] < 0.8 * mean["tortuosity"], (worst, mean)


def test_law_follows_time_and_density():
    # longer diffusion times hinder more (D⊥ falls towards its long-time limit) and so do denser packings, across
    # the calibrated fractions and above them (Archie's law, continuous at the densest packing)
    cal = ea.load_calibration()
    d, k = ea.pooled_coefficients(np.array([0.008, 0.0175, 0.060]), cal)
    assert np.all(np.diff(d, axis=1) < 0) and np.all(np.diff(d, axis=0) < 0)
    alpha = ea.archie_exponent(cal["fractions"], d)
    np.testing.assert_allclose(np.log(d) / np.log1p(-cal["fractions"])[:, None], np.broadcast_to(alpha, d.shape),
                               atol=0.08)
    one = dif.Protocol(np.array([0.0, 1000.0]), np.array([[1.0, 0, 0], [1.0, 0, 0]]), 0.0218, 0.0129)
    f = np.linspace(0.21, 0.87, 67)
    dperp, kurt = MC.coefficients(one, f)
    assert np.all(np.diff(dperp[:, 1]) < 0) and np.all(kurt[:, 1] > 0)
    top = cal["fractions"][-1]
    below, above = MC.coefficients(one, np.array([top - 1e-9, top + 1e-9]))[0][:, 1]
    assert abs(below - above) < 1e-6 * dif.D_AXON


def test_shipped_calibration_is_what_calibrate_writes_from_the_recorded_walkers(tmp_path):
    # the law's coefficients are not typed in: `calibrate` on the committed walker signals gives the shipped file
    import json
    from pathlib import Path

    parts = sorted((Path(__file__).resolve().parents[2] / "bench" / "results"
                    / "microstructure_mc_extra_calibration").glob("packings_*.npz"))
    assert len(parts) == 2
    got = mcb.calibrate(parts, tmp_path / "cal.json", figure=tmp_path / "cal.png")
    shipped = json.loads(ea.CALIBRATION_FILE.read_text())
    for key in ("fractions", "tau", "dperp_over_d", "kurtosis", "rms_log", "points", "radii_um"):
        np.testing.assert_allclose(np.asarray(got[key], dtype=float), np.asarray(shipped[key], dtype=float), atol=1e-4)
    assert (tmp_path / "cal.png").read_bytes()[:4] == b"\x89PNG"


def test_calibrated_law_holds_at_a_timing_it_was_not_fitted_at():
    # walkers at Δ/δ 40/10 ms between packings of other seeds (the calibration: HCP's 21.8/12.9 ms): the law's
    # per-radius prediction (its fits moved along τ = D t / r²) is closer to them than the tortuosity law, and the
    # recorded check is what check_timing computes
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "bench" / "results" / "microstructure_mc_extra_calibration"
    parts = sorted(folder.glob("other_timing_*.npz"))
    got = mcb.check_timing(parts)
    assert got["rows"] == json.loads((folder / "other_timing.json").read_text())["rows"]
    mc = np.array([row["mc_law_max_abs"] for row in got["rows"]])
    tort = np.array([row["tortuosity_max_abs"] for row in got["rows"]])
    assert len(mc) == 6 and mc.mean() < 0.7 * tort.mean() and (mc < tort).sum() >= 5


def test_dwi_phantom_takes_the_law():
    # the sample data the CLI writes follows the law the train task trains with; the same seed gives the same
    # anatomy and truth under either law, and white-matter signals that differ by the extra-axonal part only
    protocol = dif.hcp_mgh_protocol(16)
    tort = dif.dwi_phantom(protocol, downsample=8, slices=1, snr=1e9, seed=0)
    mc = dif.dwi_phantom(protocol, downsample=8, slices=1, snr=1e9, seed=0, extra_axonal="mc")
    for k in ("nu", "r", "f", "nu_fw", "u"):
        np.testing.assert_array_equal(tort["truth"][k], mc["truth"][k])
    wm = mc["mask"]
    t = mc["truth"]
    i = tuple(np.argwhere(wm)[0])
    grey = 1.0 - t["nu"][i].sum() - t["nu_fw"][i]  # the phantom's isotropic grey-matter compartment
    want = t["nu_fw"][i] * dif.free_water_signal(protocol) + grey * np.exp(-protocol.b_si * 0.8e-9)
    for k in range(2):
        want = want + t["nu"][i][k] * dif.population_signals(protocol, t["u"][i][k][None].astype(float),
                                                              t["r"][i][k:k + 1], t["f"][i][k:k + 1], MC)[0]
    got = mc["dwi"][i] / mc["dwi"][i][protocol.b0_mask].mean()
    assert np.abs(got - want / want[protocol.b0_mask].mean()).max() < 1e-3
    assert np.abs(mc["dwi"][wm] - tort["dwi"][wm]).max() > 1.0
