"""Issue 18, part A: one bad model never takes the others down; inference never moves the shared model."""
from __future__ import annotations

import pytest
from reliability_servers import leaked_paths

pytestmark = pytest.mark.server


def infer(srv, model="mlcsc", **params):
    import json

    return srv.post(f"/infer/{model}", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps(params)})


def test_device_allow_list_and_the_shared_model_untouched(server):
    before = infer(server)
    assert before.status_code == 200, before.text
    for device in ("meta", "cuda:7", "cpu:0", "mps"):
        r = infer(server, device=device)
        assert r.status_code == 400, (device, r.text)
        detail = r.json()["detail"]
        assert repr(device) in detail and "valid devices: cpu" in detail, detail
    r = infer(server, device=7)
    assert r.status_code == 400 and "valid devices" in r.json()["detail"]
    after = infer(server)
    assert after.status_code == 200, after.text
    assert after.content == before.content  # same label, byte for byte: the model was not moved or broken
    assert infer(server, device="cpu").content == before.content


def test_a_broken_checkpoint_breaks_only_its_model(server):
    path = server.model_dir / "sum.pt"
    good = path.read_bytes()
    reference = infer(server, "mlcsc")
    assert reference.status_code == 200
    try:
        for garbage in (good[: len(good) // 2], b"\x00" * 1000, b""):
            path.write_bytes(garbage)
            info = server.get("/info/")
            assert info.status_code == 200, info.text
            models = info.json()["models"]
            assert models["sum"]["trained"] is False and models["sum"]["error"], models["sum"]
            assert "error" not in models["mlcsc"] and models["mlcsc"]["trained"] is True
            assert not leaked_paths(server, info.json())
            r = infer(server, "sum")
            assert r.status_code == 503, r.text
            assert "checkpoint is unusable" in r.json()["detail"] and not leaked_paths(server, r.text)
            r = infer(server, "mlcsc")
            assert r.status_code == 200 and r.content == reference.content
    finally:
        path.write_bytes(good)
    assert "error" not in server.info()["models"]["sum"]
    assert infer(server, "sum").status_code == 200  # repaired file: serves again, no restart


def test_training_heals_a_broken_checkpoint(server):
    """A broken model is retrained from fresh weights (the way out the 503 names); a bad train device is 400."""
    path = server.model_dir / "mlcsc.pt"
    path.write_bytes(b"\x00 not a checkpoint")
    assert server.info()["models"]["mlcsc"]["error"]
    r = server.post("/train/mlcsc", json={"epochs": 1, "device": "meta"})
    assert r.status_code == 400 and "valid devices" in r.json()["detail"], r.text
    status = server.train("mlcsc")
    assert any("fresh weights" in line for line in status.get("details", [])), status.get("details")
    for answer in (server.get("/train/"), server.get("/train/", params={"all": "true"}), server.get("/scoring/")):
        assert answer.status_code in (200, 404) and not leaked_paths(server, answer.text)  # output lines scrubbed
    assert any("<datastore>" in line for line in server.get("/train/").json()["details"])
    info = server.info()["models"]["mlcsc"]
    assert "error" not in info and info["trained"] is True
    assert infer(server, "mlcsc").status_code == 200
