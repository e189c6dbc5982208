"""Features that explain why a catalog product matches a query cutout.

Every feature is a plain float, named in ``FEATURE_NAMES``; the re-ranker uses
them and the review app shows them, so a reviewer sees the same reasons the
model used.

Three kinds:

* pairwise: how this product compares with the query cutout (cosine, ΔE, ...);
* per part: the cosine of each named part of the embedding, for embedders that
  declare parts (the classical one: colour, texture, shape); a learned model
  can weigh them differently from the embedder's fixed mix.  Absent (not 0)
  for embedders without parts; the gradient-boosted model treats absent as
  missing;
* within the list (``*_gap``): how far this candidate is from the best value
  any candidate in the same ANN list reached.  A pointwise model cannot see
  the other candidates, and "the best silhouette of the list" says more than
  "silhouette 0.7": on held-out dev scenes they took the trained
  re-ranker's recall@1 lift over cosine from +0.015 (the first eight
  features) to +0.054 (mean of 20 scene splits, ``scripts/bench_rerank.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

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
    "cosine_colour",  # cosine of the embedding's colour part (embedders with parts only)
    "cosine_deep",  # the pretrained network's part (effnet)
    "cosine_texture",
    "cosine_shape",
    "delta_e_gap",  # best (lowest) ΔE in the list minus this one (<= 0)
    "silhouette_iou_gap",  # this minus the best in the list (<= 0), likewise below
    "aspect_agreement_gap",
    "fill_agreement_gap",
    "cosine_colour_gap",
    "cosine_deep_gap",
    "cosine_texture_gap",
    "cosine_shape_gap",
)
# Part cosines, in display order; an embedder's ``parts`` use these names (without "cosine_").
PART_FEATURES = ("cosine_deep", "cosine_colour", "cosine_texture", "cosine_shape")
# Features compared across the candidate list, with the direction in which they are better.
LIST_FEATURES = {"delta_e": -1, "silhouette_iou": 1, "aspect_agreement": 1, "fill_agreement": 1,
                 "cosine_deep": 1, "cosine_colour": 1, "cosine_texture": 1, "cosine_shape": 1}


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


def part_cosines(query: np.ndarray, product: np.ndarray, parts: Mapping[str, slice]) -> dict[str, float]:
    """Cosine of each named part of two embeddings (``cosine_<part>``); parts with a zero norm are left out."""
    out = {}
    for name, part in parts.items():
        q, p = np.asarray(query[part], np.float64), np.asarray(product[part], np.float64)
        norm = float(np.linalg.norm(q) * np.linalg.norm(p))
        if norm > 0:
            out[f"cosine_{name}"] = float(q @ p / norm)
    return out


def candidate_features(query: ShapeSummary, product: ShapeSummary | None, cosine: float, query_category: str | None,
                       product_category: str | None, rank: int, n_candidates: int, best_cosine: float,
                       parts: Mapping[str, float] | None = None, delta_e: float | None = None) -> dict[str, float]:
    """Features of one candidate on its own; ``add_list_features`` adds the ``*_gap`` ones over the whole list.
    ``delta_e``: the palettes' distance when already computed for the whole list (``colors.palette_distances``)."""
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
            distance = palette_distance(query.palette, product.palette) if delta_e is None else delta_e
            features["delta_e"] = min(DELTA_E_CAP, distance)
        features["silhouette_iou"] = silhouette_iou(query, product)
        features["aspect_agreement"] = _agreement(query.aspect, product.aspect)
        features["fill_agreement"] = _agreement(query.fill, product.fill)
    features.update(parts or {})
    return features


def add_list_features(rows: Sequence[dict[str, float]]) -> None:
    """Add ``<name>_gap`` = distance to the list's best value, signed so that 0 is the best and lower is worse."""
    for name, direction in LIST_FEATURES.items():
        values = [direction * row[name] for row in rows if name in row]
        if not values:
            continue
        best = max(values)
        for row in rows:
            if name in row:
                row[f"{name}_gap"] = float(direction * row[name] - best)


def feature_matrix(rows: Sequence[dict[str, float]], names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """Rows of named features -> a float matrix; an absent feature is NaN (missing to the model)."""
    nan = float("nan")
    return np.array([[row.get(name, nan) for name in names] for row in rows], dtype=np.float64).reshape(len(rows), len(names))
