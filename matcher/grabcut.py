"""OpenCV GrabCut from a label map, seeded: the one place the classical and the learned segmenters run it."""

from __future__ import annotations

import cv2
import numpy as np

OBJECT_LABELS = (cv2.GC_FGD, cv2.GC_PR_FGD)
BACKDROP_LABELS = (cv2.GC_BGD, cv2.GC_PR_BGD)


def grabcut_labels(image_rgb: np.ndarray, labels: np.ndarray, iterations: int, seed: int) -> np.ndarray | None:
    """Object pixels (bool) after ``iterations`` GrabCut rounds started from ``labels`` (``cv2.GC_*`` per pixel),
    or None when GrabCut cannot build its colour models.

    GrabCut seeds its colour models with k-means on OpenCV's (per-thread) global RNG; the fixed ``seed``
    makes the mask depend on this image and these labels only, not on what the thread ran before."""
    work = np.array(labels, dtype=np.uint8, order="C")  # grabCut writes its answer into the label map
    cv2.setRNGSeed(seed)
    try:
        cv2.grabCut(np.ascontiguousarray(image_rgb[..., ::-1]), work, None, np.zeros((1, 65)), np.zeros((1, 65)),
                    iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return np.isin(work, OBJECT_LABELS)
