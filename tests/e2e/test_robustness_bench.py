"""`python -m sparsesight.bench.robustness` in a small form: the three models, the paper's two U-Nets and ML-CSC trained
(with the App. G range noise) and evaluated under noise and blur, the ratio table, and the SUM filter-bank
responses it records."""
import csv
import json

import pytest

from sparsesight.bench.robustness import MODELS, markdown_tables, run

pytestmark = [pytest.mark.slow]


def test_benchmark_small(tmp_path):
    out = tmp_path / "results"
    res = run(epochs=1, n_cases=4, out=str(out), noise=(0.1,), blurs=(1.0,), repeats=1, samples=1, threads=2,
              data_dir=str(tmp_path / "data"), time_shape=(32, 32, 32), range_noise=(1.0, 0.1), models=list(MODELS))
    assert list(res["models"]) == ["SUM", "SUM_Rec", "monai_unet", "unet_bn", "unet_nobn", "mlcsc"]
    assert res["range_noise"] == [1.0, 0.1]
    table = "\n".join(markdown_tables(res))
    assert "| U-Net (batch norm) | 4,813,569 (1.001×) |" in table and "| U-Net_NoBN |" in table
    assert "| ML-CSC | 27,780 (0.006×) |" in table
    assert res["models"]["SUM"]["params"] == res["models"]["SUM_Rec"]["params"] < res["models"]["monai_unet"]["params"]
    for name in ("SUM", "SUM_Rec"):
        ra = res["ratios"][name]
        assert ra["params"] == pytest.approx(res["models"][name]["params"] / res["models"]["monai_unet"]["params"])
        assert ra["inference_time"] > 0
        for other in ("unet_bn", "unet_nobn", "mlcsc"):
            ev = res["models"][other]["eval"]
            assert ra[f"wt_drop_noise_{other}"] == pytest.approx(ev["clean:0"]["dice"]["WT"] - ev["noise:0.1"]["dice"]["WT"])
        resp = res["models"][name]["response"]
        assert resp["SDS"] > 0 and resp["FDS"] > 0 and resp["FDV"] > 0
        folder = out / "robustness_response" / name
        with open(folder / "response.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 16  # 4 inputs x 4 outputs
        for png in ("response.png", "alpha_sweep.png"):
            assert (folder / png).read_bytes().startswith(b"\x89PNG")
    assert "response" not in res["models"]["monai_unet"]
    recorded = json.loads((out / "robustness.json").read_text())
    assert set(recorded["models"]["SUM"]["eval"]) == {"clean:0", "noise:0.1", "blur:1"}
    assert (out / "robustness.png").read_bytes().startswith(b"\x89PNG")
