"""The SparseSight MONAI Label app through its REST API, on the real server (see conftest.py)."""
from __future__ import annotations

import gzip
import io
import json
import tempfile
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
from requests_toolbelt.multipart.decoder import MultipartDecoder

from sparsesight import bundle
from sparsesight.data.io import nifti_from_bytes
from sparsesight.explain import quality

pytestmark = pytest.mark.server


# ---------------------------------------------------------------------------------------------- helpers
def nifti_bytes(array, affine, gz=True) -> bytes:
    img = nib.Nifti1Image(np.asarray(array), affine)
    data = img.to_bytes()
    return gzip.compress(data) if gz else data


def case(server, name="case_001"):
    img = nib.load(server.studies / f"{name}.nii.gz")
    return np.asanyarray(img.dataobj), img.affine


def snapshot(server) -> tuple:
    """The datastore as the server lists it, and every file in its folder with a content hash."""
    return server.get("/datastore/", params={"output": "all"}).json(), server.files()


def stray_uploads(server, wait=3.0) -> list:
    """Temporary upload copies left in the server's TMPDIR (the stock endpoints' tmpXXXX.nii.gz files)."""
    deadline = time.time() + wait
    while True:
        left = sorted(p.name for p in server.tmpdir.iterdir() if p.is_file() and p.name not in server.tmp_baseline)
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


def unlabeled(server) -> list:
    objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    return sorted(k for k, v in objects.items() if "final" not in v.get("labels", {}))


def put_label(server, image_id, label=None, tag="final"):
    if label is None:
        label = (server.phantom / "labelsTr" / f"{image_id}.nii.gz").read_bytes()
    return server.put("/datastore/label", params={"image": image_id, "tag": tag},
                      files={"label": (f"{image_id}.nii.gz", label)})


# ---------------------------------------------------------------------------------------------- info
def test_info_lists_model_trainer_strategy(server):
    info = server.info()
    assert "mlcsc" in info["models"]
    assert "mlcsc" in info["trainers"]
    assert "random" in info["strategies"]
    model = info["models"]["mlcsc"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"] == {"oedema": 1, "non-enhancing core": 2, "enhancing": 3}
    assert model["trained"] is True and model["version"].startswith("sha256:")
    assert info["train_stats"]["mlcsc"]["version"] == model["version"]


# ---------------------------------------------------------------------------------------------- infer
def test_infer_returns_label_with_input_geometry(server):
    image, affine = case(server, "case_001")
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"})
    assert r.status_code == 200, r.text
    label, label_affine = nifti_from_bytes(r.content)
    assert label.shape == image.shape[:3]
    np.testing.assert_allclose(label_affine, affine, atol=1e-5)
    assert np.issubdtype(label.dtype, np.integer)
    assert set(np.unique(label)) <= {0, 1, 2, 3}


def test_infer_default_answer_is_multipart_for_stock_clients(server):
    r = server.post("/infer/mlcsc", params={"image": "case_001"})
    assert r.status_code == 200, r.text
    parts = {p.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]: p
             for p in MultipartDecoder(r.content, r.headers["content-type"]).parts}
    params = json.loads(parts["params"].content)
    assert params["model"] == "mlcsc" and params["model_version"] == server.version()
    assert params["image"] == "case_001"
    label, _ = nifti_from_bytes(parts["image"].content)
    assert label.shape == case(server, "case_001")[0].shape[:3]


def test_infer_on_uploaded_file(server):
    image, affine = case(server, "case_002")
    r = server.post("/infer/mlcsc", params={"output": "image"},
                    files={"file": ("mine.nii.gz", (server.studies / "case_002.nii.gz").read_bytes())})
    assert r.status_code == 200, r.text
    label, label_affine = nifti_from_bytes(r.content)
    assert label.shape == image.shape[:3]
    np.testing.assert_allclose(label_affine, affine, atol=1e-5)
    assert stray_uploads(server) == []


def test_infer_bundle_is_valid(server, tmp_path):
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({"bundle": True})})
    assert r.status_code == 200, r.text
    assert zipfile.is_zipfile(io.BytesIO(r.content))
    path = tmp_path / "bundle.zip"
    path.write_bytes(r.content)
    manifest = bundle.validate(path)
    assert manifest["model"] == "mlcsc"
    assert manifest["model_version"] == server.version()
    assert manifest["image"] == "case_001"
    names = {o["name"] for o in manifest["outputs"]}
    assert "label" in names and "params" in names and any(n.startswith("component/") for n in names)
    # explanation quality (issue 16) is measured at every inference: in the manifest, its entries and a table
    eq = manifest["explanation_quality"]
    print("\n".join(quality.summary(eq)))
    assert set(eq["reconstruction"]["per_modality"]) == set(manifest["modalities"])
    assert {"oedema", "non-enhancing core", "enhancing"} == set(eq["localisation"]["per_class"])
    assert eq["parameters"]["step_norms"] and isinstance(eq["faithful"], bool)
    recon = next(o for o in manifest["outputs"] if o["name"] == "reconstruction/T1ce")
    assert isinstance(recon["quality"]["flags"], list) and "quality" in names
    # every map that explains carries its figure: the code energy its localisation, the residual the reconstruction's
    entry = {o["name"]: o for o in manifest["outputs"]}
    assert entry["code_energy/enhancing"]["quality"] == eq["code_localisation"]["per_class"]["enhancing"]
    assert entry["residual_energy"]["quality"] == eq["reconstruction"]


def test_infer_bundle_selected_outputs(server, tmp_path):
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({"bundle": True, "outputs": ["label", "params"]})})
    assert r.status_code == 200, r.text
    path = tmp_path / "bundle.zip"
    path.write_bytes(r.content)
    assert {o["name"] for o in bundle.validate(path)["outputs"]} == {"label", "params"}


# ---------------------------------------------------------------------------------------------- train
def test_put_label_then_train_changes_version(server):
    before = server.version()
    todo = unlabeled(server)
    target = todo[0] if todo else "case_001"
    r = put_label(server, target)
    assert r.status_code == 200, r.text
    assert target not in unlabeled(server)

    status = server.train(epochs=1)
    assert any("epoch 1/1" in line for line in status["details"]), status["details"]
    after = server.version()
    assert after and after != before
    assert server.info()["train_stats"]["mlcsc"]["train"]["previous_version"] == before

    # the infer task reloads the new checkpoint without a restart
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "json"})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == after
    # the plain label answer carries the input checks a bundle's label does (a retrained version: not measured)
    checks = r.json()["checks"]
    assert checks["input_noise"]["sigma_z_max"] > 0 and "not measured" in checks["input_noise"]["note"]
    assert len(checks["input_grid"]["voxel_mm"]) == 3 and checks["flags"] == []
    # series grids are the datastore's word (a PACS study's), never the request's: a forged one changes nothing
    forged = {"T2": {"shape": [4, 4, 4], "affine": np.diag([9.0, 9.0, 9.0, 1.0]).tolist(), "voxel_mm": [9.0] * 3,
                     "sigma": 0.0, "sigma_z": 0.0}}
    r = server.post("/infer/mlcsc", params={"image": "case_001", "output": "json"},
                    data={"params": json.dumps({"series_grids": forged})})
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["input_grid"] == checks["input_grid"]
    assert r.json()["checks"]["input_noise"] == checks["input_noise"]


# ---------------------------------------------------------------------------------------------- active learning
def test_random_strategy_with_one_and_zero_unlabeled(server):
    todo = unlabeled(server)
    assert todo, "the datastore should still have unlabelled images"
    for image_id in todo[:-1]:
        assert put_label(server, image_id).status_code == 200
    last = todo[-1]

    # exactly one left, asked for twice within the same second (the stock strategy's 500)
    for _ in range(3):
        r = server.post("/activelearning/random", json={})
        assert r.status_code == 200, r.text
        assert r.json()["id"] == last

    assert put_label(server, last).status_code == 200
    r = server.post("/activelearning/random", json={})
    assert r.status_code == 200, r.text
    assert r.json()["id"] is None
    assert "no unlabelled image left" in r.json()["message"]


# ---------------------------------------------------------------------------------------------- bad input
def _bad_inputs():
    """(name, request builder) pairs; each builder gets the server and returns a requests.Response."""
    def image4d(server, **change):
        data, affine = case(server, "case_001")
        data = data.astype(np.float32)
        if "channels" in change:
            data = data[..., : change["channels"]] if change["channels"] > 1 else data[..., 0]
        if change.get("nan"):
            data[10, 10, 10, 0] = np.nan
            data[12, 12, 12, 2] = np.inf
        return nifti_bytes(data, affine)

    def truncated(server):
        raw = (server.studies / "case_001.nii.gz").read_bytes()
        return raw[: len(raw) // 2]

    def upload(image_id="new_case", make=lambda s: image4d(s), filename="new.nii.gz"):
        return lambda s: s.put("/datastore/image", params={"image": image_id} if image_id is not None else {},
                               files={"file": (filename, make(s))})

    def label_for(image_id, make, tag="final"):
        return lambda s: s.put("/datastore/label", params={"image": image_id, "tag": tag},
                               files={"label": ("label.nii.gz", make(s))})

    def good_label(s):
        return (s.phantom / "labelsTr" / "case_001.nii.gz").read_bytes()

    def label_array(s, shape=None, value=1):
        _, affine = case(s, "case_001")
        shape = shape or case(s, "case_001")[0].shape[:3]
        lab = np.zeros(shape, np.uint8)
        lab[5:10, 5:10, 5:10] = value
        return nifti_bytes(lab, affine)

    def infer(model="mlcsc", image="case_001", file=None, params=None):
        def go(s):
            kw = {"params": {"image": image} if image is not None else {}}
            if file is not None:
                kw["files"] = {"file": ("x.nii.gz", file(s))}
            if params is not None:
                kw["data"] = {"params": params}
            return s.post(f"/infer/{model}", **kw)
        return go

    def smaller_image(s):
        data, affine = case(s, "case_000")
        return nifti_bytes(data[:40, :40, :30], affine)

    return [
        ("unknown model (infer)", infer(model="unet9000"), 404, "mlcsc"),
        ("unknown model (train)", lambda s: s.post("/train/unet9000", json={"epochs": 1}), 404, "mlcsc"),
        ("unknown image id", infer(image="case_999"), 404, "case_999"),
        ("no image and no file", infer(image=None), 400, "image"),
        ("image id ../", infer(image="../datastore/case_001"), 400, "path"),
        ("image id absolute", infer(image="/etc/passwd"), 400, "path"),
        ("image id backslash", infer(image="..\\case_001"), 400, "path"),
        ("image id ..", infer(image=".."), 400, ".."),
        ("infer on a truncated upload", infer(image=None, file=truncated), 422, "truncated"),
        ("infer params not JSON", infer(params="{bundle: yes"), 400, "JSON"),
        ("unknown bundle output", infer(params=json.dumps({"bundle": True, "outputs": ["nope"]})), 422, "nope"),
        ("upload: not an image", upload(make=lambda s: b"hello, I am a text file\n", filename="notes.txt"),
         415, "NIfTI"),
        ("upload: gzip but not NIfTI", upload(make=lambda s: gzip.compress(b"x" * 1000)), 422,
         "NIfTI"),
        ("upload: truncated NIfTI", upload(make=truncated), 422, "truncated"),
        ("upload: 3 channels", upload(make=lambda s: image4d(s, channels=3)), 422, "channels"),
        ("upload: 3D single channel", upload(make=lambda s: image4d(s, channels=1)), 422, "4D"),
        ("upload: NaN/Inf voxels", upload(make=lambda s: image4d(s, nan=True)), 422, "NaN"),
        ("upload: id with ../", upload(image_id="../evil"), 400, "path"),
        ("upload: absolute id", upload(image_id=tempfile.gettempdir() + "/evil"), 400, "path"),
        ("upload: id ..", upload(image_id=".."), 400, ".."),
        ("upload: replaces a labelled image with another shape", upload(image_id="case_000", make=smaller_image),
         409, "shape"),
        ("label: shape differs from image", label_for("case_001", lambda s: label_array(s, shape=(30, 30, 20))),
         422, "shape"),
        ("label: values outside 0..3", label_for("case_001", lambda s: label_array(s, value=7)), 422, "0..3"),
        ("label: not an image", label_for("case_001", lambda s: b"not a label"), 415, "NIfTI"),
        ("label: truncated", label_for("case_001", lambda s: good_label(s)[:200]), 422, "truncated"),
        ("label: unknown image id", label_for("case_999", good_label), 404, "case_999"),
        ("label: image id with ../", label_for("../case_001", good_label), 400, "path"),
        ("label: tag with ../", label_for("case_001", good_label, tag="../../evil"), 400, "path"),
        ("train: bad epochs", lambda s: s.post("/train/mlcsc", json={"epochs": "many"}), 400, "epochs"),
        ("train: bad range_noise", lambda s: s.post("/train/sum", json={"epochs": 1, "train_config": {
            "range_noise": [0.5, 3]}}), 400, "range_noise"),
        ("train: unknown augment", lambda s: s.post("/train/mlcsc", json={"epochs": 1, "train_config": {
            "augment": "heavy"}}), 400, "augment"),
        ("delete: unknown image", lambda s: s.delete("/datastore/image", params={"id": "case_999"}), 404,
         "case_999"),
        ("delete: id with ../", lambda s: s.delete("/datastore/image", params={"id": "../datastore"}), 400,
         "path"),
        ("image info: unknown image", lambda s: s.get("/datastore/image/info", params={"image": "case_999"}), 404,
         "case_999"),
        # what the input checks trust (a PACS study's series grids and noise) is the server's to write
        ("image info: series_grids", lambda s: s.put("/datastore/image/info", params={"image": "case_001"}, data={
            "info": json.dumps({"series_grids": {"T2": {"sigma": 0}}})}), 400, "written by the server"),
        ("upload: series_grids in its info", lambda s: s.put(
            "/datastore/image", params={"image": "new_case"}, files={"file": ("new.nii.gz", image4d(s))},
            data={"params": json.dumps({"series_grids": {}})}), 400, "written by the server"),
    ]


BAD = _bad_inputs()


@pytest.mark.parametrize("name,request_fn,status,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_reason(server, name, request_fn, status, reason):
    before = snapshot(server)
    r = request_fn(server)
    assert r.status_code == status, f"{name}: {r.status_code} {r.text[:500]}"
    detail = r.json()["detail"]
    assert isinstance(detail, str) and reason.lower() in detail.lower(), detail
    assert "Traceback" not in detail
    assert snapshot(server) == before, "the datastore changed"
    assert stray_uploads(server) == [], "a refused upload left its temporary copy behind"
    for outside in (server.studies.parent / "evil.nii.gz", server.studies.parent.parent / "evil.nii.gz"):
        assert not outside.exists()
    assert server.get("/info/").status_code == 200


def test_fresh_app_refuses_infer_and_train_with_the_way_out(server, tmp_path_factory):
    """A new datastore: infer answers 409 (no checkpoint: train first), train 409 (no final label: save one)."""
    import requests

    from sparsesight.server import MonaiLabelServer

    work = tmp_path_factory.mktemp("fresh")
    studies = work / "datastore"
    studies.mkdir()
    with MonaiLabelServer(studies, conf={"model_dir": work / "model", "pretrained": "false"},
                          log_path=work / "server.log") as url:
        r = requests.post(f"{url}/activelearning/random", json={}, timeout=60)
        assert r.status_code == 200 and r.json()["id"] is None and "no images" in r.json()["message"]
        image = (server.phantom / "imagesTr" / "case_003.nii.gz").read_bytes()
        r = requests.put(f"{url}/datastore/image", params={"image": "case_003"},
                         files={"file": ("case_003.nii.gz", image)}, timeout=60)
        assert r.status_code == 200, r.text
        assert requests.get(f"{url}/info/", timeout=60).json()["models"]["mlcsc"]["version"] is None
        r = requests.post(f"{url}/infer/mlcsc", params={"image": "case_003"}, timeout=60)
        assert r.status_code == 409, r.text
        assert "POST /train/mlcsc first" in r.json()["detail"]
        r = requests.post(f"{url}/train/mlcsc", json={"epochs": 1}, timeout=60)
        assert r.status_code == 409, r.text
        assert "PUT /datastore/label" in r.json()["detail"]
        assert requests.get(f"{url}/train/", timeout=60).status_code == 404  # no training process was started


def test_valid_upload_is_stored_and_served(server):
    """An uncompressed .nii upload under a new id is stored as such, listed, and can be segmented."""
    data, affine = case(server, "case_002")
    r = server.put("/datastore/image", params={"image": "uploaded_case"},
                   files={"file": ("whatever.bin", nifti_bytes(data, affine, gz=False))})
    assert r.status_code == 200, r.text
    assert (server.studies / "uploaded_case.nii").is_file()
    assert "uploaded_case" in server.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert stray_uploads(server) == []
    r = server.post("/infer/mlcsc", params={"image": "uploaded_case", "output": "image"})
    assert r.status_code == 200, r.text
    assert nifti_from_bytes(r.content)[0].shape == data.shape[:3]
