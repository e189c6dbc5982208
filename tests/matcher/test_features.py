"""Candidate features: silhouette IoU invariance and agreement measures."""

import cv2
import numpy as np

from matcher.features import FEATURE_NAMES, candidate_features, shape_summary, silhouette_iou
from matcher.types import LabColor


def chair_alpha(height=400, width=400, scale=1.0, dx=0, dy=0) -> np.ndarray:
    """An L-shaped "chair" silhouette, placed and scaled on a canvas."""
    alpha = np.zeros((height, width), np.float32)
    s = scale
    x0, y0 = int(50 * s) + dx, int(40 * s) + dy
    alpha[y0: y0 + int(160 * s), x0: x0 + int(30 * s)] = 1.0  # back
    alpha[y0 + int(100 * s): y0 + int(130 * s), x0: x0 + int(110 * s)] = 1.0  # seat
    alpha[y0 + int(130 * s): y0 + int(160 * s), x0 + int(90 * s): x0 + int(110 * s)] = 1.0  # front leg
    return alpha


def lamp_alpha() -> np.ndarray:
    alpha = np.zeros((400, 400), np.float32)
    cv2.circle(alpha, (200, 120), 70, 1.0, -1)
    alpha[180:360, 190:210] = 1.0
    return alpha


PALETTE = [LabColor((50.0, 10.0, 10.0), 1.0)]


def test_silhouette_iou_is_invariant_to_translation_and_scale():
    base = shape_summary(chair_alpha(), PALETTE)
    moved = shape_summary(chair_alpha(dx=150, dy=120), PALETTE)
    scaled = shape_summary(chair_alpha(scale=2.0, dx=-20, dy=-10), PALETTE)
    assert silhouette_iou(base, moved) == 1.0
    assert silhouette_iou(base, scaled) > 0.9
    assert silhouette_iou(base, shape_summary(lamp_alpha(), PALETTE)) < 0.5


def test_agreements_and_category():
    chair = shape_summary(chair_alpha(), PALETTE)
    lamp = shape_summary(lamp_alpha(), [LabColor((90.0, -5.0, 60.0), 1.0)])
    same = candidate_features(chair, chair, 0.9, "Office", "Office", 0, 10, 0.9)
    other = candidate_features(chair, lamp, 0.7, "Office", "Lights", 3, 10, 0.9)
    assert set(same) == set(FEATURE_NAMES)
    assert same["silhouette_iou"] == 1.0 and same["aspect_agreement"] == 1.0 and same["delta_e"] < 1e-6
    assert same["category_agreement"] == 1.0 and other["category_agreement"] == 0.0
    assert other["delta_e"] > 20 and other["silhouette_iou"] < same["silhouette_iou"]
    assert abs(other["cosine_gap"] + 0.2) < 1e-9 and abs(other["cosine_rank"] - 3 / 9) < 1e-9
    unknown = candidate_features(chair, None, 0.5, None, "Office", 0, 1, 0.5)
    assert unknown["category_agreement"] == 0.5 and unknown["silhouette_iou"] == 0.0


def test_empty_alpha_has_no_shape():
    assert shape_summary(np.zeros((10, 10), np.float32), PALETTE) is None
