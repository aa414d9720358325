"""Attribution maps served by the real MONAI Label server (see conftest.py): in the bundle with their
faithfulness, and as a plain NIfTI for stock clients."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sparsesight import bundle
from sparsesight.data.io import nifti_image_from_bytes

pytestmark = pytest.mark.server

ASK = {"attribution": "ig,gradient", "attribution_target": "enhancing", "attribution_steps": 4,
       "attribution_region": "all"}


def _nifti(data: bytes):
    img = nifti_image_from_bytes(data)
    return img.get_fdata(dtype=np.float32), img.affine


def test_info_lists_the_attribution_options(server):
    config = server.info()["models"]["mlcsc"]["config"]
    for key in ("attribution", "attribution_target", "attribution_steps", "attribution_baseline",
                "attribution_nifti"):
        assert key in config


def test_bundle_holds_maps_with_faithfulness_and_plain_nifti_is_the_same_map(server, tmp_path):
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({"bundle": True, "outputs": ["label"], **ASK})})
    assert r.status_code == 200, r.text
    path = tmp_path / "bundle.zip"
    path.write_bytes(r.content)
    manifest = bundle.validate(path)
    outs = {o["name"]: o for o in manifest["outputs"]}
    assert set(outs) == {"label", "attribution/ig/enhancing", "attribution/gradient/enhancing",
                         "attribution/faithfulness", "attribution/quality"}
    ig = outs["attribution/ig/enhancing"]
    assert ig["kind"] == "scalar" and ig["method"] == "integrated_gradients"
    assert ig["target"] == "enhancing" and ig["steps"] == 4 and ig["baseline"] == "zero"
    for name in ("attribution/ig/enhancing", "attribution/gradient/enhancing"):
        f = outs[name]["faithfulness"]
        assert set(f) == {"deletion_auc", "insertion_auc"}
        assert all(0.0 <= v <= 1.0 for v in f.values())
        # measured against a random ranking and the Sobel edge map of the same image and region
        q = outs[name]["quality"]
        assert q["deletion_auc"] == pytest.approx(f["deletion_auc"], abs=1e-6)
        for ref in ("random", "sobel"):
            assert q[f"deletion_gain_vs_{ref}"] > 0 and q[f"insertion_gain_vs_{ref}"] > 0
        assert q["faithful"] == (q["deletion_gain_vs_random"] > 1.0)
        assert any(f.startswith("not faithful") for f in q["flags"]) == (not q["faithful"])
    b = bundle.read(path)
    rows = b.table("attribution/quality")
    assert {(r["scope"], r["metric"]) for r in rows} >= {("ig/enhancing", "deletion_gain_vs_random"),
                                                          ("gradient/enhancing", "faithful")}
    status = {r["scope"]: r["status"] for r in rows if r["metric"] == "faithful"}
    assert status["ig/enhancing"] == ("ok" if outs["attribution/ig/enhancing"]["quality"]["faithful"] else "FAIL")
    bundled, affine = b.volume("attribution/ig/enhancing")
    label, _ = b.volume("label")
    b.close()
    assert bundled.shape == label.shape and np.abs(bundled).max() > 0

    # a stock client (no bundle) gets the same map as the NIfTI answer
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({**ASK, "attribution": "ig", "attribution_nifti": True})})
    assert r.status_code == 200, r.text
    plain, plain_affine = _nifti(r.content)
    np.testing.assert_allclose(plain_affine, affine, atol=1e-5)
    np.testing.assert_allclose(plain, bundled, rtol=1e-4, atol=1e-6 * np.abs(bundled).max())

    # without attribution_nifti the answer stays the label
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps(ASK)})
    assert r.status_code == 200, r.text
    lab, _ = _nifti(r.content)
    assert set(np.unique(lab)) <= {0, 1, 2, 3}


def test_a_point_in_world_millimetres_explains_the_voxel_that_holds_it(server, tmp_path):
    """attribution_point (a viewer's cursor, in the image's world mm) is the voxel of the bundle's grid that holds
    it: the same map as attribution_region at that voxel; a point off the image is refused with the reason."""
    import nibabel as nib

    affine = nib.load(server.studies / "case_001.nii.gz").affine
    ijk = (30, 28, 20)
    xyz = (affine @ np.r_[ijk, 1.0])[:3] + 0.3  # off the voxel centre, inside the voxel
    one = {"attribution": "gradient", "attribution_target": "WT", "attribution_steps": 1, "bundle": True,
           "outputs": ["label"]}
    maps = {}
    for key, value in (("attribution_point", ",".join(f"{v:.3f}" for v in xyz)),
                       ("attribution_region", ",".join(map(str, ijk)))):
        r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                        data={"params": json.dumps({**one, key: value})})
        assert r.status_code == 200, r.text
        path = tmp_path / f"{key}.zip"
        path.write_bytes(r.content)
        entry = {o["name"]: o for o in bundle.validate(path)["outputs"]}["attribution/gradient/WT"]
        b = bundle.read(path)
        maps[key] = (b.volume("attribution/gradient/WT")[0], entry["region"])
        b.close()
    assert f"voxel {list(ijk)}" in maps["attribution_point"][1] and maps["attribution_point"][1].startswith("point")
    np.testing.assert_allclose(maps["attribution_point"][0], maps["attribution_region"][0], rtol=1e-5, atol=1e-8)
    far = (affine @ np.r_[-50, 0, 0, 1.0])[:3]
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({**one, "attribution_point": list(far)})})
    assert 400 <= r.status_code < 500 and "lies outside the image" in r.text, r.text


@pytest.mark.parametrize("params, reason", [
    ({"attribution": "ig", "attribution_point": "1,2"}, "attribution_point must be three"),
    ({"attribution": "ig", "attribution_point": "1,2,3", "attribution_region": "all"}, "not both"),
    ({"attribution": "lime"}, "unknown attribution method"),
    ({"attribution": "ig", "attribution_target": "tumour"}, "unknown attribution_target"),
    ({"attribution": "ig", "attribution_steps": 100000}, "attribution_steps"),
    ({"attribution": "ig", "attribution_baseline": "grey"}, "attribution_baseline"),
    ({"attribution_nifti": True}, "name the method"),
])
def test_bad_attribution_options_are_refused_with_the_reason(server, params, reason):
    before = sorted(p.name for p in server.studies.rglob("*") if p.is_file())
    for extra in ({"bundle": True}, {}):
        r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                        data={"params": json.dumps({**extra, **params})})
        assert 400 <= r.status_code < 500, r.text
        assert reason in r.text
    assert sorted(p.name for p in server.studies.rglob("*") if p.is_file()) == before
