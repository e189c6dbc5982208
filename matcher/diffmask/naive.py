"""The plain fixed-threshold RGB baseline, kept for benchmark comparison only.

Mean absolute RGB difference, a fixed 10 % threshold, the largest connected
region only, an erode/dilate clean-up and a 30 px Gaussian feather.  Its known
weaknesses are exactly what ``compute_change_mask`` addresses: the fixed
threshold needs per-image tuning, JPEG block noise and a global relighting
pass it or fail it wholesale, every region but the largest is lost, dilation
merges neighbouring regions, and the Gaussian feather bleeds into everything
within 30 px, so the composite is not the original there.
"""

from __future__ import annotations

import time

import numpy as np
import cv2

from .core import ChangeMask, ColourShift, Region, align_sizes

__all__ = ["naive_change_mask", "naive_composite"]


def naive_change_mask(before: np.ndarray, after: np.ndarray, *, threshold: float = 0.10, feather: int = 30,
                      morph: int = 5) -> ChangeMask:
    """Baseline change mask: ``mean|before - after| / 255 > threshold``, largest region, open + dilate, Gaussian feather."""
    t0 = time.perf_counter()
    after, resized = align_sizes(before, after)
    diff = np.abs(before.astype(np.float32) - after.astype(np.float32)).mean(axis=2) / 255.0
    candidate = (diff > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidate, connectivity=8)
    mask = np.zeros(candidate.shape, np.uint8)
    regions: list[Region] = []
    if n > 1:
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = (labels == best).astype(np.uint8)
    kernel = np.ones((morph, morph), np.uint8)
    mask = cv2.dilate(cv2.erode(mask, kernel), kernel, iterations=2)
    if mask.any():
        x, y, w, h = cv2.boundingRect(mask)
        regions = [Region(x, y, x + w, y + h, int(mask.sum()))]
    hard = mask > 0
    k = 2 * feather + 1
    soft = cv2.GaussianBlur(hard.astype(np.float32), (k, k), 0) if feather > 0 else hard.astype(np.float32)
    total = time.perf_counter() - t0
    return ChangeMask(mask=hard, soft=soft, threshold=float(threshold), threshold_method="fixed-rgb", noise_level=float("nan"),
                      changed_fraction=float(hard.mean()), regions=regions, colour_shift=ColourShift(),
                      feather_radius=int(feather), resized_after=resized, timings={"total": total})


def naive_composite(before: np.ndarray, after: np.ndarray, change: ChangeMask) -> np.ndarray:
    """Float blend ``before * (1 - m) + after * m``, rounded (the baseline's composite)."""
    after, _ = align_sizes(before, after)
    m = change.soft[..., None]
    out = before.astype(np.float32) * (1.0 - m) + after.astype(np.float32) * m
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
