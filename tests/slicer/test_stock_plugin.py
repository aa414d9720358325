"""The stock MONAI Label Slicer plugin keeps working against our server.

The plugin's REST client (MONAILabelLib/client.py in the plugin) is the one the monailabel wheel ships as
monailabel/client/client.py (MONAILabelClient); it talks http.client and multipart exactly as the plugin does.
Default answers of our infer task are plain label NIfTI files, which is all the plugin reads.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monailabel.client.client import MONAILabelClient, MONAILabelClientException

pytestmark = [pytest.mark.slicer, pytest.mark.server]


@pytest.fixture
def stock(server, tmp_path):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path))


def test_stock_client_lists_models_and_labels(stock):
    info = stock.info()
    assert "mlcsc" in info["models"]
    model = info["models"]["mlcsc"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"] == {"oedema": 1, "non-enhancing core": 2, "enhancing": 3}
    assert "random" in info["strategies"] and "mlcsc" in info["trainers"]
    objects = stock.datastore()["objects"]
    assert "case_001" in objects


def test_stock_client_gets_a_label(server, stock):
    path, params = stock.infer("mlcsc", "case_001", {})
    label = nib.load(path)
    image = nib.load(server.studies / "case_001.nii.gz")
    assert label.shape == image.shape[:3]
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
    values = set(np.unique(np.asarray(label.dataobj)).tolist())
    assert values <= {0, 1, 2, 3}
    assert params["model"] == "mlcsc" and params["label_names"] == {"oedema": 1, "non-enhancing core": 2,
                                                                    "enhancing": 3}


def test_stock_client_saves_a_label_and_reads_the_train_status(server, stock, tmp_path):
    path, _ = stock.infer("mlcsc", "case_003", {})
    answer = stock.save_label("case_003", path, tag="stock_plugin")
    assert answer["image"] == "case_003"
    assert "stock_plugin" in stock.datastore()["objects"]["case_003"]["labels"]
    stored = nib.load(server.studies / "labels" / "stock_plugin" / "case_003.nii.gz")
    np.testing.assert_array_equal(np.asarray(stored.dataobj), np.asarray(nib.load(path).dataobj))
    status = stock.train_status()  # the fixture trained once
    assert status["status"] in ("DONE", "RUNNING", "SUBMITTED")
    sample = stock.next_sample("random", {})
    assert "id" in sample


def test_stock_client_sees_the_reason_of_a_refusal(stock):
    with pytest.raises(MONAILabelClientException) as err:
        stock.infer("unet9000", "case_001", {})
    assert "404" in err.value.msg
    detail = json.loads(err.value.msg.split("Response: ", 1)[1])["detail"]
    assert "unknown model 'unet9000'" in detail and "mlcsc" in detail
