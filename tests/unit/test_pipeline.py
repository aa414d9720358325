"""Library pipeline on a small phantom: checkpoint versions, training, prediction, the segmentation bundle."""
import numpy as np
import pytest
import torch

from sparsesight import bundle, checkpoint, models
from sparsesight.data.io import load_image, save_nifti
from sparsesight.data.phantom import make_case
from sparsesight.errors import InvalidInput, UnknownModel
from sparsesight.metrics import dice, region_dice
from sparsesight.runners.mlcsc import BUNDLE_OUTPUTS, run_bundle
from sparsesight.runners.segmentation import normalise, predict
from sparsesight.training import train


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("case")
    c = make_case(3, downsample=4)
    img = save_nifti(c.image, c.affine, d / "case_003.nii.gz")
    lab = save_nifti(c.label, c.affine, d / "case_003_label.nii.gz")
    return {"image": str(img), "label": str(lab), "case": c}


def test_registry():
    assert "mlcsc" in models.NAMES
    assert models.default_config("mlcsc")["T"] >= 1
    with pytest.raises(UnknownModel, match="known models: mlcsc"):
        models.build("nope")


@pytest.mark.slow
def test_checkpoint_version_changes_with_weights(tmp_path):
    m = models.build("mlcsc")
    cfg = models.default_config("mlcsc")
    v1 = checkpoint.save(tmp_path / "m.pt", m, "mlcsc", cfg, {"train": {"epochs": 1}})
    assert v1 == checkpoint.save(tmp_path / "m2.pt", m, "mlcsc", cfg) == checkpoint.version_of(tmp_path / "m.pt")
    with torch.no_grad():
        m.readout_bias += 0.01
    v2 = checkpoint.save(tmp_path / "m.pt", m, "mlcsc", cfg)
    assert v2 != v1 and v2.startswith("sha256:")
    loaded, meta = checkpoint.load(tmp_path / "m.pt")
    assert meta["version"] == v2 and torch.equal(loaded.readout_bias, m.readout_bias)
    assert checkpoint.version_of(tmp_path / "missing.pt") is None
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_metrics():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    a[:2] = 3
    b[:1] = 3
    b[1:2] = 1
    assert dice(a == 3, b == 3) == pytest.approx(2 * 16 / (32 + 16))
    r = region_dice(a, b)
    assert r["WT"] == 1.0 and r["ET"] == pytest.approx(2 / 3)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


@pytest.mark.slow
def test_train_predict_bundle(case, tmp_path):
    torch.manual_seed(0)
    m = models.build("mlcsc")
    stats = train(m, [{"image": case["image"], "label": case["label"]}], epochs=2, show_progress=False,
                  config={"patch_size": [32, 32, 32], "samples_per_image": 1, "batch_size": 1})
    assert stats["epochs"] == 2 and all(np.isfinite(stats["loss"]))
    image, affine = load_image(case["image"])
    before = image.copy()
    label = predict(m, image)
    assert np.array_equal(image, before)  # the caller's image is not normalised in place
    assert label.shape == image.shape[1:] and label.dtype == np.uint8 and label.max() <= 3
    path = run_bundle(m, "mlcsc", "sha256:test", case["image"], "case_003", tmp_path / "b.zip")
    manifest = bundle.validate(path)
    assert np.allclose(manifest["affine"], affine)
    names = {o["name"] for o in manifest["outputs"]}
    assert {"label", "probability/enhancing", "component/oedema/FLAIR", "reconstruction/T2", "residual_energy",
            "code_energy/background", "sparsity", "params", "params_plot", "preview"} <= names
    b = bundle.read(path)
    with torch.no_grad():
        whole = m.interpret(normalise(image), contributions=False)["logits"][0].argmax(0).numpy()
    assert np.array_equal(b.volume("label")[0], whole)  # the label is the argmax of the bundle's probabilities
    comps = [b.volume(f"component/{c}/T1ce")[0] for c in ("background", "oedema", "non-enhancing core", "enhancing")]
    recon = b.volume("reconstruction/T1ce")[0]
    step = max(np.abs(c).max() for c in comps) / 32767 * 8  # int16 storage
    assert np.allclose(sum(comps), recon, atol=step + np.abs(recon).max() / 32767 * 2)
    assert len(b.table("params")) == 4 and "consistent" in b.table("params")[0]
    b.close()
    small = run_bundle(m, "mlcsc", "v", case["image"], "case_003", tmp_path / "s", outputs=["label", "params"])
    assert [o["name"] for o in bundle.validate(small)["outputs"]] == ["label", "params"]
    one = run_bundle(m, "mlcsc", "v", case["image"], "case_003", tmp_path / "c", outputs=["label", "components:T1ce"])
    assert sorted(o["name"] for o in bundle.validate(one)["outputs"] if o["name"].startswith("component/")) == [
        f"component/{c}/T1ce" for c in ("background", "enhancing", "non-enhancing core", "oedema")]
    with pytest.raises(InvalidInput, match="unknown modality"):
        run_bundle(m, "mlcsc", "v", case["image"], "case_003", tmp_path / "y.zip", outputs=["components:DWI"])
    with pytest.raises(InvalidInput, match="unknown bundle outputs"):
        run_bundle(m, "mlcsc", "v", case["image"], "case_003", tmp_path / "x.zip", outputs=["label", "nonsense"])
    assert set(BUNDLE_OUTPUTS) >= {"label", "components", "params"}


def test_train_refuses_nothing_to_train():
    with pytest.raises(InvalidInput, match="no labelled images"):
        train(models.build("mlcsc"), [], epochs=1)
