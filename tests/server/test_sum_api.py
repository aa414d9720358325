"""SUM through the real MONAI Label server (see conftest.py): train `sum`, infer the label, the bundle with alpha."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from sparsesight import bundle
from sparsesight.data.io import nifti_from_bytes

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def trained(server):
    """One short training of `sum` through POST /train/sum (a fresh model: no checkpoint yet)."""
    info = server.info()
    assert "sum" in info["models"] and "sum" in info["trainers"]
    assert info["models"]["sum"]["config"]["alpha"] == 1.0  # the model option, shown in /info
    status = server.train(model="sum")
    assert any("train sum: epoch 1/1" in line for line in status["details"]), status["details"]
    version = server.version("sum")
    assert version and version.startswith("sha256:")
    return version


def test_infer_label(server, trained):
    img = nib.load(server.studies / "case_001.nii.gz")
    r = server.post("/infer/sum", params={"image": "case_001", "output": "image"})
    assert r.status_code == 200, r.text
    label, affine = nifti_from_bytes(r.content)
    assert label.shape == img.shape[:3]
    np.testing.assert_allclose(affine, img.affine, atol=1e-5)
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    # alpha is a request option of the label answer too
    r = server.post("/infer/sum", params={"image": "case_001", "output": "json"},
                    data={"params": json.dumps({"alpha": 0.0})})
    assert r.status_code == 200, r.text
    assert r.json()["alpha"] == 0.0 and r.json()["model_version"] == trained
    assert set(r.json()["checks"]) == {"input_noise", "input_grid", "flags"}


def test_infer_bundle_with_alpha(server, trained, tmp_path):
    r = server.post("/infer/sum", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({"bundle": True, "alpha": 0.0})})
    assert r.status_code == 200, r.text
    path = tmp_path / "sum.zip"
    path.write_bytes(r.content)
    manifest = bundle.validate(path)
    assert manifest["model"] == "sum" and manifest["model_version"] == trained and manifest["alpha"] == 0.0
    names = {o["name"] for o in manifest["outputs"]}
    # the reconstruction measured is ED_0(x) (the filter banks alone), shown as linear_reconstruction; ED_alpha(x)
    # is measured as the signal entering the output layer: at alpha = 0 the shrinkages removed nothing
    eq, entry = manifest["explanation_quality"], {o["name"]: o for o in manifest["outputs"]}
    assert entry["linear_reconstruction/T1"]["quality"] == eq["reconstruction"]["per_modality"]["T1"]
    assert entry["reconstruction/T1"]["quality"] == eq["output_signal"]["per_modality"]["T1"]
    assert all(m["removed_by_shrinkage"] < 1e-5 for m in eq["output_signal"]["per_modality"].values())
    # each shrinkage map carries its level's zeroed share (at alpha = 0 only exact zeros: the background) and
    # threshold check
    sq = entry["shrinkage/encoder_0"]["quality"]
    assert sq["zeroed_share"] == {k: eq["shrinkage"]["zeroed_share"][k] for k in ("encoder_0.0", "encoder_0.1")}
    assert sq["negative_thresholds"] == 0 and sq["faithful"]
    for expected in ("label", "probability/enhancing", "region/WT", "region/ET", "reconstruction/FLAIR", "linear_reconstruction/T2",
                     "shrinkage/encoder_0", "shrinkage/decoder_3", "response", "response_metrics", "alpha_sweep",
                     "alpha_sweep_plot", "params", "params_plot"):
        assert expected in names, expected
    b = bundle.read(path)
    try:
        # at alpha = 0 every threshold is zero: ED_alpha(x) is the linear reconstruction ED_0(x) (eq. 15)
        ed, _ = b.volume("reconstruction/T1ce")
        lin, _ = b.volume("linear_reconstruction/T1ce")
        np.testing.assert_allclose(ed, lin, atol=1e-3 * (np.abs(lin).max() + 1e-6))
        # the label is the paper's per-region decision: whole tumour where the WT map exceeds 0.5 (and nesting)
        label, _ = b.volume("label")
        wt, _ = b.volume("region/WT")
        assert np.all((label > 0) <= (wt > 0.5 - 1e-3)) and 0.0 <= float(wt.min()) and float(wt.max()) <= 1.0
        metrics = b.table("response_metrics")
        assert len(metrics) == 16 and {"SDS", "FDS", "FDV"} <= set(metrics[0])
        sweep = b.table("alpha_sweep")
        assert [float(row["alpha"]) for row in sweep] == [0.0, 0.5, 1.0, 1.5, 2.0]
        params = b.table("params")
        assert params[-1]["layer"] == "alpha" and float(params[-1]["b_mean"]) == 1.0  # the stored model is unchanged
    finally:
        b.close()

    r = server.post("/infer/sum", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({"bundle": True, "alpha": 1.5, "outputs": ["label", "shrinkage"]})})
    assert r.status_code == 200, r.text
    path.write_bytes(r.content)
    manifest = bundle.validate(path)
    assert manifest["alpha"] == 1.5
    shrinkage = {f"shrinkage/{kind}_{level}" for kind in ("encoder", "decoder") for level in range(4)}
    assert {o["name"] for o in manifest["outputs"]} == {"label"} | shrinkage


@pytest.mark.parametrize("alpha", ["lots", -1, 7, [0.5]])
def test_bad_alpha_is_refused(server, trained, alpha):
    before = server.files()
    for params in ({"alpha": alpha}, {"alpha": alpha, "bundle": True}):
        r = server.post("/infer/sum", params={"image": "case_001"}, data={"params": json.dumps(params)})
        assert r.status_code == 400, r.text
        assert "alpha" in r.json()["detail"] and "Traceback" not in r.json()["detail"]
    assert server.files() == before
    assert server.version("sum") == trained


def test_unknown_bundle_output_is_refused(server, trained):
    r = server.post("/infer/sum", params={"image": "case_001"},
                    data={"params": json.dumps({"bundle": True, "outputs": ["components"]})})
    assert r.status_code == 422, r.text
    assert "components" in r.json()["detail"] and "reconstruction" in r.json()["detail"]


def test_sum_serves_attribution_maps_with_faithfulness(server, trained, tmp_path):
    """The attribution options work on `sum` as on `mlcsc`: maps at the requested alpha, with their scores."""
    ask = {"bundle": True, "outputs": ["label"], "alpha": 0.5, "attribution": "gradient",
           "attribution_target": "oedema", "attribution_region": "all"}
    r = server.post("/infer/sum", params={"image": "case_001", "output": "image"}, data={"params": json.dumps(ask)})
    assert r.status_code == 200, r.text
    path = tmp_path / "sum_attr.zip"
    path.write_bytes(r.content)
    manifest = bundle.validate(path)
    outs = {o["name"]: o for o in manifest["outputs"]}
    assert {"label", "attribution/gradient/oedema", "attribution/faithfulness"} <= set(outs)
    assert manifest["alpha"] == 0.5
    f = outs["attribution/gradient/oedema"]["faithfulness"]
    assert set(f) == {"deletion_auc", "insertion_auc"} and all(0.0 <= v <= 1.0 for v in f.values())
    bad = server.post("/infer/sum", params={"image": "case_001"},
                      data={"params": json.dumps({"attribution": "no_such_method"})})
    assert 400 <= bad.status_code < 500 and "no_such_method" in bad.text
