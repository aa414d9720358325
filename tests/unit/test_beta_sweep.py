"""The beta sweep of the explanations benchmark (issue 16's trade-off curve): design-2 ML-CSC variants only,
ordered by beta, with their reconstruction error and Dice; the figure is a PNG."""
from __future__ import annotations

from sparsesight.bench import explanations as E


def _model(kind, config, err, wt):
    return {"model": kind, "config": config,
            "summary": {"relative_error_max": err + 0.01, "relative_error_mean": err,
                        "dice": {"WT": wt, "TC": wt - 0.1, "ET": wt - 0.2}, "localisation_truth": None}}


def test_sweep_orders_design_2_variants_by_beta_and_leaves_out_the_others():
    results = {"downsample_mm": 2, "models": {
        "mlcsc_b8": _model("mlcsc", {"beta": 8.0, "eta": 1.0}, 0.05, 0.70),
        "mlcsc_design1": _model("mlcsc", {"design": 1}, 0.9, 0.9),
        "sum": _model("sum", {}, 0.5, 0.3),
        "mlcsc_b0": _model("mlcsc", {"beta": 0.0, "eta": 1.0, "design": 2}, 0.95, 0.85),
        "mlcsc_b2": _model("mlcsc", {"beta": 2.0, "eta": 1.0}, 0.10, 0.80)}}
    sweep = E.beta_sweep(results)
    assert [r["variant"] for r in sweep] == ["mlcsc_b0", "mlcsc_b2", "mlcsc_b8"]
    assert [r["relative_error_mean"] for r in sweep] == [0.95, 0.10, 0.05]
    assert sweep[1]["dice"]["WT"] == 0.80 and sweep[0]["eta"] == 1.0
    assert E._sweep_png(sweep, 2).startswith(b"\x89PNG")


def test_steps_sweep_orders_the_served_beta_by_steps_and_the_beta_sweep_keeps_the_served_steps():
    results = {"downsample_mm": 1, "models": {
        "mlcsc": _model("mlcsc", {"beta": 2.0, "eta": 1.0, "T": 2, "M": 2}, 0.12, 0.92),
        "mlcsc_steps1": _model("mlcsc", {"beta": 2.0, "eta": 1.0, "T": 1, "M": 1}, 0.13, 0.91),
        "mlcsc_steps2": _model("mlcsc", {"beta": 2.0, "eta": 1.0, "T": 1, "M": 2}, 0.11, 0.915),
        "mlcsc_beta0": _model("mlcsc", {"beta": 0.0, "eta": 0.0, "T": 2, "M": 2}, 0.19, 0.92),
        "mlcsc_design1": _model("mlcsc", {"design": 1, "T": 3, "M": 1}, 0.9, 0.9)}}
    results["models"]["mlcsc_steps2"]["inference_time_ratio"] = 1.3
    steps = E.steps_sweep(results)
    assert [(r["variant"], r["steps"]) for r in steps] == [("mlcsc_steps1", 1), ("mlcsc_steps2", 2), ("mlcsc", 4)]
    assert steps[1]["inference_time_ratio"] == 1.3 and steps[0]["inference_time_ratio"] is None
    assert [r["variant"] for r in E.beta_sweep(results)] == ["mlcsc_beta0", "mlcsc"]
    assert E._steps_png(steps, 1).startswith(b"\x89PNG")
