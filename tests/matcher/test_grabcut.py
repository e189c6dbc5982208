"""The seeded GrabCut runner: colour models learned on a small copy, the cut at full resolution."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from matcher.evaluation.masks import mask_iou
from matcher.grabcut import grabcut_labels


def _labels_from_truth(alpha: np.ndarray) -> np.ndarray:
    """Sure object well inside, sure backdrop well outside, a 12-px probable band in between, the band
    split by a deliberately shifted outline (GrabCut has to find the edge)."""
    obj = alpha >= 128
    k = np.ones((13, 13), np.uint8)
    inner, outer = cv2.erode(obj.astype(np.uint8), k) > 0, cv2.dilate(obj.astype(np.uint8), k) > 0
    shifted = np.roll(obj, 3, axis=1)
    labels = np.where(shifted, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[inner], labels[~outer] = cv2.GC_FGD, cv2.GC_BGD
    return labels


def test_models_from_a_small_copy_cut_as_well_at_full_resolution(bench_dir):
    row = "catalog/images/blendswap-cc-0__armchair.jpg", "catalog/alpha/blendswap-cc-0__armchair.png"
    image = np.asarray(Image.open(bench_dir / row[0]).convert("RGB"))
    alpha = np.asarray(Image.open(bench_dir / row[1]).convert("L"))
    labels = _labels_from_truth(alpha)
    full = grabcut_labels(image, labels, 3, seed=0)
    small = grabcut_labels(image, labels, 3, seed=0, model_side=160)
    truth = alpha >= 128
    assert full is not None and small is not None and small.shape == truth.shape
    assert mask_iou(small, truth) > 0.95 and mask_iou(small, truth) > mask_iou(labels % 2 == 1, truth)
    assert mask_iou(small, full) > 0.97
    # Sure labels are kept as they were, pixel for pixel.
    assert small[labels == cv2.GC_FGD].all() and not small[labels == cv2.GC_BGD].any()


def test_a_small_copy_without_both_classes_gives_none():
    image = np.full((400, 400, 3), 200, np.uint8)
    labels = np.full((400, 400), cv2.GC_PR_BGD, np.uint8)
    labels[200, 200] = cv2.GC_FGD  # one pixel of object: gone at a tenth of the size
    assert grabcut_labels(image, labels, 2, seed=0, model_side=40) is None
