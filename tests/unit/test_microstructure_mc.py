"""The Monte-Carlo benchmark's table machinery (bench/microstructure_mc.py), without dmipy-sim: tables built from
the analytic model must give back the analytic signals exactly (log-signal linear in cos²θ), so whatever the MC
section reports is the simulator's physics, not interpolation error."""
from __future__ import annotations

import numpy as np
import pytest

from sparsesight.bench import microstructure_mc as mcb
from sparsesight.data import diffusion as dif


@pytest.mark.parametrize("scenario", ["single", "crossing60"])
def test_tables_of_the_analytic_model_give_its_signals(scenario):
    protocol = dif.hcp_mgh_protocol(8)
    radii = np.array([1.0, 3.0, 6.0])
    achieved = np.array([[0.3, 0.45]] * 3)
    tables = {**mcb.analytic_tables(protocol, radii, achieved), "radii_um": radii, "achieved": achieved}
    vox = mcb.voxels(tables, protocol, 12, scenario, None, seed=1)
    ref = vox["nu_fw"][:, None] * dif.free_water_signal(protocol)[None]
    for k in range(2):
        ref = ref + vox["nu"][:, k:k + 1] * dif.population_signals(protocol, vox["u"][:, k], vox["r"][:, k],
                                                                   vox["f"][:, k])
    np.testing.assert_allclose(vox["clean"], ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(vox["nu"].sum(1) + vox["nu_fw"], 1.0)
    gap = mcb.forward_gap({**tables, "intra": tables["intra"], "extra": tables["extra"]}, protocol)
    assert all(v == 0 for row in gap for k, v in row.items() if k != "r_um")


def test_voxel_free_water_range_and_the_served_bound_ratio():
    protocol = dif.hcp_mgh_protocol(8)
    radii = np.array([1.0, 3.0, 6.0])
    achieved = np.array([[0.3, 0.45]] * 3)
    tables = {**mcb.analytic_tables(protocol, radii, achieved), "radii_um": radii, "achieved": achieved}
    vox = mcb.voxels(tables, protocol, 400, "crossing90", 30.0, seed=1, fw_max=1.0)
    fw = vox["nu_fw"]
    assert (fw[:200] == 0).all() and fw[200:].max() > 0.9 and np.isclose(vox["nu"].sum(1) + fw, 1).all()
    assert mcb.voxels(tables, protocol, 400, "crossing90", 30.0, seed=1)["nu_fw"].max() <= 0.3
    # an estimate equal to the truth serves the true bound: ratio 1 everywhere
    truth = {k: vox[k] for k in ("nu", "r", "f")}
    ratio = mcb.served_bound_ratio(protocol, vox, truth, 30.0)
    assert all(ratio[f"served_bound_ratio_{p}_median"] == 1.0 and ratio[f"served_bound_within_2x_{p}"] == 1.0
               for p in ("nu", "r", "f"))
    # one that halves every radius serves another bound (the radius sets how much of the signal it moves)
    off = mcb.served_bound_ratio(protocol, vox, {**truth, "r": truth["r"] / 2}, 30.0)
    assert off["served_bound_ratio_r_median"] > 2


def test_readme_quotes_the_recorded_monte_carlo_run():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = json.loads((root / "bench" / "results" / "microstructure_mc.json").read_text())
    readme = (root / "README.md").read_text()
    assert r["command"] in " ".join(readme.split())
    assert [line for line in mcb.markdown_table(r) if line not in readme] == []
    # the recorded run's own invariants: physically valid fractions, every method and scenario present
    assert {(x["scenario"], x["method"]) for x in r["mae"]} == {
        (s, m) for s in ("single", "crossing60", "crossing90") for m in ("fingerprinting", "mlp", "hybrid")}
    assert all(x["fractions_above_1"] == 0 for x in r["mae"])
    t = mcb.load_tables(root / "bench" / "results" / "microstructure_mc_tables.npz")
    assert t["meta"]["simulator"].startswith("dmipy-sim") and t["intra"].shape == (5, 4, mcb.N_NODES)


def test_readme_quotes_the_analytic_reference_and_the_longer_training():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = " ".join((root / "README.md").read_text().split())
    r = json.loads((root / "bench" / "results" / "microstructure_mc_train30000" / "microstructure_mc.json").read_text())
    assert r["train"]["n_train"] == 30000 and r["train"]["epochs"] == 40 and r["command"] in readme
    h = {x["scenario"]: x["mae_nu"] for x in r["mae_analytic"] if x["method"] == "hybrid"}
    assert f"{h['single']:.3f} / {h['crossing60']:.3f} / {h['crossing90']:.3f} (single / 60° / 90°)" in readme
    assert {(x["scenario"], x["method"]) for x in r["mae_analytic"]} == {(x["scenario"], x["method"]) for x in r["mae"]}


def test_readme_quotes_the_full_protocol_run_and_the_cramer_rao_floor():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    flat = " ".join(readme.split())
    for name, m in (("microstructure_mc.json", 138), ("microstructure_mc_full552/microstructure_mc.json", 552)):
        r = json.loads((root / "bench" / "results" / name).read_text())
        assert r["protocol"]["m"] == m and r["command"] in flat
        lines = mcb.markdown_table(r)
        table = lines[:lines.index("")]  # the MAE table
        start = next(i for i, x in enumerate(lines) if x.startswith("| scenario | parameter | aim |"))
        floor = lines[start:lines.index("", start)]  # the Cramér–Rao floor table
        assert len(floor) == 2 + 9
        assert [x for x in table + floor if x not in readme] == []
        # the floor's own invariants: an unbiased estimate of a crossing's ν split is harder than of one bundle's ν
        c = {x["scenario"]: x for x in r["crlb"]}
        assert c["crossing60"]["mae_floor_nu_median"] > c["single"]["mae_floor_nu_median"]


def test_readme_quotes_the_free_water_prior_runs():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = " ".join((root / "README.md").read_text().split())

    def trip(r, key):
        h = {x["scenario"]: x for x in r["mae"] if x["method"] == "hybrid"}
        return " / ".join(f"{h[s][key]:.3f}" for s in ("single", "crossing60", "crossing90"))

    base = json.loads((root / "bench" / "results" / "microstructure_mc.json").read_text())
    runs = [json.loads((root / "bench" / "results" / f"microstructure_mc_freewater{fw}" / "microstructure_mc.json")
                       .read_text()) for fw in ("0.3", "1")]
    for r, fw in zip(runs, (0.3, 1.0)):
        assert r["train"]["free_water"] == [0.0, fw] and r["command"] in readme
    for key in ("mae_nu", "mae_f"):
        assert (f"{trip(runs[0], key)} and {trip(runs[1], key)}" in readme and trip(base, key) in readme), key


def test_readme_quotes_the_full_free_water_range_and_the_served_bound():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    flat = " ".join(readme.split())
    res = root / "bench" / "results"
    fw1 = json.loads((res / "microstructure_mc_voxelfw1" / "microstructure_mc.json").read_text())
    fw1p = json.loads((res / "microstructure_mc_voxelfw1_prior1" / "microstructure_mc.json").read_text())
    assert fw1["voxel_free_water"] == [0.0, 1.0] and fw1["train"]["free_water"] == [0.0, 0.1]
    assert fw1p["voxel_free_water"] == [0.0, 1.0] and fw1p["train"]["free_water"] == [0.0, 1.0]
    lines = mcb.markdown_table(fw1)
    assert [x for x in lines[:lines.index("")] if x not in readme] == []
    assert fw1["command"] in flat and fw1p["command"] in flat

    def trip(r, method, key):
        h = {x["scenario"]: x for x in r["mae"] if x["method"] == method}
        return " / ".join(f"{h[s][key]:.3f}" for s in ("single", "crossing60", "crossing90"))

    assert f"MAE ν_fw {trip(fw1, 'hybrid', 'mae_nu_fw')}, single / 60° / 90°" in flat
    assert f"(hybrid ν {trip(fw1p, 'hybrid', 'mae_nu')})" in flat
    base = json.loads((res / "microstructure_mc.json").read_text())
    for r in (base, fw1):  # the served bound (at the estimate) against the truth's, on crossings
        h = [x for x in r["mae"] if x["method"] == "hybrid" and x["scenario"] != "single"]
        assert "ν " + " / ".join(f"{x['served_bound_ratio_nu_median']:.2f}" for x in h) in flat
        assert all(0 < x["served_bound_within_2x_nu"] <= 1 for x in h)
    # fingerprinting scores voxels with free water too (it once saw only the first, water-free half)
    fp = [x for x in base["mae"] if x["method"] == "fingerprinting"]
    assert all(x["mae_nu_fw"] != x["spurious_fw"] for x in fp)


def test_readme_locates_the_forward_gap_in_the_extra_axonal_law():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    flat = " ".join((root / "README.md").read_text().split())
    full = json.loads((root / "bench" / "results" / "microstructure_mc_full552" / "microstructure_mc.json").read_text())
    base = json.loads((root / "bench" / "results" / "microstructure_mc.json").read_text())

    def trip(rows, key):
        h = {x["scenario"]: x for x in rows if x["method"] == "hybrid"}
        return " / ".join(f"{h[s][key]:.3f}" for s in ("single", "crossing60", "crossing90"))

    mixed, mc, ana = full["mae_mc_intra_analytic_extra"], full["mae"], full["mae_analytic"]
    assert (f"free water {trip(mixed, 'spurious_fw')} at M = 552 (single / 60° / 90°; walkers {trip(mc, 'spurious_fw')}, "
            f"analytic {trip(ana, 'spurious_fw')})") in flat
    # the claim itself: with the analytic extra-axonal signal the spurious free water is the analytic one's
    for x, y, z in zip(mixed, mc, ana):
        if x["method"] == "hybrid":
            assert abs(x["spurious_fw"] - z["spurious_fw"]) < 0.01 < y["spurious_fw"] - x["spurious_fw"]
    # and the walkers' extra-axonal hindrance is not one diffusivity: the apparent D⊥ falls from b = 1000 to 3000
    assert all(a["mc"][1] < a["mc"][0] - 0.04 for a in base["apparent_dperp"])
    lo = [a["mc"][0] for a in base["apparent_dperp"] if a["f"] == 0.3]
    assert f"from {min(lo):.2f}–{max(lo):.2f} (f 0.30)" in flat


def test_readme_quotes_the_calibrated_law_runs():
    # the two recorded runs with the Monte-Carlo-calibrated extra-axonal law, their MAE tables as the README shows
    # them, and the claim they carry: the hybrid's spurious free water lower than with the tortuosity law
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = " ".join((root / "README.md").read_text().split())
    for run, base in (("microstructure_mc_extra_mc", "microstructure_mc.json"),
                      ("microstructure_mc_extra_mc_full552", "microstructure_mc_full552/microstructure_mc.json")):
        r = json.loads((root / "bench" / "results" / run / "microstructure_mc.json").read_text())
        b = json.loads((root / "bench" / "results" / base).read_text())
        assert r["extra_axonal"] == "mc" and "--extra-axonal mc" in r["command"] and r["command"] in readme
        assert [line for line in mcb.markdown_table(r)[:11] if " ".join(line.split()) not in readme] == []
        hybrid = {x["scenario"]: x for x in r["mae"] if x["method"] == "hybrid"}
        before = {x["scenario"]: x for x in b["mae"] if x["method"] == "hybrid"}
        assert all(hybrid[s]["spurious_fw"] < before[s]["spurious_fw"] for s in hybrid)
    cost = json.loads((root / "bench" / "results" / "microstructure_scale.json").read_text())["extra_law_cost"]
    laws = cost["result"]["laws"]
    assert f"{laws['tortuosity']['ms_per_voxel']} ms/voxel with the tortuosity law, {laws['mc']['ms_per_voxel']}" in readme
    cal = json.loads((root / "lib" / "sparsesight" / "data" / "diffusion" / "extra_axonal_mc.json").read_text())
    assert " / ".join(f"{row[0]:.3f}" for row in cal["dperp_over_d"]) in readme
    # the fit's other figures the README quotes: D⊥/D at short times, K's range, rms, Archie's exponent
    from sparsesight.data.diffusion import extra_axonal as ea

    k = np.asarray(cal["kurtosis"])
    rms = np.asarray(cal["rms_log"])
    d, _ = ea.pooled_coefficients(np.array([cal["t_eff_s"]]))
    alpha = float(ea.archie_exponent(np.asarray(cal["fractions"]), d)[0])
    for text in (f"D⊥/D up to {np.max(cal['dperp_over_d']):.3f}", f"K {k.min():.2f}–{k.max():.2f}",
                 f"rms in ln E⊥ has median {np.median(rms):.2f} and reaches {rms.max():.2f}",
                 f"pooled at HCP timing {alpha:.2f}",
                 "each packing within {:.3f} of it: {:.3f}–{:.3f}".format(
                     *(lambda a: (np.abs(a - alpha).max(), a.min(), a.max()))(
                         np.log(d[:, 0]) / np.log1p(-np.asarray(cal["fractions"]))))):
        assert text in readme, text


def test_readme_quotes_the_other_timing_check():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = " ".join((root / "README.md").read_text().split())
    rows = json.loads((root / "bench" / "results" / "microstructure_mc_extra_calibration" / "other_timing.json")
                      .read_text())["rows"]
    for key, text in (("mc_law_max_abs", "largest |ΔE⊥|"), ("tortuosity_max_abs", "tortuosity law's")):
        vals = [x[key] for x in rows]
        assert f"{text} {min(vals):.4f}–{max(vals):.4f} (mean {sum(vals) / len(vals):.4f})" in readme, key


def test_laws_figure_draws_the_recorded_runs(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "bench" / "results"
    out = tmp_path / "laws.png"
    assert mcb.main(["plot", f"tortuosity law={root / 'microstructure_mc_full552' / 'microstructure_mc.json'}",
                     f"calibrated law={root / 'microstructure_mc_extra_mc_full552' / 'microstructure_mc.json'}",
                     "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000
