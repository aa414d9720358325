"""Shipped weights with model cards (issue 17): served while model_dir holds no trained checkpoint, checked against
their card (sha256, config, version), never overwritten by training, and the fallback when a trained file breaks."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from sparsesight import checkpoint, model_card, models

pytestmark = pytest.mark.server


def ship(folder, name: str, seed: int) -> dict:
    """A checkpoint of fresh weights with its card in `folder` (what sparsesight.pretrain writes, untrained)."""
    torch.manual_seed(seed)
    model = models.build(name, {"roi_size": [32, 32, 32]})
    path = folder / f"{name}.pt"
    version = checkpoint.save(path, model, name, model.config)
    card = {"model": name, "version": version, "config": checkpoint.load(path)[1]["config"], "parameters": 1,
            "training": {"seed": seed, "data": "none (test)"},
            "evaluation": {"data": "none", "cases": 0, "dice": {"held-out": {"WT": 0.5, "TC": 0.4, "ET": 0.3}}},
            "limits": ["untrained test weights"]}
    model_card.write(path, card)
    return model_card.read(path)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, server_tools):
    make_datastore, start = server_tools
    work = tmp_path_factory.mktemp("shipped")
    folder = work / "pretrained"
    cards = {"mlcsc": ship(folder, "mlcsc", 1), "sum": ship(folder, "sum", 2)}
    # the sum file is swapped for other weights: its card no longer matches
    torch.manual_seed(3)
    other = models.build("sum", {"roi_size": [32, 32, 32]})
    checkpoint.save(folder / "sum.pt", other, "sum", other.config)
    studies, phantom = make_datastore(work)
    srv = start(work, studies, phantom, conf={"models": "mlcsc,sum", "pretrained": str(folder)}, name="shipped")
    try:
        yield srv, folder, cards
    finally:
        srv.process.stop()


def infer(srv, model):
    return srv.post(f"/infer/{model}", params={"image": "case_001", "output": "image"},
                    data={"params": json.dumps({})})


def test_shipped_weights_serve_with_their_card_and_a_mismatch_is_refused(shipped):
    srv, folder, cards = shipped
    info = srv.info()["models"]
    m = info["mlcsc"]
    assert m["trained"] is True and m["source"] == "shipped" and m["version"] == cards["mlcsc"]["version"]
    assert m["card"]["dice"]["held-out"]["WT"] == 0.5 and m["card"]["limits"] == ["untrained test weights"]
    assert infer(srv, "mlcsc").status_code == 200
    # sum.pt does not match its card: refused with the reason, and only that model is affected
    s = info["sum"]
    assert s["trained"] is False and "does not match its model card" in s["error"] and "sha256" in s["error"]
    r = infer(srv, "sum")
    assert r.status_code == 503 and "does not match its model card" in r.json()["detail"]
    assert str(folder) not in r.text


def test_training_writes_model_dir_never_the_shipped_file_and_a_broken_one_falls_back(shipped):
    srv, folder, cards = shipped
    before = model_card.sha256_file(folder / "mlcsc.pt")
    # a second final label, so that val_split 0.5 holds one image out for the new card's Dice
    with open(srv.phantom / "labelsTr" / "case_001.nii.gz", "rb") as f:
        r = srv.put("/datastore/label", params={"image": "case_001", "tag": "final"},
                    files={"label": ("case_001.nii.gz", f)})
    assert r.status_code == 200, r.text
    status = srv.train("mlcsc", val_split=0.5)
    assert any("continuing from the shipped weights" in line for line in status["details"]), status["details"]
    assert model_card.sha256_file(folder / "mlcsc.pt") == before  # the shipped file is untouched
    trained = srv.model_dir / "mlcsc.pt"
    m = srv.info()["models"]["mlcsc"]
    assert trained.is_file() and m["source"] == "trained" and m["version"] != cards["mlcsc"]["version"]
    assert checkpoint.load(trained)[1]["train"]["previous_version"] == cards["mlcsc"]["version"]
    # the retrained weights' card: in the checkpoint (what /info shows) and beside it, matching the file
    assert m["card"]["kind"] == "retrained" and m["card"]["version"] == m["version"]
    card = model_card.read(trained)
    assert card["sha256"] == model_card.sha256_file(trained) and card["version"] == m["version"]
    held = card["evaluation"]["dice"]["held-out (datastore)"]
    assert set(held) == {"WT", "TC", "ET"} and all(0 <= v <= 1 for v in held.values())
    assert [c["case"] for c in card["evaluation"]["per_case"]] in (["case_000"], ["case_001"])
    held_out = card["evaluation"]["per_case"][0]["case"]
    assert held_out not in card["training"]["data"].split("held out")[0]  # never trained on
    assert card["training"]["continued_from"]["version"] == cards["mlcsc"]["version"]
    assert "retrained in the app" in model_card.card_path(trained, ".card.md").read_text()
    assert str(srv.studies) not in json.dumps(card)  # ids, never server paths
    good = trained.read_bytes()
    try:
        trained.write_bytes(good[: len(good) // 2])  # a broken trained file: the shipped model keeps serving
        m = srv.info()["models"]["mlcsc"]
        assert m["source"] == "shipped" and m["version"] == cards["mlcsc"]["version"]
        assert "trained checkpoint mlcsc.pt is unusable" in m["error"] and "serving the shipped weights" in m["error"]
        assert infer(srv, "mlcsc").status_code == 200
    finally:
        trained.write_bytes(good)
    assert srv.info()["models"]["mlcsc"]["source"] == "trained"


def test_without_a_card_shipped_weights_are_not_served(tmp_path):
    folder = tmp_path / "p"
    ship(folder, "mlcsc", 1)
    model, meta = checkpoint.load(folder / "mlcsc.pt")
    model_card.verify(folder / "mlcsc.pt", meta, model_card.read(folder / "mlcsc.pt"))  # matches
    shutil.copy(folder / "mlcsc.pt", tmp_path / "copy.pt")
    with pytest.raises(Exception, match="no model card"):
        model_card.verify(tmp_path / "copy.pt", meta, model_card.read(tmp_path / "copy.pt"))
    card = model_card.read(folder / "mlcsc.pt")
    with pytest.raises(Exception, match="config differs"):
        model_card.verify(folder / "mlcsc.pt", meta, {**card, "config": {**card["config"], "T": 9}})
