"""``matcher eval``: the query path on a bench-format data set.

For every annotated object of every scene (ground-truth boxes, and/or detected
boxes when a detector is configured) it records where the exact sku ranks,
whether the top 5 hold the right category, how well the query cutout fits the
COCO mask, and how long each stage took.  The candidates' features and the
truth form labelled groups (one per object, keyed by scene) on which the
re-ranker is trained and evaluated on scenes it never saw.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..imageio import ImageLoadError, load_image
from ..query import STAGES, MatchResult, QueryEngine
from ..rerank import FORMULA, LabelledGroup, evaluate, train
from ..settings import Settings
from ..types import Box, LoadedImage
from .masks import boundary_f1, mask_iou

log = logging.getLogger(__name__)
DETECTION_MATCH_IOU = 0.5


def load_coco(dataset: Path) -> tuple[dict, dict[int, list[dict]]]:
    coco = json.loads((dataset / "scenes" / "instances.json").read_text())
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return coco, by_image


def decode_segmentation(ann: dict, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    segmentation = ann["segmentation"]
    if isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("utf-8")
    else:  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.decode(rle).astype(bool)


def annotated_images(coco: dict, by_image: dict[int, list[dict]], limit: int | None) -> list[dict]:
    return [img for img in coco["images"] if by_image.get(img["id"])][:limit]


def scene_photos(dataset: Path, images: list[dict], by_image: dict[int, list[dict]], failures: list[dict],
                 progress: bool) -> Iterator[tuple[dict, LoadedImage, list[dict]]]:
    """Each scene's image record, photo and annotations; a photo that does not load goes to ``failures``."""
    for img in tqdm(images, desc="scenes", disable=not progress):
        try:
            photo = load_image(dataset / img["file_name"])
        except ImageLoadError as exc:
            failures.append({"image": img["file_name"], "reason": str(exc)})
            continue
        yield img, photo, by_image[img["id"]]


def _rank_of(candidates, sku: str) -> int | None:
    for rank, candidate in enumerate(candidates, start=1):
        if candidate.sku == sku:
            return rank
    return None


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "n": 0}
    array = np.asarray(values)
    return {"p50": round(float(np.percentile(array, 50)), 4), "p95": round(float(np.percentile(array, 95)), 4), "n": len(values)}


class _Tally:
    """Per-object outcomes for one box source (ground truth or a detector)."""

    def __init__(self) -> None:
        self.ranks: list[int | None] = []
        self.category_hits: list[bool] = []
        self.mask_ious: list[float] = []
        self.boundary_f1s: list[float] = []
        self.mask_fails = 0

    def summary(self) -> dict[str, Any]:
        n = len(self.ranks)
        recall = {f"recall@{k}": (sum(1 for r in self.ranks if r is not None and r <= k) / n if n else 0.0) for k in (1, 5, 10)}
        return {
            "objects": n, **{k: round(v, 4) for k, v in recall.items()},
            "category_recall@5": round(float(np.mean(self.category_hits)), 4) if self.category_hits else 0.0,
            "mean_mask_iou": round(float(np.mean(self.mask_ious)), 4) if self.mask_ious else 0.0,
            "mean_boundary_f1": round(float(np.mean(self.boundary_f1s)), 4) if self.boundary_f1s else 0.0,
            "mask_fail": self.mask_fails,
        }


def evaluate_scenes(dataset: Path, settings: Settings, *, use_gt_boxes: bool = True, detectors: Sequence[str] = (),
                    limit: int | None = None, workers: int = 1, progress: bool = True, train_reranker: bool = True,
                    examples_dir: Path | None = None, n_examples: int = 6,
                    engine: QueryEngine | None = None) -> tuple[dict[str, Any], list[LabelledGroup]]:
    """Returns the report and the labelled groups (for ``matcher rerank train --from-bench``)."""
    dataset = Path(dataset)
    index_report = _ensure_indexed(dataset, settings, workers, progress)
    engine = engine or QueryEngine(settings, detectors=detectors)
    deployed = engine.reranker
    engine.reranker = FORMULA  # collect features under one fixed ranking; models are compared afterwards
    coco, by_image = load_coco(dataset)
    category_of_sku = _catalog_categories(dataset)
    images = annotated_images(coco, by_image, limit)

    gt_tally, det_tally = _Tally(), _Tally()
    groups: list[LabelledGroup] = []
    stage_times: dict[str, list[float]] = defaultdict(list)
    coco_results: list[dict] = []
    example_rows: list[tuple] = []
    failures = []
    try:
        for img, photo, anns in scene_photos(dataset, images, by_image, failures, progress):
            truths = [decode_segmentation(a, photo.height, photo.width) for a in anns]
            if use_gt_boxes:
                result = engine.match(photo, boxes=[Box.from_xywh(*a["bbox"]) for a in anns], store=False)
                _record_times(stage_times, result)
                for ann, truth, obj in zip(anns, truths, result.objects):
                    _score_object(gt_tally, obj, ann, truth, category_of_sku, photo)
                    groups.append(LabelledGroup(str(img["id"]), [c.features for c in obj.candidates],
                                                [int(c.sku == ann["sku"]) for c in obj.candidates]))
                    if len(example_rows) < n_examples and obj.cutout is not None and obj.cutout.ok:
                        example_rows.append((img["file_name"], ann["sku"], obj))
            if engine.detectors:
                result = engine.match(photo, store=False)
                if not use_gt_boxes:
                    _record_times(stage_times, result)
                _score_detections(det_tally, result, anns, truths, category_of_sku, photo, coco_results, img["id"], coco)
    finally:
        engine.reranker = deployed

    report: dict[str, Any] = {
        "dataset": str(dataset), "scenes": len(images), "space": engine.space.name,
        "index": {"run_id": index_report.run_id, "counts": index_report.counts},
        "gt_boxes": gt_tally.summary() if use_gt_boxes else None,
        "detected_boxes": det_tally.summary() if engine.detectors else None,
        "timings_s": {stage: _percentiles(stage_times[stage]) for stage in (*STAGES, "total") if stage in stage_times},
        "failures": failures,
    }
    if engine.detectors:
        report["detection_map"] = _coco_map(coco, images, coco_results)
    if use_gt_boxes and groups:
        report["reranker"] = _reranker_report(groups, deployed, train_reranker)
    if examples_dir is not None:
        report["examples"] = _write_examples(examples_dir, example_rows, dataset)
    return report, groups


def _ensure_indexed(dataset: Path, settings: Settings, workers: int, progress: bool):
    from ..indexing import run_index

    return run_index(dataset / "catalog" / "products.jsonl", settings, workers=workers, progress=progress)


def _catalog_categories(dataset: Path) -> dict[str, str | None]:
    rows = [json.loads(line) for line in (dataset / "catalog" / "products.jsonl").open() if line.strip()]
    return {r["sku"]: r.get("category") for r in rows}


def _record_times(stage_times: dict[str, list[float]], result: MatchResult) -> None:
    for stage, seconds in result.timings.items():
        stage_times[stage].append(seconds)
    stage_times["total"].append(sum(result.timings.values()))


def _score_object(tally: _Tally, obj, ann: dict, truth: np.ndarray, category_of_sku, photo) -> None:
    tally.ranks.append(_rank_of(obj.candidates, ann["sku"]))
    expected = category_of_sku.get(ann["sku"])
    tally.category_hits.append(any(c.category == expected for c in obj.candidates[:5]))
    alpha = obj.full_alpha(photo.height, photo.width)
    if alpha is None:
        tally.mask_fails += 1
        tally.mask_ious.append(0.0)
        tally.boundary_f1s.append(0.0)
        return
    predicted = alpha >= 0.5
    tally.mask_ious.append(float(mask_iou(predicted, truth)))
    tally.boundary_f1s.append(float(boundary_f1(predicted, truth)))


def _score_detections(tally: _Tally, result: MatchResult, anns, truths, category_of_sku, photo,
                      coco_results: list[dict], image_id: int, coco: dict) -> None:
    category_ids = {c["name"]: c["id"] for c in coco["categories"]}
    for obj in result.objects:
        det = obj.detection
        coco_results.append({"image_id": image_id, "category_id": category_ids.get(det.category or "", 0),
                             "bbox": [round(v, 2) for v in det.box.xywh()], "score": det.score})
    for ann, truth in zip(anns, truths):
        gt_box = Box.from_xywh(*ann["bbox"])
        best = max(result.objects, key=lambda o: o.detection.box.iou(gt_box), default=None)
        if best is None or best.detection.box.iou(gt_box) < DETECTION_MATCH_IOU:
            tally.ranks.append(None)
            tally.category_hits.append(False)
            continue
        _score_object(tally, best, ann, truth, category_of_sku, photo)


def _coco_map(coco: dict, images: list[dict], results: list[dict]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"mAP@0.5:0.95": 0.0, "mAP@0.5": 0.0}
    ids = {img["id"] for img in images}
    truth = COCO()
    truth.dataset = dict(coco, images=images, annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
    truth.createIndex()
    detections = truth.loadRes(results)
    evaluator = COCOeval(truth, detections, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {"mAP@0.5:0.95": round(float(evaluator.stats[0]), 4), "mAP@0.5": round(float(evaluator.stats[1]), 4)}


def _reranker_report(groups: list[LabelledGroup], deployed, train_reranker: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"deployed": deployed.version, "formula_all_groups": evaluate(FORMULA, groups)}
    if deployed is not FORMULA:
        report["deployed_all_groups"] = evaluate(deployed, groups)
    if train_reranker:
        try:
            trained = train(groups)
            report["trained_on_split"] = {"version": trained.version, **trained.metrics}
        except ValueError as exc:
            report["trained_on_split"] = {"error": str(exc)}
    return report


def _write_examples(folder: Path, rows: list[tuple], dataset: Path) -> list[dict]:
    from .report import example_strip

    images = {r["sku"]: str(dataset / r["image"]) for r in
              (json.loads(line) for line in (dataset / "catalog" / "products.jsonl").open() if line.strip())}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (file_name, sku, obj) in enumerate(rows):
        path = folder / f"example_{index}.png"
        example_strip(obj, sku, path, images.get)
        written.append({"scene": file_name, "sku": sku, "png": str(path), "top": [c.sku for c in obj.candidates[:3]]})
    return written
