"""Result bundle protocol: write, read, validate, and refusal of broken bundles."""
import json
import zipfile

import numpy as np
import pytest

from sparsesight import bundle
from sparsesight.errors import BundleError

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def _writer(shape=(6, 5, 4)):
    return bundle.BundleWriter("mlcsc", "sha256:0123456789abcdef", "case_003", AFFINE, shape)


@pytest.mark.parametrize("suffix", [".zip", ""])
def test_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (6, 5, 4))
    comp = rng.normal(size=(6, 5, 4)).astype(np.float32)
    w = _writer()
    w.add_volume("label", label, kind="labelmap", classes={1: "oedema", 2: "non-enhancing core", 3: "enhancing"})
    w.add_volume("component/enhancing/T1ce", comp)
    w.add_volume("component/enhancing/T2", comp * 100, dtype=np.int16)
    w.add_table("params", [{"class": "oedema", "lam_c1": 0.01}, {"class": "enhancing", "lam_c1": -0.004, "note": "x"}])
    w.add_plot("preview", b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    path = w.write(tmp_path / f"result{suffix}")
    m = bundle.validate(path)
    assert m["model"] == "mlcsc" and m["image"] == "case_003"
    assert [o["kind"] for o in m["outputs"]] == ["labelmap", "scalar", "scalar", "table", "plot"]
    b = bundle.read(path)
    lab, aff = b.volume("label")
    assert lab.dtype == np.uint8 and np.array_equal(lab, label) and np.allclose(aff, AFFINE)
    assert np.allclose(b.volume("component/enhancing/T1ce")[0], comp, atol=1e-6)
    # int16 storage with the NIfTI slope keeps values to within one quantisation step
    step = np.abs(comp * 100).max() / 32767 * 2
    assert np.allclose(b.volume("component/enhancing/T2")[0], comp * 100, atol=step)
    assert b.table("params")[1] == {"class": "enhancing", "lam_c1": "-0.004", "note": "x"}
    assert b.output("label")["classes"]["3"] == "enhancing"
    b.close()


def test_writer_refuses_bad_outputs():
    w = _writer()
    with pytest.raises(BundleError, match="shape"):
        w.add_volume("x", np.zeros((3, 3, 3)))
    with pytest.raises(BundleError, match="class names"):
        w.add_volume("label", np.zeros((6, 5, 4)), kind="labelmap")
    w.add_volume("a", np.zeros((6, 5, 4)))
    with pytest.raises(BundleError, match="duplicate"):
        w.add_volume("a", np.zeros((6, 5, 4)))
    with pytest.raises(BundleError, match="PNG"):
        w.add_plot("p", b"GIF89a")


def _rewrite(path, manifest=None, drop=None, add=None):
    src = zipfile.ZipFile(path)
    out = path.with_name("broken.zip")
    with zipfile.ZipFile(out, "w") as z:
        for n in src.namelist():
            if n == drop:
                continue
            data = json.dumps(manifest).encode() if (n == "manifest.json" and manifest) else src.read(n)
            z.writestr(n, data)
        for n, data in (add or {}).items():
            z.writestr(n, data)
    return out


def test_validate_finds_protocol_violations(tmp_path):
    w = _writer()
    w.add_volume("label", np.ones((6, 5, 4)), kind="labelmap", classes={1: "oedema"})
    w.add_volume("s", np.ones((6, 5, 4)))
    path = w.write(tmp_path / "ok.zip")
    m = bundle.validate(path)
    with pytest.raises(BundleError, match="missing"):
        bundle.validate(_rewrite(path, drop="s.nii.gz"))
    bad = json.loads(json.dumps(m))
    del bad["model_version"]
    with pytest.raises(BundleError, match="model_version"):
        bundle.validate(_rewrite(path, manifest=bad))
    bad = json.loads(json.dumps(m))
    bad["outputs"][1]["file"] = "../s.nii.gz"
    with pytest.raises(BundleError, match="plain name"):
        bundle.validate(_rewrite(path, manifest=bad))
    # a volume on another grid breaks "all volumes share the input's affine"
    other = bundle.BundleWriter("mlcsc", "v", "i", np.eye(4), (6, 5, 4))
    other.add_volume("s", np.ones((6, 5, 4)))
    odd = other.write(tmp_path / "other")
    with pytest.raises(BundleError, match="geometry"):
        bundle.validate(_rewrite(path, drop="s.nii.gz", add={"s.nii.gz": (odd / "s.nii.gz").read_bytes()}))
    with pytest.raises(BundleError, match="not a result bundle"):
        (tmp_path / "junk.zip").write_bytes(b"not a zip")
        bundle.validate(tmp_path / "junk.zip")


def test_explanation_quality_is_kept_and_checked(tmp_path):
    w = _writer()
    w.add_volume("label", np.ones((6, 5, 4)), kind="labelmap", classes={1: "oedema"})
    q = {"relative_error": 0.9, "flags": ["FLAIR: relative error 0.9 > 0.15"], "faithful": False}
    w.add_volume("reconstruction/FLAIR", np.ones((6, 5, 4)), quality=q)
    w.manifest["explanation_quality"] = {"reconstruction": {"per_modality": {"FLAIR": q}, "flags": q["flags"],
                                                            "faithful": False}, "faithful": False}
    path = w.write(tmp_path / "q.zip")
    m = bundle.validate(path)
    assert m["outputs"][1]["quality"] == q and m["explanation_quality"]["faithful"] is False
    for broken in ({"flags": "FLAIR"}, {"faithful": "no"}, {"reconstruction": {"flags": [1]}}, [0.9]):
        bad = json.loads(json.dumps(m))
        bad["explanation_quality"] = broken
        with pytest.raises(BundleError, match="quality"):
            bundle.validate(_rewrite(path, manifest=bad))
    bad = json.loads(json.dumps(m))
    bad["outputs"][1]["quality"]["flags"] = None
    with pytest.raises(BundleError, match="reconstruction/FLAIR: quality flags"):
        bundle.validate(_rewrite(path, manifest=bad))
