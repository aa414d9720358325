"""Active learning through the real server: strategies, cached scores per model version, one full round.

The session server (conftest.py) gets three extra phantoms of its own here (al_000..al_002, another seed) plus a
held-out phantom that never enters the datastore; they are removed again when the module ends, and so are the
final labels these tests gave to conftest's images, so the other server tests see the datastore as conftest
made it. Empty and single-image datastores need a server of their
own (module-scoped, no model).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import requests
import torch

from sparsesight import checkpoint
from sparsesight.bench.active_learning import Annotator
from sparsesight.data.phantom import write_dataset
from sparsesight.server import MonaiLabelServer

pytestmark = pytest.mark.server

STRATEGIES = ("random", "sparse_residual", "epistemic", "hybrid")
RANKED = ("sparse_residual", "epistemic")  # the scoring methods; hybrid ranks by both
FAST_TRAIN = {"patch_size": [32, 32, 32], "samples_per_image": 1, "batch_size": 1}


@pytest.fixture(scope="module")
def al(server, tmp_path_factory):
    """An annotator on the session server with three more unlabelled phantoms and one held-out phantom."""
    work = tmp_path_factory.mktemp("al")
    write_dataset(work, n_cases=4, seed=7, downsample=4, n_test=1, progress=False)
    labels = work / "labels"  # true labels of every image a strategy may suggest: conftest's and ours
    labels.mkdir()
    for f in (server.phantom / "labelsTr").glob("*.nii.gz"):
        shutil.copy(f, labels / f.name)
    added = []
    for i in range(3):
        image_id = f"al_{i:03d}"
        shutil.copy(work / "labelsTr" / f"case_{i:03d}.nii.gz", labels / f"{image_id}.nii.gz")
        r = server.put("/datastore/image", params={"image": image_id},
                       files={"file": (f"{image_id}.nii.gz", (work / "imagesTr" / f"case_{i:03d}.nii.gz").read_bytes())})
        assert r.status_code == 200, r.text
        added.append(image_id)
    ann = Annotator(server.url, labels)
    ann.added = added
    ann.held_out = [(work / "imagesTs" / "case_003.nii.gz", work / "labelsTs" / "case_003.nii.gz")]
    labelled_before = ann.labelled()
    yield ann
    for image_id in added:
        server.delete("/datastore/image", params={"id": image_id})
    ann.unlabel(sorted(ann.labelled() - labelled_before))  # the other tests find conftest's datastore again
    # and no scoring method in use: later trainings of the session do not score after training
    shutil.rmtree(server.model_dir / "scores", ignore_errors=True)


def scoring_info(server, method="sparse_residual", model="mlcsc") -> dict:
    return server.info()["scoring"][method]["models"][model]


def cache_file(server, method="sparse_residual", model="mlcsc"):
    return server.model_dir / "scores" / f"{model}.{method}.json"


# ---------------------------------------------------------------------------------------------- listing
def test_info_lists_strategies_and_scoring_methods(server):
    info = server.info()
    assert set(STRATEGIES) <= set(info["strategies"])
    assert set(RANKED) <= set(info["scoring"])
    assert "mlcsc" in info["scoring"]["sparse_residual"]["models"]


# ---------------------------------------------------------------------------------------------- strategies
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_returns_an_unlabelled_image(server, al, strategy):
    todo = al.unlabelled()
    assert set(al.added) <= todo
    r = server.post(f"/activelearning/{strategy}", json={})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] in todo
    if strategy != "random":
        assert answer["model"] == "mlcsc" and answer["model_version"] == server.version()
        ids = [i for i, _ in answer["ranking"]]
        scores = [s for _, s in answer["ranking"]]
        assert set(ids) <= todo and ids[0] == answer["id"]
        assert scores == sorted(scores, reverse=True) and answer["score"] == scores[0]
        assert all(np.isfinite(scores))
        assert answer["unlabeled"] == len(todo) and len(ids) == min(10, len(todo))


def test_hybrid_ranks_by_the_mean_rank_under_both_cached_scores(server, al):
    answer = server.post("/activelearning/hybrid", json={}).json()
    todo, version = al.unlabelled(), server.version()
    cached = {}
    for method in RANKED:
        c = json.loads(cache_file(server, method).read_text())
        assert c["version"] == version
        cached[method] = {i: e["score"] for i, e in c["scores"].items() if i in todo}
    assert set(cached["sparse_residual"]) == set(cached["epistemic"]) == todo
    n = len(todo)
    expected = {i: np.mean([sorted(s.values()).index(s[i]) / (n - 1) for s in cached.values()]) for i in todo}
    assert dict(answer["ranking"]) == pytest.approx({i: expected[i] for i, _ in answer["ranking"]})
    assert answer["score"] == pytest.approx(max(expected.values()))


def test_unknown_model_for_a_strategy_is_refused(server):
    r = server.post("/activelearning/sparse_residual", json={"model": "unet9000"})
    assert r.status_code == 404, r.text
    assert "unet9000" in r.json()["detail"] and "mlcsc" in r.json()["detail"]


# ---------------------------------------------------------------------------------------------- scores and versions
def test_scores_are_cached_and_invalidated_when_the_model_version_changes(server, al):
    server.post("/activelearning/sparse_residual", json={})  # puts the method in use for mlcsc
    version = server.version()
    info = scoring_info(server)
    assert info["current"] and info["scores_version"] == info["model_version"] == version
    assert info["scored"] == len(al.unlabelled())
    cached = json.loads(cache_file(server).read_text())
    assert cached["version"] == version

    # a second pick uses the cache: nothing is scored again, same answer
    first = server.post("/activelearning/sparse_residual", json={}).json()
    again = server.post("/activelearning/sparse_residual", json={}).json()
    assert again["scored_now"] == 0 and again["ranking"] == first["ranking"]

    # another process replaces the checkpoint (here: thresholds nudged): the stored scores no longer count
    model, meta = checkpoint.load(server.model_dir / "mlcsc.pt")
    with torch.no_grad():
        model.lam_min_raw.mul_(1.1)
    new = checkpoint.save(server.model_dir / "mlcsc.pt", model, "mlcsc", meta["config"], meta={"train": meta["train"]})
    assert new != version
    info = scoring_info(server)
    assert info["model_version"] == new and info["scores_version"] == version and not info["current"]
    answer = server.post("/activelearning/sparse_residual", json={}).json()
    assert answer["model_version"] == new
    assert answer["scored_now"] == len(al.unlabelled())  # every score recomputed with the new model
    assert dict(answer["ranking"]) != dict(first["ranking"])
    info = scoring_info(server)
    assert info["current"] and info["scores_version"] == new


# ---------------------------------------------------------------------------------------------- the loop
def test_one_round_changes_the_model_version_refreshes_scores_and_moves_dice(server, al):
    dice_before = al.evaluate(al.held_out)
    version_before = server.version()
    assert server.post("/activelearning/sparse_residual", json={}).status_code == 200  # method in use

    pick = al.pick("sparse_residual")
    assert pick["id"] in al.unlabelled() and pick["model_version"] == version_before
    al.annotate(pick["id"])
    assert pick["id"] not in al.unlabelled()

    status = server.train(epochs=2, train_config=FAST_TRAIN)
    version = server.version()
    assert version != version_before
    # the training process refreshed the scores of the method in use before it ended
    assert any(line.startswith("scoring sparse_residual mlcsc " + version) for line in status["details"]), \
        status["details"]
    info = scoring_info(server)
    assert info["current"] and info["scores_version"] == version
    nxt = al.pick("sparse_residual")
    assert nxt["model_version"] == version and nxt["scored_now"] == 0 and nxt["id"] != pick["id"]

    # hard Dice may still be 0 for a model this young; the soft Dice of its probabilities moves with any update
    dice_after = al.evaluate(al.held_out)
    assert dice_after["soft_dice"] != dice_before["soft_dice"], (dice_before, dice_after)
    assert all(0 <= dice_after[k] <= 1 for k in ("dice", "soft_dice", "WT", "TC", "ET"))


# ---------------------------------------------------------------------------------------------- empty and single
@pytest.fixture(scope="module")
def fresh(server, tmp_path_factory):
    """A server of its own on an empty datastore (no model)."""
    work = tmp_path_factory.mktemp("al_fresh")
    studies = work / "datastore"
    studies.mkdir()
    proc = MonaiLabelServer(studies, conf={"model_dir": work / "model", "pretrained": "false"},
                            log_path=work / "server.log")
    url = proc.start(timeout=300)
    try:
        yield url
    finally:
        proc.stop()


def test_empty_and_single_image_datastores(server, fresh):
    def ask(strategy):
        r = requests.post(f"{fresh}/activelearning/{strategy}", json={}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    for s in STRATEGIES:
        a = ask(s)
        assert a["id"] is None and "no images" in a["message"], a

    image = (server.phantom / "imagesTr" / "case_002.nii.gz").read_bytes()
    r = requests.put(f"{fresh}/datastore/image", params={"image": "only"},
                     files={"file": ("only.nii.gz", image)}, timeout=120)
    assert r.status_code == 200, r.text
    for s in STRATEGIES:
        for _ in range(2):  # asked twice within the same second
            a = ask(s)
            assert a["id"] == "only", a
            if s in RANKED:  # no checkpoint yet: says so, and still answers
                assert a["fallback"] == "random" and "no trained model" in a["message"]

    label = (server.phantom / "labelsTr" / "case_002.nii.gz").read_bytes()
    r = requests.put(f"{fresh}/datastore/label", params={"image": "only", "tag": "final"},
                     files={"label": ("only.nii.gz", label)}, timeout=120)
    assert r.status_code == 200, r.text
    for s in STRATEGIES:
        a = ask(s)
        assert a["id"] is None and "no unlabelled image left" in a["message"], a
