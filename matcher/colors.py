"""Colour maths in CIELAB: conversion, dominant colours, CIEDE2000 and palette distance.

Everything here uses the D65 white point and 8-bit sRGB input conventions:
``L`` in ``[0, 100]``, ``a``/``b`` roughly in ``[-128, 127]``.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Sequence

import cv2
import numpy as np
from skimage.color import deltaE_ciede2000

from .types import LabColor


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB -> CIELAB (D65), float32, same leading shape as the input.

    ``uint8`` input is read as ``0..255``; float input as ``0..1``.  Works on an
    image ``(H, W, 3)``, a list of pixels ``(N, 3)`` or a single colour ``(3,)``.
    """
    arr = np.asarray(rgb)
    if arr.shape[-1] != 3:
        raise ValueError(f"expected a trailing axis of 3 channels, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) / 255.0
    else:
        f = np.clip(arr.astype(np.float32), 0.0, 1.0)
    shape = f.shape
    flat = np.ascontiguousarray(f.reshape(-1, 1, 3))
    lab = cv2.cvtColor(flat, cv2.COLOR_RGB2Lab)
    return lab.reshape(shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB float32 in ``[0, 1]`` (clipped), same leading shape."""
    arr = np.asarray(lab, dtype=np.float32)
    shape = arr.shape
    rgb = cv2.cvtColor(np.ascontiguousarray(arr.reshape(-1, 1, 3)), cv2.COLOR_Lab2RGB)
    return np.clip(rgb.reshape(shape), 0.0, 1.0)


def _distinct_colours(lab: np.ndarray) -> int:
    """How many colours differ at 0.1 Lab precision (one integer key per colour: a 1-D unique, not a row-wise one)."""
    q = np.rint(lab * 10.0).astype(np.int64) + np.array([0, 2048, 2048])  # L*10 in [0, 1000], a*10 and b*10 above -2048
    return len(np.unique((q[:, 0] << 24) | (q[:, 1] << 12) | q[:, 2]))


@functools.cache
def _thread_pools():
    """The process's native thread pools, found once: finding them costs ~4 ms, a palette ~10 ms.
    Called after sklearn is imported, so its OpenMP runtime is among them."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def dominant_colors(
    foreground: np.ndarray,
    alpha: np.ndarray,
    k: int = 4,
    max_samples: int = 20000,
    seed: int = 0,
    one_thread: bool = True,
) -> list[LabColor]:
    """The ``k`` main colours of a cutout, as CIELAB centres with weights summing to 1.

    Pixels are weighted by their alpha (pixels with alpha below 0.05 are ignored,
    so the backdrop and faint edge pixels do not form a colour of their own);
    at most ``max_samples`` pixels are drawn (reproducibly, from ``seed``) and
    clustered with k-means in CIELAB using the alpha values as sample weights.
    The result is sorted by weight, largest first; it is empty when no pixel
    is opaque enough, and shorter than ``k`` when the cutout has fewer distinct
    colours.
    """
    from sklearn.cluster import KMeans

    fg = np.asarray(foreground)
    raw = np.asarray(alpha)
    a = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else np.clip(raw.astype(np.float32), 0.0, 1.0)
    if fg.shape[:2] != a.shape:
        raise ValueError(f"foreground {fg.shape[:2]} and alpha {a.shape} differ in size")
    keep = a.reshape(-1) >= 0.05
    if not keep.any() or k < 1:
        return []
    pixels = fg.reshape(-1, 3)[keep]
    weights = a.reshape(-1)[keep].astype(np.float64)
    if len(pixels) > max_samples:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(pixels), size=max_samples, replace=False)
        pixels, weights = pixels[idx], weights[idx]
    lab = rgb_to_lab(pixels).astype(np.float64)
    distinct = _distinct_colours(lab)
    n_clusters = max(1, min(k, distinct))
    # One thread: a few thousand points cluster in milliseconds, while OpenMP's thread team took
    # ~0.9 s per call on a busy 2-core machine (measured; scripts/bench_query.py).
    with warnings.catch_warnings(), (_thread_pools().limit(limits=1) if one_thread else contextlib.nullcontext()):
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-duplicate colours
        km = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(lab, sample_weight=weights)
    totals = np.bincount(km.labels_, weights=weights, minlength=n_clusters)
    if totals.sum() <= 0:
        return []
    share = totals / totals.sum()
    order = np.argsort(-share, kind="stable")
    return [
        LabColor(lab=tuple(float(v) for v in km.cluster_centers_[i]), weight=float(share[i]))
        for i in order
        if share[i] > 0
    ]


def ciede2000(lab1: np.ndarray | Sequence[float], lab2: np.ndarray | Sequence[float]) -> float | np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1); a float for single colours, else an array."""
    a1 = np.asarray(lab1, dtype=np.float64)
    a2 = np.asarray(lab2, dtype=np.float64)
    out = deltaE_ciede2000(a1, a2)
    if np.ndim(out) == 0:
        return float(out)
    return out


def _palette_arrays(palette: Sequence[LabColor]) -> tuple[np.ndarray, np.ndarray]:
    labs = np.array([c.lab for c in palette], dtype=np.float64).reshape(-1, 3)
    w = np.array([max(0.0, c.weight) for c in palette], dtype=np.float64)
    total = w.sum()
    w = w / total if total > 0 else np.full(len(w), 1.0 / max(1, len(w)))
    return labs, w


def palette_distances(query: Sequence[LabColor], others: Sequence[Sequence[LabColor] | None]) -> list[float | None]:
    """``palette_distance(query, p)`` ("nearest") for every palette ``p`` of ``others`` (None stays None), with one
    ΔE2000 call for all of them: a re-ranked list has 100 candidates, and per-call overhead was most of the cost."""
    out: list[float | None] = [None] * len(others)
    wanted = [i for i, p in enumerate(others) if p is not None]
    if not query or not wanted:
        for i in wanted:
            out[i] = palette_distance(query, others[i])
        return out
    lab1, w1 = _palette_arrays(query)
    arrays = [_palette_arrays(others[i]) if others[i] else None for i in wanted]
    stacked = np.concatenate([a[0] for a in arrays if a is not None] or [np.zeros((0, 3))])
    cost = np.asarray(deltaE_ciede2000(lab1[:, None, :], stacked[None, :, :]), np.float64).reshape(len(lab1), -1)
    start = 0
    for i, arr in zip(wanted, arrays):
        if arr is None:  # an empty palette
            out[i] = float("inf")
            continue
        out[i] = _nearest_colours(cost[:, start:start + len(arr[0])], w1, arr[1])
        start += len(arr[0])
    return out


def _nearest_colours(cost: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> float:
    """The "nearest" palette distance from the (k1, k2) ΔE2000 matrix: each colour to its nearest on the
    other side, weighted, both directions averaged."""
    return 0.5 * (float(np.dot(w1, cost.min(axis=1))) + float(np.dot(w2, cost.min(axis=0))))


def palette_distance(p1: Sequence[LabColor], p2: Sequence[LabColor], method: str = "nearest") -> float:
    """Distance between two weighted palettes in CIEDE2000 units (0 = same colours).

    ``method="nearest"`` (default): every colour of one palette is matched to its
    nearest colour (by ΔE2000) in the other palette; the matched differences are
    averaged with the colours' weights, and the two directions are averaged, so
    the measure is symmetric.  It is cheap (k×k ΔE values), tolerant of palettes
    of different length and of a colour being split into two similar clusters,
    which is what k-means does on shading.  It ignores how much of each colour
    there is on the other side (a small red accent matches a large red area).

    ``method="emd"``: earth mover's distance with ΔE2000 as ground distance
    (a small linear programme via ``scipy.optimize.linprog``); respects the
    amounts as well, at roughly a millisecond per pair.

    An empty palette is infinitely far from a non-empty one and 0 from another
    empty one.
    """
    if not p1 and not p2:
        return 0.0
    if not p1 or not p2:
        return float("inf")
    lab1, w1 = _palette_arrays(p1)
    lab2, w2 = _palette_arrays(p2)
    cost = deltaE_ciede2000(lab1[:, None, :], lab2[None, :, :])
    cost = np.asarray(cost, dtype=np.float64).reshape(len(lab1), len(lab2))
    if method == "nearest":
        return _nearest_colours(cost, w1, w2)
    if method == "emd":
        from scipy.optimize import linprog

        n, m = cost.shape
        a_eq = np.zeros((n + m, n * m))
        for i in range(n):
            a_eq[i, i * m:(i + 1) * m] = 1.0
        for j in range(m):
            a_eq[n + j, j::m] = 1.0
        b_eq = np.concatenate([w1, w2])
        res = linprog(cost.reshape(-1), A_eq=a_eq[:-1], b_eq=b_eq[:-1], bounds=(0, None), method="highs")
        if not res.success:  # pragma: no cover - the transport problem is always feasible
            raise RuntimeError(f"palette EMD failed: {res.message}")
        return float(res.fun)
    raise ValueError(f"unknown palette distance method {method!r} (use 'nearest' or 'emd')")
