"""A segmentation against its mirrored scan's (label_consistency.py), the thresholds it is flagged against and how
the benchmark takes them (bench/label_consistency.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesight.bench.label_consistency import detection, threshold
from sparsesight.label_consistency import agreement, assess, lr_axis, mirrored_label, thresholds

TABLE = {"sum": {"version": "sha256:abc", "threshold": {"WT": 0.99, "TC": 0.95, "ET": None}}}
SHAPE = (8, 6, 5)


def test_the_left_right_axis_is_found_in_any_orientation():
    assert lr_axis(np.eye(4)) == 0
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 0], aff[2, 1], aff[3, 3] = -1.5, 0.9, 1.2, 1  # voxel axis 2 runs right-to-left
    assert lr_axis(aff) == 2


class Ramp(torch.nn.Module):
    """Class 1 where the first channel exceeds a ramp along voxel axis 0: not mirror-equivariant."""

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[2]).reshape(1, -1, 1, 1)
        return torch.stack([ramp.expand_as(x[:, 0]), x[:, 0]], 1)


def test_a_mirror_equivariant_model_agrees_with_itself_and_a_position_dependent_one_does_not():
    x = torch.zeros(1, 4, *SHAPE)
    x[0, 0, 1:7, 2:4, 1:4] = 0.5  # a 'tumour' of class 1 in the middle
    conv = torch.nn.Conv3d(4, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.25, 0.0]))
        conv.weight[1, 0] = 1.0  # class 1 where channel 0 > 0.25, wherever it is
    label = conv(x)[0].argmax(0).numpy().astype(np.uint8)
    assert label.sum() == 6 * 2 * 3
    assert agreement(label, mirrored_label(conv, x, 0)) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    ramp = Ramp()
    label = ramp(x)[0].argmax(0).numpy().astype(np.uint8)  # the left part of the tumour only
    mirrored = mirrored_label(ramp, x, 0)  # the right part only
    assert label.sum() > 0 and mirrored.sum() > 0 and agreement(label, mirrored)["WT"] < 0.5
    # no tumour in either: nothing to disagree on
    assert agreement(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8))["ET"] == 1.0


def test_a_label_that_agrees_less_than_the_measured_threshold_is_flagged():
    ok = assess({"WT": 0.995, "TC": 0.96, "ET": 0.5}, "sum", "sha256:abc", TABLE)
    assert ok["flags"] == [] and ok["threshold"] == TABLE["sum"]["threshold"] and ok["least_agreement"] == 0.5
    bad = assess({"WT": 0.97, "TC": 0.90, "ET": 0.99}, "sum", "sha256:abc", TABLE)
    assert len(bad["flags"]) == 1 and "WT agreement 0.970 < 0.990" in bad["flags"][0] and "TC agreement" in bad["flags"][0]
    other = assess({"WT": 0.5, "TC": 0.5, "ET": 0.5}, "sum", "sha256:retrained", TABLE)
    assert other["threshold"] is None and other["flags"] == [] and "not measured" in other["note"]
    alpha = assess({"WT": 0.5, "TC": 0.5, "ET": 0.5}, "sum", "sha256:abc", TABLE, unmeasured="at alpha 0.5")
    assert alpha["threshold"] is None and alpha["flags"] == [] and alpha["note"] == "at alpha 0.5"


def test_the_shipped_thresholds_belong_to_the_shipped_weights():
    from sparsesight import model_card
    from sparsesight.pretrain import PRETRAINED

    table = thresholds()
    for m in ("sum", "mlcsc"):
        card = model_card.read(PRETRAINED / f"{m}.pt")
        assert table[m]["version"] == card["version"]
        assert all(t is None or 0.0 < t <= 1.0 for t in table[m]["threshold"].values())


def _row(case, dice, agree, split="held-out"):
    return {"case": case, "split": split, "dice": {"WT": dice, "TC": 1.0, "ET": 1.0},
            "agreement": {"WT": agree, "TC": 1.0, "ET": 1.0}}


def test_the_threshold_is_the_least_agreement_of_a_good_segmentation_and_is_judged_left_out():
    rows = [_row("a", 0.95, 0.995), _row("b", 0.93, 0.99), _row("c", 0.91, 0.993), _row("bad", 0.30, 0.96),
            _row("meh", 0.88, 0.994)]
    assert threshold(rows, "WT") == pytest.approx(0.99)
    d = detection(rows, "WT")
    assert d["missed_aim"] == ["bad", "meh"] and d["flagged_in_sample"] == ["bad"]
    assert d["missed_aim_flagged_loo"] == ["bad"]
    # left out of its own threshold, the least-agreeing good segmentation is one the flag would have caught
    assert d["good_flagged_loo"] == ["b"]
    assert d["spearman"] > 0
    assert threshold([_row("bad", 0.3, 0.9)], "WT") is None
    # an off-grid case and its plain-grid twin are one tumour: both leave together
    twins = [_row("off-grid case_001", 0.95, 0.98, "off-grid"), _row("plain-grid case_001", 0.95, 0.981, "plain-grid"),
             _row("held-out case_000", 0.95, 0.99)]
    assert detection(twins, "WT")["good_flagged_loo"] == ["off-grid case_001", "plain-grid case_001"]
