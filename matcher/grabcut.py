"""OpenCV GrabCut from a label map, seeded: the one place the classical and the learned segmenters run it."""

from __future__ import annotations

import cv2
import numpy as np

OBJECT_LABELS = (cv2.GC_FGD, cv2.GC_PR_FGD)
BACKDROP_LABELS = (cv2.GC_BGD, cv2.GC_PR_BGD)


def grabcut_labels(image_rgb: np.ndarray, labels: np.ndarray, iterations: int, seed: int,
                   model_side: int | None = None, model_iterations: int | None = None) -> np.ndarray | None:
    """Object pixels (bool) after ``iterations`` GrabCut rounds started from ``labels`` (``cv2.GC_*`` per pixel),
    or None when GrabCut cannot build its colour models.

    GrabCut seeds its colour models with k-means on OpenCV's (per-thread) global RNG; the fixed ``seed``
    makes the mask depend on this image and these labels only, not on what the thread ran before.

    With ``model_side``, an image larger than that learns its colour models on a copy scaled to it
    (GrabCut's cost is in proportion to the pixels), then one cut at full resolution uses them frozen,
    so the outline keeps full-resolution detail.  The copy gets ``model_iterations`` rounds (default
    ``iterations``); the full-resolution cut is one more."""
    h, w = labels.shape
    scale = 1.0 if model_side is None else min(1.0, model_side / float(max(h, w)))
    if scale >= 1.0:
        work = np.array(labels, dtype=np.uint8, order="C")  # grabCut writes its answer into the label map
        if _grabcut(image_rgb, work, iterations, seed, cv2.GC_INIT_WITH_MASK) is None:
            return None
        return np.isin(work, OBJECT_LABELS)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    small = _downscale_labels(labels, size)  # GrabCut writes its answer into it
    models = _grabcut(cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA), small,
                      model_iterations or iterations, seed, cv2.GC_INIT_WITH_MASK)
    if models is None:
        return None
    # The coarse answer only seeds the probable pixels' labels; the frozen models and the full-resolution
    # smoothness term decide them.
    coarse = cv2.resize(np.isin(small, OBJECT_LABELS).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    work = np.array(labels, dtype=np.uint8, order="C")
    probable = (work == cv2.GC_PR_FGD) | (work == cv2.GC_PR_BGD)
    work[probable] = np.where(coarse[probable], cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    if _grabcut(image_rgb, work, 1, seed, cv2.GC_EVAL_FREEZE_MODEL, models) is None:
        return None
    return np.isin(work, OBJECT_LABELS)


def _grabcut(image_rgb: np.ndarray, labels: np.ndarray, iterations: int, seed: int, mode: int,
             models: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Run ``cv2.grabCut`` in place on ``labels``; returns its (backdrop, object) colour models, or None."""
    backdrop, obj = models if models is not None else (np.zeros((1, 65)), np.zeros((1, 65)))
    cv2.setRNGSeed(seed)
    try:
        cv2.grabCut(np.ascontiguousarray(image_rgb[..., ::-1]), labels, None, backdrop, obj, iterations, mode)
    except cv2.error:
        return None
    return backdrop, obj


def _downscale_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map at ``size`` (w, h): sure where every covered pixel is sure of the same, else probable
    by the majority."""

    def share(selected: np.ndarray) -> np.ndarray:
        return cv2.resize(selected.astype(np.float32), size, interpolation=cv2.INTER_AREA)

    small = np.where(share(np.isin(labels, OBJECT_LABELS)) >= 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    small[share(labels == cv2.GC_BGD) >= 1.0 - 1e-6] = cv2.GC_BGD
    small[share(labels == cv2.GC_FGD) >= 1.0 - 1e-6] = cv2.GC_FGD
    return small
