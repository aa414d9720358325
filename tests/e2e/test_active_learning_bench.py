"""`python -m sparsesight.bench.active_learning` in a small form: the whole loop (pick -> label -> retrain ->
reload -> rescore -> held-out Dice) through the real MONAI Label server, and the files it records."""
import csv
import json

import pytest

from sparsesight.bench.active_learning import run

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_benchmark_runs_the_loop_through_the_server(tmp_path):
    out = tmp_path / "results"
    res = run(("random", "sparse_residual"), seeds=1, pool=3, test=1, initial=1, rounds=1, batch=1, epochs=1,
              initial_epochs=1, out=str(out), work=str(tmp_path / "work"), model="sum")
    assert res["model"] == "sum" and res["pool"] == 3 and res["test"] == 1
    rows = res["rows"]
    assert [(r["strategy"], r["round"], r["n_labels"]) for r in rows] == [
        ("random", 0, 1), ("random", 1, 2), ("sparse_residual", 0, 1), ("sparse_residual", 1, 2)]
    for strategy in ("random", "sparse_residual"):
        r0, r1 = [r for r in rows if r["strategy"] == strategy]
        assert r1["model_version"] != r0["model_version"]  # the round retrained and the server reloaded
        assert r1["image"] and 0 <= r1["dice"] <= 1 and 0 <= r1["soft_dice"] <= 1
        summary = res["strategies"][strategy]["dice"]
        assert summary["auc_mean"] == pytest.approx((r0["dice"] + r1["dice"]) / 2)  # trapezoid over 1 -> 2 labels
    assert rows[3]["score"] is not None and float(rows[3]["score"]) > 0  # residual score of the picked image
    assert rows[1]["score"] is None  # random has no score
    assert res["strategies"]["random"]["soft_dice"]["auc_ratio_vs_random"] == 1.0
    assert res["strategies"]["sparse_residual"]["dice"]["auc_ratio_ci95"] is None  # one seed: no interval
    assert res["command"].startswith("python -m sparsesight.bench.active_learning")
    recorded = json.loads((out / "active_learning.json").read_text())
    assert recorded["strategies"] == json.loads(json.dumps(res["strategies"]))
    with open(out / "active_learning.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "active_learning.png").read_bytes().startswith(b"\x89PNG")
