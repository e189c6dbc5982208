"""Edge-aware feathering and the bit-exact composite.

The guided filter (He, Sun and Tang, "Guided Image Filtering", ECCV 2010) is
implemented here with ``cv2.boxFilter`` only, so it does not depend on the
``cv2.ximgproc`` contrib module.  ``fast_guided_filter`` is the subsampled
variant (He and Sun, 2015): the linear coefficients are computed at a reduced
scale and applied to the full-resolution guide, which keeps edges sharp at full
resolution for a fraction of the cost.

The composite is computed in integers: ``alpha`` is quantised to ``0..255`` and
``(original * (255 - a) + edited * a + 127) // 255`` is evaluated in ``uint16``
(the largest intermediate is ``255 * 255 + 127 = 65152``).  Where ``a == 0`` this
is ``(original * 255 + 127) // 255 == original`` for every 8-bit value, so the
output equals the original bit for bit wherever the mask is zero.
"""

from __future__ import annotations

import numpy as np
import cv2

from ..codec import alpha_to_uint8  # the one [0, 1] -> 0..255 quantiser; re-exported here

__all__ = [
    "guided_filter",
    "fast_guided_filter",
    "feather_mask",
    "auto_feather_radius",
    "alpha_to_uint8",
    "composite",
]


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, cv2.CV_32F, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float = 2e-3) -> np.ndarray:
    """Grey-guide guided filter: ``q = mean(a) * I + mean(b)`` with ``a = cov(I, p) / (var(I) + eps)``.

    ``guide`` and ``src`` are float arrays of the same ``(H, W)`` shape; the guide
    should be in ``[0, 1]`` for ``eps`` to have its usual meaning.
    """
    guide = np.asarray(guide, dtype=np.float32)
    src = np.asarray(src, dtype=np.float32)
    if guide.shape != src.shape:
        raise ValueError(f"guide {guide.shape} and src {src.shape} differ in shape")
    a, b = _coefficients(guide, src, max(1, int(radius)), eps)
    return _box(a, radius) * guide + _box(b, radius)


def _coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    mean_i = _box(guide, radius)
    mean_p = _box(src, radius)
    corr_ip = _box(guide * src, radius)
    corr_ii = _box(guide * guide, radius)
    var_i = corr_ii - mean_i * mean_i
    cov_ip = corr_ip - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return a, b


def fast_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float = 2e-3, subsample: int | None = None) -> np.ndarray:
    """Guided filter with the coefficients computed at ``1/subsample`` scale.

    ``subsample`` defaults to ``max(1, radius // 4)`` so the reduced radius stays
    at about 4 pixels.  With ``subsample == 1`` this is exactly ``guided_filter``.
    """
    guide = np.asarray(guide, dtype=np.float32)
    src = np.asarray(src, dtype=np.float32)
    radius = max(1, int(radius))
    s = max(1, int(subsample if subsample is not None else radius // 4))
    if s == 1:
        return guided_filter(guide, src, radius, eps)
    h, w = guide.shape
    size = (max(1, round(w / s)), max(1, round(h / s)))
    g_small = cv2.resize(guide, size, interpolation=cv2.INTER_AREA)
    p_small = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
    r_small = max(1, round(radius / s))
    a, b = _coefficients(g_small, p_small, r_small, eps)
    mean_a = cv2.resize(_box(a, r_small), (w, h), interpolation=cv2.INTER_LINEAR)
    mean_b = cv2.resize(_box(b, r_small), (w, h), interpolation=cv2.INTER_LINEAR)
    return mean_a * guide + mean_b


def auto_feather_radius(region_areas: list[int] | np.ndarray, image_shape: tuple[int, int]) -> int:
    """Feather radius from the typical changed-region size: 3% of the median region's side.

    Clamped to ``[1, 1.2% of the long side]`` so a huge region never gets a halo
    wider than a few dozen pixels and a small one keeps at least one pixel.
    """
    long_side = max(image_shape[:2])
    upper = max(1, round(0.012 * long_side))
    areas = np.asarray(list(region_areas), dtype=np.float64)
    if areas.size == 0:
        return min(2, upper)
    return int(np.clip(round(0.03 * float(np.sqrt(np.median(areas)))), 1, upper))


def feather_mask(hard: np.ndarray, guide_rgb: np.ndarray, radius: int, *, eps: float = 2e-3,
                 forbidden: np.ndarray | None = None) -> np.ndarray:
    """Soft alpha from a hard mask: 1 on the mask, an edge-aware ramp to 0 within ``radius`` outside it.

    The ramp lies OUTSIDE the hard mask, where the two images agree up to noise,
    so blending there hides the seam of a global colour difference without ever
    ghosting the old content inside the change.  It is twice the guided filter
    of the mask (radius ``radius / 2``, guide: the original in grey), clipped to
    1: it fills gaps narrower than about ``radius / 2``, follows strong edges of the
    original instead of smearing across them, and is clamped to exactly ``0``
    beyond ``radius`` from the mask and inside ``forbidden`` (protected areas).
    Values within half a grey level of 0 or 1 snap to 0 or 1.  Only the bounding
    box of the mask plus the filter's context is processed.
    """
    hard = np.asarray(hard, dtype=bool)
    h, w = hard.shape
    soft = np.zeros((h, w), np.float32)
    if not hard.any():
        return soft
    hard8 = hard.view(np.uint8)
    if radius <= 0:
        soft[hard] = 1.0
        if forbidden is not None:
            soft[forbidden] = 0.0
        return soft
    x, y, bw, bh = cv2.boundingRect(hard8)
    ctx = 2 * radius + 2
    x0, y0 = max(0, x - ctx), max(0, y - ctx)
    x1, y1 = min(w, x + bw + ctx), min(h, y + bh + ctx)
    sl = (slice(y0, y1), slice(x0, x1))
    crop = hard8[sl]
    guide = cv2.cvtColor(np.ascontiguousarray(guide_rgb[sl]), cv2.COLOR_RGB2GRAY).astype(np.float32) * np.float32(1.0 / 255.0)
    # with radius r/2 the guided filter of the mask is ~0.5 on its boundary and falls to 0 about r outside
    # it on flat ground; doubling it puts the whole ramp outside the mask (1 at the boundary)
    half = max(1, radius // 2)
    q = np.clip(fast_guided_filter(guide, crop.astype(np.float32), half, eps) * np.float32(2.0), 0.0, 1.0)
    q[crop > 0] = 1.0
    allowed = cv2.dilate(crop, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1)))
    if forbidden is not None:
        allowed[forbidden[sl]] = 0
    q *= allowed
    q[q < 0.5 / 255.0] = 0.0
    q[q > 254.5 / 255.0] = 1.0
    soft[sl] = q
    return soft


def composite(original: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``original * (1 - m) + edited * m`` in exact integer arithmetic.

    ``alpha`` is either a float soft mask in ``[0, 1]`` or a ``uint8`` alpha.  The
    edited image must already have the original's size.  Pixels with alpha 0 are
    copied from ``original`` untouched (bit-exact); only the bounding box of the
    non-zero alpha is blended.
    """
    original = np.asarray(original)
    edited = np.asarray(edited)
    if original.dtype != np.uint8 or edited.dtype != np.uint8:
        raise ValueError("composite expects uint8 images")
    if original.shape != edited.shape:
        raise ValueError(f"original {original.shape} and edited {edited.shape} differ in shape; align sizes first")
    a8 = alpha if alpha.dtype == np.uint8 else alpha_to_uint8(alpha)
    if a8.shape != original.shape[:2]:
        raise ValueError(f"alpha {a8.shape} does not match the image {original.shape[:2]}")
    out = original.copy()
    ys, xs = np.nonzero(a8.any(axis=1))[0], np.nonzero(a8.any(axis=0))[0]
    if ys.size == 0:
        return out
    sl = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    a = a8[sl].astype(np.uint16)[..., None]
    o = original[sl].astype(np.uint16)
    e = edited[sl].astype(np.uint16)
    blended = (o * (255 - a) + e * a + 127) // 255
    out[sl] = blended.astype(np.uint8)
    return out
