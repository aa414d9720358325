"""`make demo` in a small form: phantoms -> real server -> train over REST -> infer bundle -> PNG."""
import zipfile

import pytest

from sparsesight import bundle
from sparsesight.demo import run

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
    # a second run reuses the checkpoint instead of training again
    run(out=str(tmp_path / "demo"), cases=3, downsample=4, epochs=1)
    assert "checkpoint present" in capsys.readouterr().out
