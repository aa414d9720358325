"""`make demo` in a small form: phantoms -> real server -> train over REST -> infer bundle -> PNG."""
import zipfile

import pytest

from sparsesight import bundle
from sparsesight.demo import run, run_shipped

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_demo_small(tmp_path, capsys):
    path = run(out=str(tmp_path / "demo"), cases=3, downsample=4, epochs=1)
    manifest = bundle.validate(path)
    names = {o["name"] for o in manifest["outputs"]}
    assert {"label", "params", "sparsity", "preview", "component/enhancing/T1ce", "reconstruction/FLAIR"} <= names
    assert manifest["model"] == "mlcsc" and manifest["model_version"].startswith("sha256:")
    preview = tmp_path / "demo" / f"mlcsc_{manifest['image']}_preview.png"
    assert preview.read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "Dice vs the phantom's true label" in out and "[5/5]" in out
    assert zipfile.is_zipfile(path)
    # what a second run checks to reuse the checkpoint instead of training again (a second run of the whole demo
    # cost CI about a minute for one `exists()`)
    assert "[3/5] no checkpoint: training mlcsc" in out and (tmp_path / "demo" / "model" / "mlcsc.pt").is_file()


def test_demo_on_the_shipped_weights(tmp_path, capsys):
    """`make demo` as a user runs it (one held-out case): the shipped weights through the real server, the Dice it
    measures equal to the model card's for that case, and a valid bundle per model."""
    r = run_shipped(out=str(tmp_path / "demo"), max_cases=1)
    for m in ("mlcsc", "sum"):
        assert r[m]["differs"] == [] and r[m]["dice"] == pytest.approx(r[m]["card_dice"], abs=0.02), r[m]
        manifest = bundle.validate(r[m]["bundle"]["path"])
        assert manifest["model"] == m
        # the shipped version's noise tolerance was measured, and a held-out phantom is within it
        noise = next(o["input_noise"] for o in manifest["outputs"] if o["name"] == "label")
        assert noise["tolerance"] is not None and noise["sigma_z_max"] < noise["tolerance"] and noise["flags"] == []
        # and its slice-thickness tolerance: the 1 mm phantom is within it
        grid = next(o["input_grid"] for o in manifest["outputs"] if o["name"] == "label")
        assert grid["voxel_mm"] == [1.0, 1.0, 1.0] and grid["tolerance_mm"] >= 1.0 and grid["flags"] == []
        # and its label consistency: the held-out case's label survives mirroring as well as a good one does
        lc = next(o["label_consistency"] for o in manifest["outputs"] if o["name"] == "label")
        assert lc["threshold"] is not None and lc["flags"] == [] and lc["least_agreement"] > 0.9, lc
    out = capsys.readouterr().out
    assert "mlcsc input noise: sigma_z" in out and "held up to" in out
    assert "sum input grid: 1 x 1 x 1 mm; held up to" in out
    assert "mlcsc label consistency: agreement with the mirrored scan WT 0." in out and "agreed at least" in out
    assert "mlcsc: shipped weights sha256:" in out and "(model card: WT" in out
