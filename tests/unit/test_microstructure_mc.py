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
