"""Features that explain why a catalog product matches a query cutout.

Every feature is a plain float, named in ``FEATURE_NAMES``; the re-ranker uses
them and the review app shows them, so a reviewer sees the same reasons the
model used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .colors import palette_distance
from .types import LabColor

SILHOUETTE_SIZE = 64
DELTA_E_CAP = 60.0  # palettes further apart than this are "completely different"

FEATURE_NAMES = (
    "cosine",  # embedding cosine similarity
    "delta_e",  # CIEDE2000 distance between weighted dominant palettes (lower = closer)
    "silhouette_iou",  # IoU of the two alpha masks after aligning their bounding boxes
    "aspect_agreement",  # min/max of the two bounding-box aspect ratios (1 = same shape of box)
    "fill_agreement",  # min/max of mask area / box area (solid vs airy objects)
    "category_agreement",  # 1 same category, 0 different, 0.5 unknown
    "cosine_rank",  # 0 for the ANN's best hit, 1 for its last
    "cosine_gap",  # this cosine minus the best cosine in the list (<= 0)
)


@dataclass(frozen=True)
class ShapeSummary:
    """What the features need of one object's matte, computed once and cached."""

    silhouette: np.ndarray  # bool (SILHOUETTE_SIZE, SILHOUETTE_SIZE): alpha cropped to its box, resized
    aspect: float  # box width / height
    fill: float  # mask area / box area
    palette: tuple[LabColor, ...]


def shape_summary(alpha: np.ndarray, palette: Sequence[LabColor]) -> ShapeSummary | None:
    mask = alpha >= 0.5 if alpha.dtype != np.uint8 else alpha >= 128
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    height, width = crop.shape
    resized = cv2.resize(crop.astype(np.uint8), (SILHOUETTE_SIZE, SILHOUETTE_SIZE), interpolation=cv2.INTER_AREA)
    return ShapeSummary(silhouette=resized >= 1 if resized.max() <= 1 else resized >= 128,
                        aspect=width / height, fill=float(crop.mean()), palette=tuple(palette))


def silhouette_iou(a: ShapeSummary, b: ShapeSummary) -> float:
    union = np.logical_or(a.silhouette, b.silhouette).sum()
    return float(np.logical_and(a.silhouette, b.silhouette).sum() / union) if union else 0.0


def _agreement(x: float, y: float) -> float:
    return float(min(x, y) / max(x, y)) if max(x, y) > 0 else 0.0


def candidate_features(query: ShapeSummary, product: ShapeSummary | None, cosine: float, query_category: str | None,
                       product_category: str | None, rank: int, n_candidates: int, best_cosine: float) -> dict[str, float]:
    if query_category is None or product_category is None:
        category = 0.5
    else:
        category = 1.0 if query_category == product_category else 0.0
    features = {
        "cosine": float(cosine),
        "delta_e": DELTA_E_CAP,
        "silhouette_iou": 0.0,
        "aspect_agreement": 0.0,
        "fill_agreement": 0.0,
        "category_agreement": category,
        "cosine_rank": rank / max(1, n_candidates - 1),
        "cosine_gap": float(cosine - best_cosine),
    }
    if product is not None:
        if query.palette and product.palette:
            features["delta_e"] = min(DELTA_E_CAP, palette_distance(query.palette, product.palette))
        features["silhouette_iou"] = silhouette_iou(query, product)
        features["aspect_agreement"] = _agreement(query.aspect, product.aspect)
        features["fill_agreement"] = _agreement(query.fill, product.fill)
    return features


def feature_matrix(rows: Sequence[dict[str, float]]) -> np.ndarray:
    return np.array([[row[name] for name in FEATURE_NAMES] for row in rows], dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))
