"""The `cdl` reconstruction task (seed 001) on the real MONAI Label server (see conftest.py).

Training uses the datastore's images as references (no labels; the session datastore labels one image only).
CPU sizes: the served model has the reference settings (K = 32 filters of 9x9, 64 FISTA iterations); training
runs 2 steps on 32x32 crops, and inference swaps in the stored 8-filter dictionary (V3 takes any dictionary)."""
from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from sparsesight import bundle
from sparsesight.data import lfmri
from sparsesight.data.io import nifti_from_bytes

pytestmark = pytest.mark.server

TRAIN = {"steps_per_epoch": 2, "batch_size": 1, "crop": 32}
FAST = {"dictionary": "K8_k7", "batch": 8}


def _infer(server, params, image="case_001", **kw):
    return server.post("/infer/cdl", params={"image": image, "output": "image"} if image else {"output": "image"},
                       data={"params": json.dumps(params)}, **kw)


@pytest.fixture(scope="module")
def trained(server):
    info = server.info()
    assert "cdl" in info["models"] and "cdl" in info["trainers"]
    assert info["models"]["cdl"]["config"]["sigma"] == 0.15  # the options with their defaults
    before = server.version("cdl")
    if before is None:  # nothing trained yet: infer says what to do
        r = _infer(server, FAST)
        assert r.status_code == 409 and "POST /train/cdl" in r.text
    status = server.train(model="cdl", epochs=1, train_config=TRAIN)
    after = server.version("cdl")
    assert after and after != before
    return status


def test_train_uses_images_without_labels(server, trained):
    lines = "\n".join(trained["details"])
    # every 4-channel datastore image is a reference, labelled or not (other tests may have added some)
    n_images = int(re.search(r"of (\d+) image\(s\)", lines).group(1))
    assert "reference slices" in lines and n_images >= 4 and "epoch 1/1" in lines, lines
    stats = server.info()["train_stats"]["cdl"]["train"]
    assert stats["slices"] > 4 and stats["final_loss"] > 0


def test_infer_returns_reconstruction_in_input_geometry(server, trained):
    r = _infer(server, FAST)
    assert r.status_code == 200, r.text
    rec, affine = nifti_from_bytes(r.content)
    img = nib.load(server.studies / "case_001.nii.gz")
    assert rec.shape == img.shape[:3]
    np.testing.assert_allclose(affine, img.affine, atol=1e-5)
    t2 = np.asanyarray(img.dataobj)[..., 3].astype(np.float32)
    brain = t2 > 0
    assert np.isfinite(rec).all() and rec.min() >= 0
    assert abs(rec[brain].mean() - t2[brain].mean()) < 0.25 * t2[brain].mean()  # same intensity units


def test_infer_bundle_has_maps_and_metrics(server, trained, tmp_path):
    r = _infer(server, {**FAST, "bundle": True, "channel": "FLAIR", "sigma": 0.1, "keep": 0.625})
    assert r.status_code == 200, r.text
    path = tmp_path / "cdl.zip"
    path.write_bytes(r.content)
    man = bundle.validate(path)
    assert man["model"] == "cdl" and man["model_version"] == server.version("cdl") and man["image"] == "case_001"
    assert man["acquisition"]["channel"] == "FLAIR" and man["acquisition"]["dictionary"] == "K8_k7"
    names = {o["name"] for o in man["outputs"]}
    assert {"reconstruction", "zero_filled", "reference", "lambda_mean", "lambda_min", "code_energy", "metrics",
            "lambda_stats", "preview"} <= names
    assert {n for n in names if n.startswith("lambda/")} == {f"lambda/k{i:02d}" for i in range(8)}
    b = bundle.read(path)
    rows = {row["image"]: row for row in b.table("metrics")}
    assert 0 < float(rows["reconstruction"]["ssim"]) <= 1 and float(rows["zero_filled"]["mse"]) > 0
    assert b.volume("lambda/k05")[0].min() >= 0
    b.close()


def test_infer_on_uploaded_kspace(server, trained, tmp_path):
    img = nib.load(server.studies / "case_002.nii.gz")
    ks, _, _ = lfmri.simulate_volume(np.asanyarray(img.dataobj)[..., 3].astype(np.float32), "random",
                                     acceleration=2, sigma=0.1)
    f = tmp_path / "k.nii.gz"
    nib.save(nib.Nifti1Image(ks, img.affine), str(f))
    r = server.post("/infer/cdl", params={"output": "image"}, files={"file": ("k.nii.gz", f.read_bytes())},
                    data={"params": json.dumps({**FAST, "bundle": True, "outputs": ["reconstruction", "metrics"]})})
    assert r.status_code == 200, r.text
    out = tmp_path / "k.zip"
    out.write_bytes(r.content)
    man = bundle.validate(out)
    assert {o["name"] for o in man["outputs"]} == {"reconstruction"} and man["acquisition"]["input"] == "kspace"


@pytest.mark.parametrize("params,reason", [
    ({"sigma": 5}, "sigma"), ({"channel": "DWI"}, "channel"), ({"mask": "radial"}, "mask"),
    ({"dictionary": "K99_k3"}, "K32_k9"), ({"bundle": True, "outputs": ["label"]}, "unknown bundle outputs"),
])
def test_bad_options_are_refused_with_reason(server, trained, params, reason):
    before = sorted(p.name for p in server.studies.rglob("*") if p.is_file())
    r = _infer(server, {**FAST, **params})
    assert r.status_code == 400 and reason in r.text, r.text
    assert sorted(p.name for p in server.studies.rglob("*") if p.is_file()) == before


def test_bad_train_requests_are_refused(server, trained):
    r = server.post("/train/cdl", json={"epochs": 1, "train_config": {"lr0": 1}})
    assert r.status_code == 400 and "lr0" in r.text
    r = server.post("/train/cdl", json={"epochs": 1, "channel": "DWI"})
    assert r.status_code == 400 and "channel" in r.text
