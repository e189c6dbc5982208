"""Fusing boxes from several detectors into one clean list.

1. soft-NMS within each detector (decays the scores of overlapping duplicates
   instead of deleting them, so two real neighbouring chairs survive);
2. weighted box fusion across detectors (ensemble-boxes): boxes of the same
   label that overlap above ``iou_thr`` merge into their score-weighted mean,
   and the fused score is averaged over the detectors that voted for it, so a box
   seen by one detector only is down-weighted rather than dropped;
3. drop tiny and low-score boxes, keep the ``top_k_per_label`` best per label.

Labels are the catalog categories the detectors' classes map to; a detection
with no mapped category is fused under the label ``"object"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ensemble_boxes import soft_nms, weighted_boxes_fusion

from .types import Box, Detection

UNMAPPED = "object"


@dataclass(frozen=True)
class FusionConfig:
    iou_thr: float = 0.55
    soft_nms_iou_thr: float = 0.5
    soft_nms_sigma: float = 0.5
    min_score: float = 0.05
    min_area_fraction: float = 0.002  # of the image area
    top_k_per_label: int = 5
    conf_type: str = "avg"


def fuse_detections(per_source: dict[str, list[Detection]], width: int, height: int,
                    config: FusionConfig = FusionConfig(), weights: dict[str, float] | None = None) -> list[Detection]:
    sources = [s for s, dets in per_source.items() if dets]
    if not sources:
        return []
    labels = sorted({d.category or UNMAPPED for s in sources for d in per_source[s]})
    label_id = {name: i for i, name in enumerate(labels)}
    boxes_list, scores_list, labels_list = [], [], []
    for source in sources:
        boxes, scores, ids = _to_arrays(per_source[source], width, height, label_id)
        boxes, scores, ids = soft_nms([boxes], [scores], [ids], method=2, iou_thr=config.soft_nms_iou_thr,
                                      sigma=config.soft_nms_sigma, thresh=config.min_score)
        boxes_list.append(boxes)
        scores_list.append(scores)
        labels_list.append(ids)
    fused_boxes, fused_scores, fused_ids = weighted_boxes_fusion(
        boxes_list, scores_list, labels_list, weights=[(weights or {}).get(s, 1.0) for s in sources],
        iou_thr=config.iou_thr, skip_box_thr=config.min_score, conf_type=config.conf_type)
    source_name = "+".join(sources) if len(sources) > 1 else sources[0]
    fused = []
    for (x0, y0, x1, y1), score, lid in zip(fused_boxes, fused_scores, fused_ids):
        box = Box(x0 * width, y0 * height, x1 * width, y1 * height)
        if box.area < config.min_area_fraction * width * height or score < config.min_score:
            continue
        category = labels[int(lid)]
        fused.append(Detection(box=box, score=float(score), label=category,
                               category=None if category == UNMAPPED else category,
                               source=_voters(box, per_source, config.iou_thr) or source_name))
    return _top_k_per_label(fused, config.top_k_per_label)


def _to_arrays(detections: list[Detection], width: int, height: int, label_id: dict[str, int]):
    boxes = np.array([[d.box.x0 / width, d.box.y0 / height, d.box.x1 / width, d.box.y1 / height] for d in detections])
    boxes = np.clip(boxes, 0.0, 1.0)
    scores = np.array([d.score for d in detections], dtype=float)
    ids = np.array([label_id[d.category or UNMAPPED] for d in detections], dtype=float)
    return boxes, scores, ids


def _voters(box: Box, per_source: dict[str, list[Detection]], iou_thr: float) -> str:
    """Which detectors saw this fused box: the explanation a reviewer needs."""
    return "+".join(s for s, dets in per_source.items() if any(d.box.iou(box) >= iou_thr for d in dets))


def _top_k_per_label(detections: list[Detection], k: int) -> list[Detection]:
    kept: list[Detection] = []
    counts: dict[str, int] = {}
    for det in sorted(detections, key=lambda d: -d.score):
        if counts.get(det.label, 0) < k:
            kept.append(det)
            counts[det.label] = counts.get(det.label, 0) + 1
    return kept
