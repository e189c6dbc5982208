"""Candidate features: silhouette IoU invariance and agreement measures."""

import cv2
import numpy as np

from matcher.features import (FEATURE_NAMES, add_list_features, candidate_features, feature_matrix, part_cosines,
                              shape_summary, silhouette_iou)
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
    assert set(same) == {n for n in FEATURE_NAMES if not n.endswith("_gap") and not n.startswith("cosine_")} | {
        "cosine_gap", "cosine_rank"}
    assert same["silhouette_iou"] == 1.0 and same["aspect_agreement"] == 1.0 and same["delta_e"] < 1e-6
    assert same["category_agreement"] == 1.0 and other["category_agreement"] == 0.0
    assert other["delta_e"] > 20 and other["silhouette_iou"] < same["silhouette_iou"]
    assert abs(other["cosine_gap"] + 0.2) < 1e-9 and abs(other["cosine_rank"] - 3 / 9) < 1e-9
    unknown = candidate_features(chair, None, 0.5, None, "Office", 0, 1, 0.5)
    assert unknown["category_agreement"] == 0.5 and unknown["silhouette_iou"] == 0.0


def test_empty_alpha_has_no_shape():
    assert shape_summary(np.zeros((10, 10), np.float32), PALETTE) is None


def test_list_features_measure_the_distance_to_the_best_of_the_list():
    chair = shape_summary(chair_alpha(), PALETTE)
    lamp = shape_summary(lamp_alpha(), [LabColor((90.0, -5.0, 60.0), 1.0)])
    rows = [candidate_features(chair, lamp, 0.9, None, None, 0, 2, 0.9, {"cosine_colour": 0.4}),
            candidate_features(chair, chair, 0.8, None, None, 1, 2, 0.9, {"cosine_colour": 0.7})]
    add_list_features(rows)
    lamp_row, chair_row = rows
    assert chair_row["silhouette_iou_gap"] == 0.0 and lamp_row["silhouette_iou_gap"] < -0.3
    # Lower ΔE is better: the best gets 0, the worse one is negative by the difference.
    assert chair_row["delta_e_gap"] == 0.0
    assert abs(lamp_row["delta_e_gap"] + (lamp_row["delta_e"] - chair_row["delta_e"])) < 1e-9
    assert abs(lamp_row["cosine_colour_gap"] + 0.3) < 1e-9 and chair_row["cosine_colour_gap"] == 0.0
    assert "cosine_texture_gap" not in lamp_row  # no such part, no gap
    matrix = feature_matrix(rows)
    assert matrix.shape == (2, len(FEATURE_NAMES))
    assert np.isnan(matrix[0, FEATURE_NAMES.index("cosine_texture")])  # absent is missing, not zero


def test_part_cosines_of_the_classical_embedder_make_up_its_cosine():
    """The classical vector is weighted parts, so its cosine is the weighted mean of the part cosines."""
    from matcher.backends.classical_embedder import BLOCK_WEIGHTS, ClassicalEmbedder

    embedder = ClassicalEmbedder()
    canvas = np.full((200, 200, 3), 128, np.uint8)
    red_box, blue_disc = canvas.copy(), canvas.copy()
    red_box[40:160, 60:140] = (200, 40, 30)
    cv2.circle(blue_disc, (100, 100), 60, (30, 60, 200), -1)
    a, b = embedder.embed([red_box, blue_disc])
    parts = part_cosines(a, b, embedder.parts)
    assert set(parts) == {"cosine_colour", "cosine_texture", "cosine_shape"}
    assert parts["cosine_colour"] < 0.2  # red against blue
    mixed = sum(BLOCK_WEIGHTS[name] * parts[f"cosine_{name}"] for name in BLOCK_WEIGHTS)
    assert abs(mixed - float(a @ b)) < 1e-4
    assert all(abs(v - 1.0) < 1e-5 for v in part_cosines(a, a, embedder.parts).values())
