"""Issue 18, part A: checkpoints are data, not code; model upload is off unless enabled with a token."""
from __future__ import annotations

import io

import pytest
import torch
from reliability_servers import leaked_paths, make_datastore, start, stray_tmp, write_checkpoints

from sparsesight import checkpoint, models
from sparsesight.errors import InvalidInput

pytestmark = pytest.mark.server

TOKEN = "part-a-upload-token-0123456789"


class Payload:
    """Unpickling this object calls open(marker, "w"): the file appears iff the loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted(marker) -> bytes:
    """A checkpoint-shaped torch file whose 'meta' would create `marker` when loaded with weights_only=False."""
    good = io.BytesIO()
    torch.save({"model": "mlcsc", "config": models.default_config("mlcsc"),
                "state_dict": models.build("mlcsc").state_dict(), "version": "sha256:0", "meta": Payload(marker)}, good)
    return good.getvalue()


def test_the_crafted_payload_is_live(tmp_path):
    """The control: the old loader (weights_only=False) would have created the marker."""
    marker = tmp_path / "pwned"
    torch.load(io.BytesIO(crafted(marker)), weights_only=False)
    assert marker.exists()


def test_crafted_pickle_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mlcsc.pt"
    path.write_bytes(crafted(marker))
    with pytest.raises(InvalidInput, match="not a usable checkpoint"):
        checkpoint.load(path)
    with pytest.raises(InvalidInput):
        checkpoint.version_of(path)
    assert not marker.exists()


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_bad_checkpoints_raise_invalid_input_with_a_reason(tmp_path):
    net, cfg = models.build("mlcsc"), models.default_config("mlcsc")
    path = tmp_path / "ok.pt"
    checkpoint.save(path, net, "mlcsc", cfg)
    state = {k: v for k, v in net.state_dict().items()}
    key = next(k for k, v in state.items() if v.ndim >= 1 and v.numel() > 1)
    cases = {
        "truncated": (path.read_bytes()[: path.stat().st_size // 2], "not a usable checkpoint"),
        "garbage": (b"\x00garbage" * 100, "not a usable checkpoint"),
        "a list": (_save([1, 2, 3]), "expected a dict"),
        "no state_dict": (_save({"model": "mlcsc", "config": cfg}), "missing state_dict"),
        "unknown model": (_save({"model": "nope", "config": {}, "state_dict": {}}), "unknown model 'nope'"),
        "bad config": (_save({"model": "mlcsc", "config": {"bogus": 1}, "state_dict": state}), "config"),
        # ~170 GB of weights if built: refused from the shapes on the meta device, nothing allocated
        "huge config": (_save({"model": "mlcsc", "config": {**cfg, "atoms": [8, 16, 16, 10**8]},
                               "state_dict": state}), "do not fit a mlcsc model"),
        "shape mismatch": (_save({"model": "mlcsc", "config": cfg,
                                  "state_dict": {**state, key: torch.zeros(state[key].numel() + 1)}}), key),
        "missing tensor": (_save({"model": "mlcsc", "config": cfg,
                                  "state_dict": {k: v for k, v in state.items() if k != key}}), key),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(InvalidInput) as e:
            checkpoint.load_payload(data)
        assert reason in str(e.value), (name, str(e.value))
    with pytest.raises(InvalidInput, match="not 'sum'"):
        checkpoint.load(path, expect="sum")


def test_version_computed_from_the_weights_not_read_from_the_file(tmp_path):
    net, cfg = models.build("mlcsc"), models.default_config("mlcsc")
    version = checkpoint.save(tmp_path / "m.pt", net, "mlcsc", cfg, meta={"train": {"epochs": 1}})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["version"] = "sha256:forged"
    (tmp_path / "forged.pt").write_bytes(_save(payload))
    assert checkpoint.load(tmp_path / "forged.pt")[1]["version"] == version
    assert checkpoint.version_of(tmp_path / "forged.pt") == version


def test_trainer_metadata_is_weights_only_loadable(tmp_path):
    """numpy scalars, tuples and paths in meta (as trainers produce) are stored as plain values."""
    import numpy as np

    meta = {"train": {"final_loss": np.float32(0.5), "epochs": np.int64(3), "shape": (1, 2), "where": tmp_path,
                      "loss": np.array([1.0, 0.5])}}
    config = {k: np.int64(v) if type(v) is int else v for k, v in models.default_config("mlcsc").items()}
    assert any(isinstance(v, np.int64) for v in config.values())
    version = checkpoint.save(tmp_path / "m.pt", models.build("mlcsc"), "mlcsc", config, meta=meta)
    train = torch.load(tmp_path / "m.pt", weights_only=True)["meta"]["train"]
    assert train == {"final_loss": 0.5, "epochs": 3, "shape": [1, 2], "where": str(tmp_path), "loss": [1.0, 0.5]}
    assert checkpoint.version_of(tmp_path / "m.pt") == version  # the stored (plain) config is the hashed one


# ---------------------------------------------------------------------------------------------- the server
def test_crafted_checkpoint_in_the_model_dir_is_not_run(server, tmp_path):
    """The server loads model files weights-only too: a crafted sum.pt shows as an error, runs nothing."""
    marker = tmp_path / "pwned-by-server"
    good = (server.model_dir / "sum.pt").read_bytes()
    try:
        (server.model_dir / "sum.pt").write_bytes(crafted(marker))
        info = server.info()["models"]["sum"]
        assert info["trained"] is False and "not a usable checkpoint" in info["error"]
        assert not marker.exists()
    finally:
        (server.model_dir / "sum.pt").write_bytes(good)
    assert server.info()["models"]["sum"]["trained"] is True


def test_model_upload_off_by_default(server):
    before = (server.model_dir / "mlcsc.pt").read_bytes()
    r = server.put("/model/mlcsc", files={"file": ("mlcsc.pt", before)})
    assert r.status_code == 403, r.text
    assert "allow_model_upload" in r.json()["detail"] and "api_token" in r.json()["detail"]
    assert (server.model_dir / "mlcsc.pt").read_bytes() == before


@pytest.fixture(scope="module")
def upload_server(tmp_path_factory):
    """A server that accepts uploads: allow_model_upload and an API token; uploads up to 8 MiB."""
    work = tmp_path_factory.mktemp("upload")
    studies, phantom = make_datastore(work)
    write_checkpoints(work / "model")
    srv = start(work, studies, phantom, name="upload",
                conf={"allow_model_upload": "true", "api_token": TOKEN, "max_upload_bytes": 8 << 20})
    try:
        yield srv
    finally:
        srv.process.stop()


def test_upload_needs_the_token_even_when_enabled(upload_server):
    before = (upload_server.model_dir / "mlcsc.pt").read_bytes()
    r = upload_server.put("/model/mlcsc", files={"file": ("mlcsc.pt", before)})
    assert r.status_code == 401, r.text
    assert (upload_server.model_dir / "mlcsc.pt").read_bytes() == before


def test_upload_validated_weights_only_and_versioned_by_the_server(upload_server, tmp_path):
    srv, auth = upload_server, {"Authorization": f"Bearer {TOKEN}"}
    path = srv.model_dir / "mlcsc.pt"
    before = path.read_bytes()
    marker = tmp_path / "pwned-by-upload"
    refused = {
        "crafted pickle": (crafted(marker), 422, "not a usable checkpoint"),
        "truncated": (before[: len(before) // 3], 422, "not a usable checkpoint"),
        "another model": ((srv.model_dir / "sum.pt").read_bytes(), 422, "not 'mlcsc'"),
        "too big": (b"\0" * (9 << 20), 413, "max_upload_bytes"),
    }
    for name, (data, status, reason) in refused.items():
        r = srv.put("/model/mlcsc", files={"file": ("mlcsc.pt", data)}, headers=auth)
        assert r.status_code == status, (name, r.text)
        assert reason in r.json()["detail"], (name, r.text)
        assert not leaked_paths(srv, r.text)
        assert path.read_bytes() == before, name
    assert not marker.exists()
    r = srv.put("/model/unknown", files={"file": ("x.pt", before)}, headers=auth)
    assert r.status_code == 404 and "mlcsc" in r.json()["detail"]

    # a valid checkpoint with other weights and a forged version field
    net = models.build("mlcsc")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    expected = checkpoint.model_version(net.state_dict(), "mlcsc", models.default_config("mlcsc"))
    payload = {"model": "mlcsc", "config": models.default_config("mlcsc"), "state_dict": net.state_dict(),
               "version": "sha256:forged", "created": "2000-01-01T00:00:00+00:00", "meta": {}}
    r = srv.put("/model/mlcsc", files={"file": ("mine.pt", _save(payload))}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == expected != "sha256:forged"
    assert srv.version("mlcsc") == expected
    r = srv.post("/infer/mlcsc", params={"image": "case_001", "output": "json"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == expected
    assert not [p for p in srv.model_dir.iterdir() if p.name.endswith(".tmp")]
    assert stray_tmp(srv) == []
