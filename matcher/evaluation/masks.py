"""Mask and matte metrics, and the catalog cutout evaluation behind ``matcher eval-masks``.

Conventions: predicted and true masks are boolean ``(H, W)``; alpha mattes are
float in ``[0, 1]`` or ``uint8`` (read as ``value / 255``).  The catalog
ground truth is the 8-bit alpha matte; its binary mask is ``alpha >= 128``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..cutout import make_cutout
from ..imageio import ImageLoadError, load_image
from ..settings import Settings
from ..types import Mask

# Leakage: predicted object pixels farther than this from the true object
# (a 1 % of the image's longer side, at least 5 px) count as spilled.
LEAK_DILATE_FRACTION = 0.01
LEAK_DILATE_MIN_PX = 5
LEAK_SHARE = 0.05


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool)


def _as_alpha(alpha: np.ndarray) -> np.ndarray:
    a = np.asarray(alpha)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return np.clip(a.astype(np.float64), 0.0, 1.0)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {g.shape}")
    union = np.logical_or(p, g).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, g).sum() / union)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a mask: object pixels with a non-object 8-neighbour (or on the image edge)."""
    m = _as_bool(mask).astype(np.uint8)
    inner = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (inner == 0)


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tolerance_px: float = 2) -> float:
    """Boundary F1: harmonic mean of boundary precision and recall at ``tolerance_px``.

    Precision is the share of predicted boundary pixels within ``tolerance_px``
    (Euclidean) of a true boundary pixel; recall the reverse.  1.0 when both
    masks are empty, 0.0 when only one is.
    """
    bp, bg = mask_boundary(pred), mask_boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    # Distance from every pixel to the nearest boundary pixel of the other mask.
    dist_to_gt = cv2.distanceTransform((~bg).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist_to_pred = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    precision = float((dist_to_gt[bp] <= tolerance_px).mean())
    recall = float((dist_to_pred[bg] <= tolerance_px).mean())
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def alpha_sad(pred_alpha: np.ndarray, gt_alpha: np.ndarray) -> float:
    """Sum of absolute alpha differences, alpha in ``[0, 1]``, divided by 1000.

    The matting literature (e.g. the alphamatting.com and Adobe Composition-1k
    benchmarks) reports SAD in thousands, so a 512x512 matte that is wrong by
    one full pixel-width along a 1000-pixel outline scores about 1.0.
    A boolean mask is read as alpha 0/1.
    """
    p, g = _as_alpha(pred_alpha), _as_alpha(gt_alpha)
    if p.shape != g.shape:
        raise ValueError(f"alpha shapes differ: {p.shape} vs {g.shape}")
    return float(np.abs(p - g).sum() / 1000.0)


def alpha_mse(pred_alpha: np.ndarray, gt_alpha: np.ndarray) -> float:
    """Mean squared alpha difference over all pixels, alpha in ``[0, 1]`` (not scaled by 1e3)."""
    p, g = _as_alpha(pred_alpha), _as_alpha(gt_alpha)
    if p.shape != g.shape:
        raise ValueError(f"alpha shapes differ: {p.shape} vs {g.shape}")
    return float(np.mean((p - g) ** 2))


def leak_dilation(shape: tuple[int, int]) -> int:
    """Tolerance around the true object for :func:`is_leaking`: 1 % of the longer side, at least 5 px."""
    return max(LEAK_DILATE_MIN_PX, int(round(LEAK_DILATE_FRACTION * max(shape[:2]))))


def is_leaking(pred: np.ndarray, gt_alpha: np.ndarray, dilate_px: int | None = None,
               threshold: float = LEAK_SHARE) -> bool:
    """Whether a predicted mask spilled onto the backdrop.

    The true object is every pixel with any alpha (``> 0``), grown by
    ``dilate_px`` (default :func:`leak_dilation`: 1 % of the image's longer
    side, at least 5 px, which absorbs edge and anti-aliasing disagreement).
    The mask leaks when more than ``threshold`` (5 %) of its pixels lie
    outside that.  An empty mask does not leak (it fails differently).
    """
    p = _as_bool(pred)
    g = _as_alpha(gt_alpha) > 0
    if p.shape != g.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {g.shape}")
    area = int(p.sum())
    if area == 0:
        return False
    r = leak_dilation(p.shape) if dilate_px is None else int(dilate_px)
    grown = g.astype(np.uint8)
    if r > 0:
        grown = cv2.dilate(grown, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    outside = int((p & (grown == 0)).sum())
    return outside > threshold * area


def _read_alpha(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise ImageLoadError(f"{path}: ground-truth alpha not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read ground-truth alpha ({exc})") from exc


def _summarise(items: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(items)
    if n == 0:
        return {"n": 0, "mean_iou": 0.0, "median_iou": 0.0, "boundary_f1": 0.0, "alpha_sad": 0.0,
                "binary_sad": 0.0, "alpha_mse": 0.0, "binary_mse": 0.0, "leakage_rate": 0.0,
                "leakage_count": 0, "mask_fail": 0, "flagged_leakage": 0, "seconds_per_image": 0.0}

    def mean(key: str) -> float:
        return float(np.mean([it[key] for it in items]))

    ious = [it["iou"] for it in items]
    leaks = sum(1 for it in items if it["leaking"])
    return {
        "n": n,
        "mean_iou": round(float(np.mean(ious)), 5),
        "median_iou": round(float(np.median(ious)), 5),
        "boundary_f1": round(mean("boundary_f1"), 5),
        "alpha_sad": round(mean("alpha_sad"), 4),
        "binary_sad": round(mean("binary_sad"), 4),
        "alpha_mse": round(mean("alpha_mse"), 7),
        "binary_mse": round(mean("binary_mse"), 7),
        "leakage_rate": round(leaks / n, 5),
        "leakage_count": leaks,
        "mask_fail": sum(1 for it in items if it["mask_fail"]),
        "flagged_leakage": sum(1 for it in items if "leakage" in it["flags"]),
        "seconds_per_image": round(mean("seconds"), 4),
    }


def _contact_shadow_key(row: dict[str, Any]) -> str:
    """``"yes"``/``"no"`` from the row's optional ``contact_shadow`` flag, ``"(none)"`` when absent."""
    value = row.get("contact_shadow")
    return "(none)" if value is None else ("yes" if value else "no")


def _summarise_by(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """One :func:`_summarise` per value of ``key`` (category, backdrop type, contact shadow)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        groups[str(it[key])].append(it)
    return {name: _summarise(group) for name, group in sorted(groups.items())}


def evaluate_catalog_masks(dataset_root: Path, segmenter, settings: Settings, limit: int | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Segment and cut out every catalog product and compare with its ground-truth matte.

    For each row of ``catalog/products.jsonl`` (the first ``limit`` rows when
    given): load the photo, ``segmenter.segment(rgb)`` (one mask; an empty
    mask if none), :func:`~matcher.cutout.make_cutout`, then compare the hard
    mask (IoU, boundary F1 at 2 px, leakage) and the matted alpha (SAD, MSE)
    with the ground truth, plus the SAD/MSE of the hard mask read as alpha, so
    the matting's benefit shows.  Items whose photo or matte cannot be read
    are listed under ``"failed"`` with the reason and left out of the means.

    Returns a JSON-serialisable dict: ``overall``, ``per_category``,
    ``per_background`` (the row's optional backdrop type) and
    ``per_contact_shadow`` (``yes``/``no``/``(none)``) summaries
    (``n, mean_iou, median_iou, boundary_f1, alpha_sad, binary_sad, alpha_mse,
    binary_mse, leakage_rate, leakage_count, mask_fail, flagged_leakage,
    seconds_per_image``), ``worst`` (10 lowest IoU), ``items`` (one row per
    product) and ``failed``.
    """
    root = Path(dataset_root)
    catalog = root / "catalog" / "products.jsonl"
    if not catalog.is_file():
        raise FileNotFoundError(f"{catalog}: not a bench-format data set (catalog/products.jsonl missing)")
    rows: list[tuple[int, dict[str, Any] | None, str | None]] = []
    with catalog.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line), None))
            except json.JSONDecodeError as exc:
                rows.append((line_no, None, f"invalid JSON: {exc}"))
            if limit is not None and len(rows) >= limit:
                break

    iterator = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="eval-masks", unit="img")

    items: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for line_no, row, error in iterator:
        if row is None:
            failed.append({"line": line_no, "sku": None, "reason": error})
            continue
        sku = row.get("sku")
        try:
            if not row.get("image") or not row.get("alpha"):
                raise ImageLoadError("row has no image or alpha path")
            rgb = load_image(root / row["image"], max_pixels=settings.max_image_pixels,
                             max_bytes=settings.max_image_bytes).rgb
            gt = _read_alpha(root / row["alpha"])
            if gt.shape != rgb.shape[:2]:
                raise ImageLoadError(f"alpha {gt.shape} does not match image {rgb.shape[:2]}")
        except ImageLoadError as exc:
            failed.append({"line": line_no, "sku": sku, "reason": str(exc)})
            continue
        start = time.perf_counter()
        masks = segmenter.segment(rgb)
        mask = masks[0] if masks else Mask(binary=np.zeros(rgb.shape[:2], bool), score=0.0,
                                           source=getattr(segmenter, "segmenter_id", "?"))
        cutout = make_cutout(rgb, mask, settings)
        seconds = time.perf_counter() - start
        gt_alpha = gt.astype(np.float64) / 255.0
        gt_bin = gt >= 128
        pred = cutout.mask
        items.append({
            "line": line_no,
            "sku": sku,
            "category": row.get("category") or "(none)",
            "background": row.get("background") or "(none)",
            "contact_shadow": _contact_shadow_key(row),
            "iou": round(mask_iou(pred, gt_bin), 5),
            "boundary_f1": round(boundary_f1(pred, gt_bin), 5),
            "alpha_sad": round(alpha_sad(cutout.alpha, gt_alpha), 4),
            "binary_sad": round(alpha_sad(pred, gt_alpha), 4),
            "alpha_mse": round(alpha_mse(cutout.alpha, gt_alpha), 7),
            "binary_mse": round(alpha_mse(pred, gt_alpha), 7),
            "leaking": bool(is_leaking(pred, gt_alpha)),
            "mask_fail": not cutout.ok,
            "fail_reason": cutout.fail_reason,
            "flags": list(cutout.flags),
            "leakage_score": round(float(cutout.leakage_score), 4),
            "coverage": round(float(cutout.coverage), 5),
            "seconds": round(seconds, 4),
        })

    worst = sorted(items, key=lambda it: it["iou"])[:10]
    return {
        "dataset": str(root),
        "segmenter": getattr(segmenter, "segmenter_id", type(segmenter).__name__),
        "overall": _summarise(items),
        "per_category": _summarise_by(items, "category"),
        "per_background": _summarise_by(items, "background"),
        "per_contact_shadow": _summarise_by(items, "contact_shadow"),
        "worst": [{k: it[k] for k in ("sku", "category", "background", "contact_shadow", "iou", "boundary_f1",
                                      "leaking", "fail_reason", "flags")}
                  for it in worst],
        "failed": failed,
        "items": items,
    }
