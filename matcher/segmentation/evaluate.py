"""Evaluate a learned segmentation model on a bench-format data set (``matcher seg eval``).

Text mode: every scene is run once; for each label the model knows and the scene contains, the
predicted label mask is scored against the union of that label's instance masks (a prompted
pair).  ``miou`` / ``dice`` = the mean over labels of the mean over that label's prompted pairs;
``miou_pooled`` sums intersections and unions over the pairs instead; ``false_alarm_rate`` is the
share of (scene, label) pairs where the label is absent but the mask is not empty.
Box mode: every annotated instance (labelled or not) is prompted with its ground-truth box, a
scene's boxes all at once; ``box_iou`` is the mean instance IoU.  Unannotated visible products are ignore regions.
Labels the model does not know are reported apart (``unknown_labels``), and so are instances
whose product maps to no label (``unlabelled_instances``); both still count in box mode.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .data import Bench, decode_mask, ignore_mask, load_rgb, read_bench
from .model import SegModel, load_model_dir
from .predict import box_masks, box_probabilities, label_mask, text_probabilities

DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.81, 0.05))


def iou_and_dice(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, int, int]:
    """(IoU, Dice, intersection, union); both 1.0 when both masks are empty."""
    inter = int(np.count_nonzero(pred & gt))
    union = int(np.count_nonzero(pred | gt))
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if union == 0:
        return 1.0, 1.0, 0, 0
    return inter / union, 2 * inter / total, inter, union


@dataclass
class TextTally:
    """Per threshold: per label, the prompted pairs' IoU / Dice, pooled counts and false alarms."""

    ious: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    dices: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    pooled: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    alarms: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))

    def add(self, threshold: float, label: str, pred: np.ndarray, gt: np.ndarray | None) -> None:
        if gt is None:
            hit = self.alarms[threshold][label]
            hit[0] += int(pred.any())
            hit[1] += 1
            return
        iou, dice, inter, union = iou_and_dice(pred, gt)
        self.ious[threshold][label].append(iou)
        self.dices[threshold][label].append(dice)
        self.pooled[threshold][label][0] += inter
        self.pooled[threshold][label][1] += union

    def summary(self, threshold: float) -> dict[str, Any]:
        per_label = {}
        for label in sorted(self.ious[threshold]):
            inter, union = self.pooled[threshold][label]
            per_label[label] = {"n": len(self.ious[threshold][label]),
                                "iou": float(np.mean(self.ious[threshold][label])),
                                "dice": float(np.mean(self.dices[threshold][label])),
                                "iou_pooled": inter / union if union else 1.0}
        alarms = [v for v in self.alarms[threshold].values()]
        return {
            "miou": _mean(r["iou"] for r in per_label.values()),
            "dice": _mean(r["dice"] for r in per_label.values()),
            "miou_pooled": _mean(r["iou_pooled"] for r in per_label.values()),
            "false_alarm_rate": sum(a[0] for a in alarms) / max(1, sum(a[1] for a in alarms)),
            "per_label": per_label,
        }


@dataclass
class BoxTally:
    ious: dict = field(default_factory=lambda: defaultdict(list))  # threshold -> [iou per instance]
    by_label: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def add(self, threshold: float, label: str | None, iou: float) -> None:
        self.ious[threshold].append(iou)
        self.by_label[threshold][label or "(none)"].append(iou)

    def summary(self, threshold: float) -> dict[str, Any]:
        values = self.ious[threshold]
        return {"box_iou": _mean(values), "box_iou_median": float(np.median(values)) if values else None,
                "n": len(values),
                "per_label": {k: {"n": len(v), "iou": float(np.mean(v))} for k, v in sorted(self.by_label[threshold].items())}}


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def scene_truth(bench: Bench, image_id: int, shape: tuple[int, int]):
    """(instance masks, valid pixels): ignore boxes are invalid unless an annotated object covers the pixel."""
    scene = bench.scenes[image_id]
    masks = [decode_mask(inst.rle, *shape) for inst in scene.instances]
    covered = np.logical_or.reduce(masks) if masks else np.zeros(shape, bool)
    return masks, ~ignore_mask(scene, shape) | covered


def tally_text(model: SegModel, bench: Bench, image_id: int, image: np.ndarray, masks, valid,
               thresholds: Sequence[float], postprocess: bool, tally: TextTally, refine: str = "none") -> None:
    scene = bench.scenes[image_id]
    probs = text_probabilities(model, image)
    for channel, label in enumerate(model.config.labels):
        parts = [m for inst, m in zip(scene.instances, masks) if inst.label == label]
        gt = np.logical_or.reduce(parts) if parts else None
        for t in thresholds:
            tally.add(t, label, label_mask(model, image, probs[channel], t, postprocess, refine) & valid, gt)


def tally_boxes(model: SegModel, bench: Bench, image_id: int, image: np.ndarray, masks,
                thresholds: Sequence[float], postprocess: bool, tally: BoxTally, refine: str = "none",
                contest: bool = False) -> None:
    """Every instance prompted with its ground-truth box, all of a scene's boxes at once (as a detector's
    boxes are), so that with ``contest`` they compete for the pixels where they overlap."""
    scene = bench.scenes[image_id]
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (inst.bbox for inst in scene.instances)]
    prompts = box_probabilities(model, image, boxes)
    for t in thresholds:
        for inst, gt, pred in zip(scene.instances, masks, box_masks(image, prompts, boxes, t, postprocess, refine,
                                                                    contest)):
            tally.add(t, inst.label, iou_and_dice(pred, gt)[0])


def run_tallies(model: SegModel, bench: Bench, image_ids: Sequence[int], *, text_thresholds=(0.5,),
                box_thresholds=(0.5,), text_post: bool = False, box_post: bool = False, box_refine: str = "none",
                text_refine: str = "none", box_contest: bool = False,
                images: Callable[[int], np.ndarray] | None = None) -> tuple[TextTally, BoxTally]:
    """Run both prompt kinds over ``image_ids`` at every given threshold."""
    text, box = TextTally(), BoxTally()
    for image_id in image_ids:
        image = images(image_id) if images else load_rgb(bench.scenes[image_id].path)
        masks, valid = scene_truth(bench, image_id, image.shape[:2])
        if text_thresholds:
            tally_text(model, bench, image_id, image, masks, valid, text_thresholds, text_post, text, text_refine)
        if box_thresholds:
            tally_boxes(model, bench, image_id, image, masks, box_thresholds, box_post, box, box_refine,
                        box_contest)
    return text, box


def locked_box_iou(model: SegModel, bench: Bench, image_ids: Sequence[int], *, refine: str, contest: bool,
                   images: Callable[[int], np.ndarray] | None = None) -> float | None:
    """Box IoU at the model's locked box threshold and post-processing, with the box refinement and competing
    boxes given (the validation choices and the report's "without" rows each change one of them)."""
    cfg = model.config
    _, box = run_tallies(model, bench, image_ids, text_thresholds=(), box_thresholds=(cfg.threshold_box,),
                         box_post=cfg.postprocess_box, box_refine=refine, box_contest=contest, images=images)
    return box.summary(cfg.threshold_box)["box_iou"]


def evaluate_model(model: SegModel, bench: Bench, image_ids: Sequence[int], *, threshold_text: float | None = None,
                   threshold_box: float | None = None, text_post: bool | None = None, box_post: bool | None = None,
                   box_refine: str | None = None, text_refine: str | None = None, box_contest: bool | None = None,
                   images: Callable[[int], np.ndarray] | None = None) -> dict[str, Any]:
    """Both modes at one threshold each (default: the model's locked ones) -> the report dict."""
    cfg = model.config
    t_text = cfg.threshold_text if threshold_text is None else threshold_text
    t_box = cfg.threshold_box if threshold_box is None else threshold_box
    text_post = cfg.postprocess_text if text_post is None else text_post
    box_post = cfg.postprocess_box if box_post is None else box_post
    box_refine = cfg.refine_box if box_refine is None else box_refine
    text_refine = cfg.refine_text if text_refine is None else text_refine
    box_contest = cfg.box_contest if box_contest is None else box_contest
    started = time.perf_counter()
    text, box = run_tallies(model, bench, image_ids, text_thresholds=(t_text,), box_thresholds=(t_box,),
                            text_post=text_post, box_post=box_post, box_refine=box_refine, text_refine=text_refine,
                            box_contest=box_contest, images=images)
    text_summary, box_summary = text.summary(t_text), box.summary(t_box)
    return {
        "miou": text_summary["miou"], "dice": text_summary["dice"], "box_iou": box_summary["box_iou"],
        "per_label": text_summary["per_label"],
        "text": text_summary, "box": box_summary,
        "thresholds": {"text": t_text, "box": t_box}, "postprocess": {"text": text_post, "box": box_post},
        "refine_box": box_refine, "refine_text": text_refine, "box_contest": box_contest,
        "images": len(image_ids), "seconds": round(time.perf_counter() - started, 2),
    }


def label_coverage(bench: Bench, image_ids: Sequence[int], known: Sequence[str]) -> dict[str, Any]:
    """Instances whose label the model does not know, and instances with no label, counted apart."""
    unknown: dict[str, int] = defaultdict(int)
    unlabelled = 0
    for image_id in image_ids:
        for inst in bench.scenes[image_id].instances:
            if inst.label is None:
                unlabelled += 1
            elif inst.label not in known:
                unknown[inst.label] += 1
    return {"unknown_labels": dict(sorted(unknown.items())), "unlabelled_instances": unlabelled}


def evaluate_model_dir(model_dir: Path | str | None, dataset: Path | str, *, image_ids: Sequence[int] | None = None,
                       threshold: float | None = None, device: str = "cpu",
                       json_out: Path | None = None) -> dict[str, Any]:
    """``matcher seg eval``: the model at its locked thresholds (or ``threshold`` for both modes) on a data set."""
    model = load_model_dir(model_dir, device=device)
    bench = read_bench(dataset)
    ids = sorted(bench.scenes) if image_ids is None else list(image_ids)
    report = evaluate_model(model, bench, ids, threshold_text=threshold, threshold_box=threshold)
    report.update(label_coverage(bench, ids, model.config.labels))
    report.update({"model": model.model_id, "model_dir": str(model.path), "dataset": str(Path(dataset))})
    if json_out is not None:
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report
