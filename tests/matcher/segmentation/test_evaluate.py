"""``evaluate_model_dir``: the report's keys, labels the model does not know reported apart, the metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from matcher.segmentation.evaluate import TextTally, evaluate_model_dir, iou_and_dice
from matcher.segmentation.model import save_model_dir

from .conftest import tiny_model


def test_report_keys(tiny_bench, tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    report = evaluate_model_dir(tiny_model_dir, tiny_bench, json_out=out)
    for key in ("miou", "dice", "box_iou", "per_label", "unknown_labels", "unlabelled_instances", "model"):
        assert key in report
    assert 0.0 <= report["miou"] <= 1.0 and 0.0 <= report["box_iou"] <= 1.0
    assert set(report["per_label"]) == {"armchair", "chair", "table"}
    assert report["unknown_labels"] == {}
    assert report["unlabelled_instances"] > 0  # the speakers: scored in box mode only
    assert report["box"]["n"] == sum(report["box"]["per_label"][k]["n"] for k in report["box"]["per_label"])
    assert json.loads(out.read_text())["miou"] == report["miou"]


def test_labels_the_model_does_not_know_are_reported_apart(tiny_bench, tmp_path):
    model = tiny_model(labels=["armchair", "chair"])
    save_model_dir(model.net, model.config, tmp_path / "m2", card="x")
    report = evaluate_model_dir(tmp_path / "m2", tiny_bench)
    assert set(report["per_label"]) == {"armchair", "chair"}
    assert report["unknown_labels"]["table"] > 0


def test_iou_and_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou_and_dice(a, b)[:2] == (1.0, 1.0)
    a[:2] = True
    b[1:3] = True
    iou, dice, inter, union = iou_and_dice(a, b)
    assert (inter, union) == (4, 12) and iou == pytest.approx(1 / 3) and dice == pytest.approx(0.5)


def test_text_tally_counts_false_alarms_apart():
    tally = TextTally()
    gt = np.zeros((4, 4), bool)
    gt[0] = True
    tally.add(0.5, "chair", gt.copy(), gt)
    tally.add(0.5, "table", gt.copy(), None)  # absent label predicted: a false alarm, not an IoU
    tally.add(0.5, "sofa", np.zeros((4, 4), bool), None)
    summary = tally.summary(0.5)
    assert summary["miou"] == 1.0 and set(summary["per_label"]) == {"chair"}
    assert summary["false_alarm_rate"] == 0.5
