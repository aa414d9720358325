"""`python -m sparsesight.bench.explanations` in a small form: every variant trained for one epoch on 4 mm phantoms,
bundles written by the served runners, the table of issue 16, the figures, and a second run reusing the models."""
import json

import pytest

from sparsesight.bench.explanations import VARIANTS, run


@pytest.mark.slow
def test_benchmark_small(tmp_path, capsys):
    out = tmp_path / "out"
    kw = dict(epochs=1, sum_epochs=1, out=str(out), n_cases=4, downsample=4, n_test=2, patch=32,
              data_root=str(tmp_path / "data"))
    r = run(**kw)
    saved = json.loads((out / "explanations.json").read_text())
    assert set(saved["models"]) == set(VARIANTS)
    for m in saved["models"].values():
        s = m["summary"]
        assert len(m["cases"]) == 2 and set(s["dice"]) == {"WT", "TC", "ET"}
        assert 0 <= s["energy_in_brain_min"] <= 1 and s["relative_error_max"] >= 0
        assert set(m["aims_met"]) >= {"relative_error", "lattice", "dice"}
        if m["model"] == "mlcsc":
            assert (out / m["figure"]).stat().st_size > 1000 and set(s["localisation_truth"]) == {
                "oedema", "non-enhancing core", "enhancing"}
            assert m["inference_time_ratio"] > 0 and len(s["residual_per_step"]) >= 1
    assert [len(saved["models"][v]["summary"]["residual_per_step"]) for v in ("mlcsc", "mlcsc_steps2",
                                                                           "mlcsc_steps1")] == [4, 2, 1]
    assert [r["steps"] for r in saved["steps_sweep"]] == [1, 2, 4] and (out / "steps_sweep.png").is_file()
    assert "mlcsc_steps2" not in [r["variant"] for r in saved["beta_sweep"]]  # one factor per sweep
    # design 2 keeps lambda >= 0 and mu ||D||^2 <= 1 by construction, even after one epoch
    assert r["models"]["mlcsc"]["aims_met"]["parameters"] is True
    assert r["models"]["mlcsc"]["summary"]["lattice_vs_image_max"] < r["models"]["mlcsc_design1"]["summary"][
        "lattice_vs_image_max"]
    table = capsys.readouterr().out
    assert "aims missed" in table and "mlcsc_beta0" in table
    # a second run reuses the stored checkpoints (same versions), without timing
    again = run(**kw, variants=("mlcsc",), timing=False)
    assert again["models"]["mlcsc"]["version"] == r["models"]["mlcsc"]["version"]
