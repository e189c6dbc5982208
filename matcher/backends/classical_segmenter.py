"""A weight-free segmenter for catalog shots (and a fallback for boxes in room photos).

Pipeline (each step a pure function below; :class:`ClassicalSegmenter` wires them):

1. ``fit_background``: a smooth CIELAB model of the backdrop, fitted robustly
   (iteratively reweighted least squares, Tukey weights) to the pixels of a
   ring along the image border (or around the box).  A quadratic surface per
   channel allows a gradient / vignetted sweep; the inliers' residual spread
   gives the noise scale, hence ``adaptive_threshold`` (for studio shots with
   the low floor ``STUDIO_MIN_THRESHOLD``: white on white is a few ΔE).
2. ``background_distance``: per-pixel ΔE76 from the modelled backdrop.
3. ``fit_shadow`` + ``shadow_candidates`` + ``soft_shadow_mask`` (+ ``split_shadow_piece``):
   pixels that are only *darker* backdrop (same chromaticity, bounded
   darkening), in smooth pieces whose rim fades softly into the clean
   backdrop.  A product's silhouette is a step, so a grey product on a white
   sweep is not taken for shadow; a shadow that runs smoothly into the
   product's dark base is split from it by a seeded watershed; a piece that
   fades softly almost all round is shadow whole.  Shadows boxed in by legs
   are looked for again at the conservative threshold, under the object
   (``_studio_threshold_and_shadow``).
4. ``initial_trimap`` + ``grabcut_refine``: ``cv2.grabCut`` initialised from a
   label map (sure backdrop / probable backdrop / probable object / sure
   object) on a crop around the candidate; shadow is probable backdrop and
   clean backdrop is fixed, so GrabCut can neither glue gaps shut nor keep
   the shadow.  For a catalog shot its colour models are learned on a copy
   of at most ``Settings.catalog_grabcut_model_side`` px (GrabCut's cost is
   in proportion to the pixels), the cut made at full resolution.
5. ``faint_border_regions`` (studio shots): faint mask regions that reach
   the frame's edge are the sweep's falloff and go.
   ``select_components``: drops specks and border-touching pieces that look
   like backdrop, keeps the main (central) component and every other
   sizeable or nearby piece (chair legs behind a thin gap, a lamp's shade).
6. ``fill_holes``: fills enclosed holes unless they look like backdrop (the
   gap in a chair back stays open).

With boxes (room photos) the backdrop is sampled around each box (the box
grown by ``BOX_CONTEXT``) and modelled as colour clusters
(``choose_box_backdrop``), there is no shadow step, and the mask is confined
to the box.

The boundary is left where the threshold puts it (every pixel the object
visibly touches); the matting stage (``matcher.cutout.matte``) turns it into
soft coverage.

No step reads ground truth; an empty result is returned as such (the
cutout stage decides what to do with implausible masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..colors import rgb_to_lab
from ..grabcut import BACKDROP_LABELS, OBJECT_LABELS, grabcut_labels
from ..imageio import as_rgb8
from ..registry import register
from ..settings import Settings
from ..types import Box, Mask

# Working resolution: larger images are segmented downscaled, the mask scaled back up.
WORK_SIDE = 768
# Minimum backdrop distance (ΔE76) that can count as object, whatever the noise.
MIN_THRESHOLD = 5.0
# The same floor for studio shots: their backdrop is modelled to a fraction of a ΔE, so a white
# product on a white sweep, a few ΔE off, is still object (the noise term raises it for noisy photos).
STUDIO_MIN_THRESHOLD = 1.5
# Darkening a soft shadow may apply to the backdrop (linear-light ratio).
SHADOW_MIN_RATIO = 0.35
# Largest gradient (ΔE per pixel, Gaussian sigma 1) inside a soft shadow.
SHADOW_MAX_GRADIENT = 3.0


@dataclass(frozen=True)
class BackgroundModel:
    """A fitted backdrop: expected CIELAB per pixel plus its noise scale."""

    lab: np.ndarray  # float32 (H, W, 3): expected backdrop colour at each pixel
    noise: float  # robust scale of the ring's residual ΔE (inliers only)
    inlier_fraction: float  # share of ring pixels the model explains
    coefficients: np.ndarray  # (n_terms, 3) polynomial coefficients, normalised coords


# ---------------------------------------------------------------------------- helpers
def border_ring(shape: tuple[int, int], width: int) -> np.ndarray:
    """Boolean mask of a ``width``-pixel ring along the edge of an ``(H, W)`` array."""
    h, w = shape
    ring = np.zeros((h, w), dtype=bool)
    width = max(1, min(width, h // 2, w // 2))
    ring[:width] = True
    ring[-width:] = True
    ring[:, :width] = True
    ring[:, -width:] = True
    return ring


def _poly_terms(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """Design matrix of 2-D monomials up to ``degree`` in normalised coordinates."""
    cols = [np.ones_like(x)]
    if degree >= 1:
        cols += [x, y]
    if degree >= 2:
        cols += [x * x, x * y, y * y]
    return np.stack(cols, axis=-1)


def _norm_coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s = float(max(h, w))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return (xs - w / 2.0) / s, (ys - h / 2.0) / s


def fit_background(lab: np.ndarray, sample: np.ndarray, degree: int = 2, max_points: int = 6000,
                   iterations: int = 6, seed: int = 0) -> BackgroundModel:
    """Robustly fit a smooth backdrop to the CIELAB pixels selected by ``sample``.

    A polynomial surface of ``degree`` (0 = flat, 2 = quadratic gradient) per
    channel, by iteratively reweighted least squares with Tukey's biweight on
    the ΔE residual, so product pixels touching the ring do not pull the fit.
    Returns the surface evaluated over the whole image and the inliers' noise.
    """
    h, w = lab.shape[:2]
    ys, xs = np.nonzero(sample)
    if len(ys) == 0:
        raise ValueError("no pixels to fit the backdrop to")
    if len(ys) > max_points:
        idx = np.random.default_rng(seed).choice(len(ys), size=max_points, replace=False)
        ys, xs = ys[idx], xs[idx]
    s = float(max(h, w))
    px = (xs.astype(np.float32) - w / 2.0) / s
    py = (ys.astype(np.float32) - h / 2.0) / s
    vals = lab[ys, xs].astype(np.float64)
    # Start from the robust flat estimate: the channel-wise median.
    design = _poly_terms(px, py, degree).astype(np.float64)
    coef = np.zeros((design.shape[1], 3))
    coef[0] = np.median(vals, axis=0)
    weights = np.ones(len(vals))
    for _ in range(iterations):
        resid = np.linalg.norm(vals - design @ coef, axis=1)
        scale = max(1.4826 * np.median(resid), 0.5)
        c = 4.685 * scale * 1.5
        u = resid / c
        weights = np.where(u < 1.0, (1.0 - u * u) ** 2, 0.0)
        if weights.sum() < design.shape[1] * 3:
            break
        sw = np.sqrt(weights)[:, None]
        coef, *_ = np.linalg.lstsq(design * sw, vals * sw, rcond=None)
    resid = np.linalg.norm(vals - design @ coef, axis=1)
    inliers = weights > 0
    noise = float(np.median(resid[inliers])) if inliers.any() else float(np.median(resid))
    gx, gy = _norm_coords(h, w)
    surface = (_poly_terms(gx, gy, degree).astype(np.float32) @ coef.astype(np.float32)).astype(np.float32)
    return BackgroundModel(lab=surface, noise=noise, inlier_fraction=float(inliers.mean()),
                           coefficients=coef.astype(np.float32))


def background_distance(lab: np.ndarray, model: BackgroundModel) -> np.ndarray:
    """Per-pixel ΔE76 between the image and the modelled backdrop (float32, HxW)."""
    return np.linalg.norm(lab - model.lab, axis=2).astype(np.float32)


def fit_background_clusters(lab: np.ndarray, sample: np.ndarray, k: int = 5, max_points: int = 4000,
                            seed: int = 0) -> BackgroundModel:
    """A backdrop of several colours: k-means centres (CIELAB) of the pixels selected by ``sample``.

    For the surroundings of a box in a room photo (wall, floor, rug, other
    furniture), which no smooth surface fits.  Each pixel's expected backdrop
    is its nearest centre; the noise is the median distance of the sampled
    pixels to their centre.
    """
    from sklearn.cluster import KMeans

    vals = lab[sample].reshape(-1, 3).astype(np.float64)
    if len(vals) == 0:
        raise ValueError("no pixels to fit the backdrop to")
    if len(vals) > max_points:
        vals = vals[np.random.default_rng(seed).choice(len(vals), size=max_points, replace=False)]
    n_clusters = max(1, min(k, len(np.unique(np.round(vals), axis=0))))
    km = KMeans(n_clusters=n_clusters, n_init=2, random_state=seed).fit(vals)
    centres = km.cluster_centers_.astype(np.float32)
    d2 = ((lab[:, :, None, :] - centres[None, None]) ** 2).sum(axis=3)
    nearest = centres[np.argmin(d2, axis=2)]
    resid = np.sqrt(((vals[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1))
    return BackgroundModel(lab=nearest.astype(np.float32), noise=float(np.median(resid)),
                           inlier_fraction=float((resid < 3.0 * max(np.median(resid), 1.0)).mean()),
                           coefficients=centres)


def choose_box_backdrop(lab: np.ndarray, ring: np.ndarray, inner: np.ndarray,
                        min_object_share: float = 0.3) -> tuple[BackgroundModel, np.ndarray, float]:
    """Backdrop model for a box: colour clusters of the surroundings, unless they explain the box away.

    Clusters (:func:`fit_background_clusters`) separate a product from a
    patchwork of wall, floor and rug far better than a smooth surface, but
    when a neighbouring object of the product's own colour is in the ring they
    call the product backdrop.  A box is drawn around an object, so if under
    the clusters less than ``min_object_share`` of the box stands out while
    the smooth surface (:func:`fit_background`) finds more, the surface wins.
    Returns ``(model, distance map, threshold)``.
    """
    clusters = fit_background_clusters(lab, ring)
    c_dist = background_distance(lab, clusters)
    c_thr = adaptive_threshold(clusters)
    c_share = float((c_dist[inner] >= c_thr).mean()) if inner.any() else 0.0
    if c_share >= min_object_share:
        return clusters, c_dist, c_thr
    surface = fit_background(lab, ring)
    s_dist = background_distance(lab, surface)
    s_thr = adaptive_threshold(surface)
    s_share = float((s_dist[inner] >= s_thr).mean()) if inner.any() else 0.0
    if s_share > c_share:
        return surface, s_dist, s_thr
    return clusters, c_dist, c_thr


def adaptive_threshold(model: BackgroundModel, floor: float = MIN_THRESHOLD) -> float:
    """Object threshold on the backdrop distance: ~4 noise sigmas, never below ``floor``.

    ``model.noise`` is the median residual ΔE of the ring's inliers; for Gaussian
    noise in three channels that is about 1.54 sigma, so 2.6x it is ~4 sigma.
    """
    return float(max(floor, 2.6 * model.noise))


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    f = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    return np.where(f <= 0.04045, f / 12.92, ((f + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _lab_to_linear(lab: np.ndarray) -> np.ndarray:
    """CIELAB (..., 3) -> linear-light RGB, same leading shape."""
    shape = lab.shape
    rgb = cv2.cvtColor(np.ascontiguousarray(lab.astype(np.float32).reshape(-1, 1, 3)), cv2.COLOR_Lab2RGB)
    return _srgb_to_linear(np.clip(rgb.reshape(shape), 0.0, 1.0))


def gradient_magnitude(lab: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Colour gradient magnitude (ΔE per pixel) after a Gaussian blur of ``sigma``."""
    blur = cv2.GaussianBlur(lab, (0, 0), sigma)
    gx = cv2.Sobel(blur, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(blur, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.sqrt((gx * gx + gy * gy).sum(axis=2)).astype(np.float32)


@dataclass(frozen=True)
class ShadowFit:
    """How well each pixel is explained as the modelled backdrop darkened by a shadow.

    Independent of the object threshold, so it is computed once per image and
    tested at both thresholds (:func:`shadow_candidates`)."""

    ratio: np.ndarray  # best linear-light darkening factor (1 = as bright as the backdrop)
    residual: np.ndarray  # ΔE left after applying that darkening (clipped to [min_ratio, 1])
    min_ratio: float


def fit_shadow(image: np.ndarray, lab: np.ndarray, model: BackgroundModel,
               min_ratio: float = SHADOW_MIN_RATIO, where: np.ndarray | None = None) -> ShadowFit:
    """In linear light a shadow scales the backdrop's RGB by ``s`` in ``[min_ratio, 1)``: the best
    ``s`` per pixel and the residual ΔE of ``lab`` (the image in CIELAB) after applying it.

    With ``where`` (bool HxW: the pixels far enough off the backdrop to be candidates), only those are
    fitted; the others get ratio 1 and an infinite residual, which no :func:`shadow_candidates` takes."""
    h, w = lab.shape[:2]
    ys, xs = np.nonzero(np.ones((h, w), bool) if where is None else where)
    lin = _srgb_to_linear(image[ys, xs])
    bg_lin = _lab_to_linear(model.lab[ys, xs])
    dot = (lin * bg_lin).sum(axis=-1)
    norm2 = np.maximum((bg_lin * bg_lin).sum(axis=-1), 1e-6)
    ratio = dot / norm2
    s = np.clip(ratio, min_ratio, 1.0)
    shaded = bg_lin * s[..., None]
    # Residual measured in Lab after applying the best darkening.
    shaded_srgb = np.where(shaded <= 0.0031308, shaded * 12.92, 1.055 * np.power(np.maximum(shaded, 0), 1 / 2.4) - 0.055)
    shaded_lab = rgb_to_lab(np.clip(shaded_srgb, 0, 1).astype(np.float32))
    ratio_full, residual_full = np.ones((h, w), np.float32), np.full((h, w), np.inf, np.float32)
    ratio_full[ys, xs] = ratio
    residual_full[ys, xs] = np.linalg.norm(lab[ys, xs] - shaded_lab, axis=-1)
    return ShadowFit(ratio=ratio_full, residual=residual_full, min_ratio=min_ratio)


def shadow_candidates(fit: ShadowFit, dist: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels that could be the backdrop in shadow: off the backdrop by ``threshold`` or more, darker by a
    bounded factor and explained by that darkening within the threshold (:func:`fit_shadow`)."""
    return (dist >= threshold) & (fit.ratio < 1.0) & (fit.ratio >= fit.min_ratio) & (fit.residual < threshold)


def soft_shadow_mask(grad: np.ndarray, candidates: np.ndarray, dist: np.ndarray, threshold: float,
                     max_gradient: float = SHADOW_MAX_GRADIENT, min_soft_share: float = 0.75,
                     min_area: int = 20, whole_soft_share: float = 0.85) -> np.ndarray:
    """Shadow candidates that fade softly into the clean backdrop.

    Candidates are cut at sharp edges (gradient above ``max_gradient``) and at
    thin bridges (a small morphological opening) into smooth pieces.  A piece
    is a soft shadow when, of the non-backdrop pixels touching the clean
    backdrop within 2 px of it (its outer rim), at least ``min_soft_share`` are
    only just above the threshold: a penumbra fades in, a product's silhouette
    is a step.  A grey product on a grey sweep is rejected because most of its
    rim is a step, even where its shading is as smooth as a shadow's.  Every
    piece with some soft rim is split by :func:`split_shadow_piece` (a shadow
    often runs smoothly into the product's own dark base); for a piece that is
    mostly step, the split-off soft part must pass the rim test on its own.
    ``grad`` is the image's :func:`gradient_magnitude` (sigma 1).
    """
    out = np.zeros_like(candidates)
    if not candidates.any():
        return out
    h, w = dist.shape
    backdrop = dist < threshold
    passable = candidates & (grad < max_gradient)
    r = max(1, int(round(0.004 * max(h, w))))
    open_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    core = cv2.morphologyEx(passable.astype(np.uint8), cv2.MORPH_OPEN, open_k)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
    if n <= 1:
        return out
    k3 = np.ones((3, 3), np.uint8)
    rim = ~backdrop & cv2.dilate(backdrop.astype(np.uint8), k3).astype(bool)
    # Which piece each rim pixel belongs to: the (largest-id) piece within r + 2 px.
    near_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 5, 2 * r + 5))
    near = cv2.dilate(labels.astype(np.float32), near_k).astype(np.int64)
    soft = dist < 1.6 * threshold
    rim_count = np.bincount(near[rim], minlength=n)
    soft_count = np.bincount(near[rim & soft], minlength=n)
    shadow = np.zeros((h, w), dtype=bool)
    object_colour = ~backdrop & ~candidates
    sharp = rim & ~soft
    soft_rim = rim & soft
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area or soft_count[i] < 8:
            continue
        x, y, ww, hh = stats[i, :4]
        pad = 2 * r + 6
        y0, y1, x0, x1 = max(0, y - pad), min(h, y + hh + pad), max(0, x - pad), min(w, x + ww + pad)
        sl = (slice(y0, y1), slice(x0, x1))
        piece = labels[sl] == i
        if soft_count[i] >= whole_soft_share * rim_count[i]:
            # Fades into the backdrop almost all round: a shadow, whole (splitting a flat
            # piece would hand much of it to the product's seeds).
            shadow[sl] |= piece
            continue
        part = split_shadow_piece(piece, grad[sl], near[sl] == i, soft_rim[sl], sharp[sl],
                                  object_colour[sl], backdrop[sl], near_k)
        if soft_count[i] < min_soft_share * rim_count[i]:
            # Mostly a step: a product with a shadow attached, or no shadow at
            # all.  Keep the soft part only if, on its own, it fades into the backdrop.
            if part.sum() < min_area:
                continue
            around = cv2.dilate(part.astype(np.uint8), near_k).astype(bool)
            n_rim = int((rim[sl] & around).sum())
            if n_rim < 8 or (soft_rim[sl] & around).sum() < min_soft_share * n_rim:
                continue
        shadow[sl] |= part
    # Grow back what the opening shaved off, without leaving the smooth candidates.
    grow_k = np.ones((3, 3), np.uint8)
    for _ in range(r + 1):
        shadow = cv2.dilate(shadow.astype(np.uint8), grow_k).astype(bool) & passable
    return shadow


def split_shadow_piece(piece: np.ndarray, grad: np.ndarray, near: np.ndarray, soft_rim: np.ndarray,
                       sharp_rim: np.ndarray, object_colour: np.ndarray, backdrop: np.ndarray,
                       near_kernel: np.ndarray, inward_px: int = 3) -> np.ndarray:
    """The part of a smooth piece that belongs to the shadow rather than to the product.

    A shadow piece can run on into the product's own dark, smoothly shaded
    base.  Seeded watershed on the gradient decides: the soft rim (where the
    piece fades into the backdrop) floods as shadow; the sharp rim (product
    silhouette against the backdrop), the piece's pixels up to ``inward_px``
    inside it (past the silhouette's own gradient ridge) and object-coloured
    pixels next to the piece flood as product; they meet at the strongest
    edge between them.
    """
    from skimage.segmentation import watershed

    soft_seeds = soft_rim & near
    grown = cv2.dilate(piece.astype(np.uint8), near_kernel).astype(bool)
    # Seeds just inside the silhouette, past the edge's own gradient ridge, so
    # the product floods its smooth interior before the shadow can.
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * inward_px + 1, 2 * inward_px + 1))
    inward = cv2.dilate((sharp_rim & near).astype(np.uint8), k).astype(bool) & piece
    object_seeds = (sharp_rim & near) | inward | (object_colour & grown)
    if not object_seeds.any():
        return piece
    markers = np.zeros(piece.shape, dtype=np.int32)
    markers[object_seeds] = 2
    markers[soft_seeds & ~object_seeds] = 1
    region = (grown & ~backdrop) | (markers > 0)
    labels = watershed(grad, markers=markers, mask=region)
    return piece & (labels == 1)


def initial_trimap(dist: np.ndarray, threshold: float, shadow: np.ndarray, band: int) -> np.ndarray:
    """GrabCut labels from the backdrop distance.

    Clearly above the threshold (3x, eroded by a pixel) = sure object; above
    it = probable object; below it within ``band`` px of a candidate, and soft
    shadow = probable backdrop; well below it (under 0.6x: clean backdrop,
    including the gaps inside a chair back) = sure backdrop, so GrabCut's
    smoothness cannot close real holes or glue slats together.
    """
    cand = (dist >= threshold) & ~shadow
    strong = (dist >= 3.0 * threshold) & ~shadow
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    sure_fg = cv2.erode(strong.astype(np.uint8), kernel).astype(bool)
    near_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    near = cv2.dilate(cand.astype(np.uint8), near_k).astype(bool)
    labels = np.full(dist.shape, cv2.GC_BGD, dtype=np.uint8)
    labels[near] = cv2.GC_PR_BGD
    labels[dist < 0.6 * threshold] = cv2.GC_BGD
    labels[shadow] = cv2.GC_PR_BGD
    labels[cand] = cv2.GC_PR_FGD
    labels[sure_fg] = cv2.GC_FGD
    return labels


def grabcut_refine(image: np.ndarray, labels: np.ndarray, iterations: int = 3, margin: int = 16,
                   model_side: int | None = None, model_iterations: int | None = None) -> np.ndarray:
    """Run ``cv2.grabCut`` from an initial label map on a crop around the non-sure-backdrop area
    (colour models learned at most ``model_side`` px in ``model_iterations`` rounds:
    :func:`matcher.grabcut.grabcut_labels`)."""
    unsure = labels != cv2.GC_BGD
    if not unsure.any():
        return np.zeros(labels.shape, dtype=bool)
    has_fg = np.isin(labels, OBJECT_LABELS)
    has_bg = np.isin(labels, BACKDROP_LABELS)
    if not has_fg.any() or not has_bg.any():
        return has_fg
    ys, xs = np.nonzero(unsure)
    h, w = labels.shape
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + margin + 1)
    crop_labels = labels[y0:y1, x0:x1]
    # GrabCut needs both classes inside the crop to build its colour models.
    if not np.isin(crop_labels, BACKDROP_LABELS).any():
        return has_fg
    cut = grabcut_labels(image[y0:y1, x0:x1], crop_labels, iterations, seed=0, model_side=model_side,
                         model_iterations=model_iterations)
    if cut is None:
        return has_fg
    out = np.zeros(labels.shape, dtype=bool)
    out[y0:y1, x0:x1] = cut
    return out


def select_components(mask: np.ndarray, dist: np.ndarray, threshold: float, focus: np.ndarray | None = None,
                      min_share: float = 0.002, big_share: float = 0.05, near_px: int | None = None) -> np.ndarray:
    """Keep the object's pieces, drop specks and backdrop-coloured border strips.

    The main component is the one with most pixels inside ``focus`` (where the
    object should be: the box, or the middle of a catalog shot), or the
    largest.  Another component is kept when it does not look like backdrop
    (median distance at or above the threshold) and is either sizeable
    (``big_share`` of the main one) or at least ``min_share`` of it and within
    ``near_px`` of a piece already kept (chair legs behind a thin gap, a
    lamp's shade above its stand).  Backdrop-like components touching the
    image border are always dropped.
    """
    from scipy import ndimage as ndi

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    if near_px is None:
        near_px = max(4, int(round(0.04 * max(h, w))))
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    areas[0] = 0.0
    score = areas.copy()
    if focus is not None:
        score = np.bincount(labels[focus].ravel(), minlength=n).astype(np.float64) + 0.1 * areas
        score[0] = -1.0
    main = int(np.argmax(score))
    main_area = areas[main]
    keep = np.zeros(n, dtype=bool)
    keep[main] = True
    ids = [i for i in range(1, n) if i != main and areas[i] >= max(4.0, min_share * main_area)]
    if not ids:
        return keep[labels]
    medians = np.asarray(ndi.median(dist, labels, ids), dtype=np.float64)
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    ww, hh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    touches = (x == 0) | (y == 0) | (x + ww >= w) | (y + hh >= h)
    cands = []
    for i, med in zip(ids, medians):
        looks_backdrop = med < threshold
        if looks_backdrop and touches[i]:
            continue
        if areas[i] >= big_share * main_area and not looks_backdrop:
            keep[i] = True
        else:
            cands.append(i)
    near_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * near_px + 1, 2 * near_px + 1))
    changed = bool(cands)
    while changed:
        changed = False
        reach = cv2.dilate(keep[labels].astype(np.uint8), near_kernel).astype(bool)
        hit = np.bincount(labels[reach].ravel(), minlength=n) > 0
        for i in list(cands):
            if hit[i]:
                keep[i] = True
                cands.remove(i)
                changed = True
    return keep[labels]


def faint_border_regions(mask: np.ndarray, dist: np.ndarray, strict: float) -> np.ndarray:
    """Faint parts of ``mask`` (backdrop distance under ``strict``) connected to the image border.

    The frame's edge of a studio shot is backdrop: a faint region reaching it
    is the sweep's unmodelled falloff (a dark backdrop's vignette), even where
    it runs into the product, which keeps its clearly visible parts.
    """
    faint = (mask & (dist < strict)).astype(np.uint8)
    n, labels = cv2.connectedComponents(faint, connectivity=4)
    touching = np.zeros(n, dtype=bool)
    touching[_border_label_ids(labels)] = True
    touching[0] = False
    return touching[labels]


def _border_label_ids(labels: np.ndarray) -> np.ndarray:
    """The component labels that occur on the outermost rows and columns of a label map."""
    return np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))


def backdrop_like(dist: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels that look like backdrop: within the threshold, or under half the local contrast.

    The second test catches mixed pixels in gaps narrower than a pixel or two
    (between slats, inside a whisk) whose distance is above the noise but below
    half of the neighbouring solid object's.
    """
    local_max = cv2.dilate(dist.astype(np.float32), np.ones((3, 3), np.uint8))
    return (dist < threshold) | (dist < 0.5 * local_max)


def fill_holes(mask: np.ndarray, dist: np.ndarray, threshold: float, max_backdrop_share: float = 0.5,
               tiny_px: int = 2) -> np.ndarray:
    """Fill enclosed holes unless they look like backdrop.

    A hole is a background region not connected to the image border.  It is
    filled when fewer than ``max_backdrop_share`` of its pixels look like
    backdrop (:func:`backdrop_like`), i.e. it is object texture the threshold
    missed, or when it has at most ``tiny_px`` pixels; backdrop-coloured holes
    (the gap inside a chair back, between slats) stay open.
    """
    if not mask.any():
        return mask
    inv = (~mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    out = mask.copy()
    border_ids = set(_border_label_ids(labels).tolist())
    bg_like = backdrop_like(dist, threshold)
    for i in range(1, n):
        if i in border_ids:
            continue
        area = stats[i, cv2.CC_STAT_AREA]
        x, y, ww, hh = stats[i, :4]
        sub = labels[y:y + hh, x:x + ww] == i
        if area <= tiny_px or bg_like[y:y + hh, x:x + ww][sub].mean() < max_backdrop_share:
            out[y:y + hh, x:x + ww][sub] = True
    return out


def segment_region(image: np.ndarray, ring: np.ndarray, focus: np.ndarray | None = None,
                   use_grabcut: bool = True, backdrop: str = "surface",
                   grabcut_model_side: int | None = None, grabcut_model_iterations: int | None = None,
                   ) -> tuple[np.ndarray, float]:
    """Segment the object in ``image`` given where the backdrop can be sampled (``ring``).

    ``backdrop="surface"`` (catalog shots) models the backdrop as one smooth
    gradient (:func:`fit_background`); ``"clusters"`` (boxes in room photos)
    as several colours where that works (:func:`choose_box_backdrop`); then
    there is no shadow step and every pixel inside ``focus`` that is not
    clean backdrop stays open to GrabCut (its colour models learned at most
    ``grabcut_model_side`` px in ``grabcut_model_iterations`` rounds, :func:`grabcut_refine`).
    Returns the boolean mask (possibly empty) and a confidence in ``[0, 1]``:
    the share of the ring the backdrop model explains times how clearly the
    object stands out (median distance over four thresholds, capped at 1).
    """
    h, w = image.shape[:2]
    lab = rgb_to_lab(image)
    if backdrop == "clusters":
        model, dist, thr = choose_box_backdrop(lab, ring, focus if focus is not None else ~ring)
        # Against a patchwork of room colours "darker backdrop" is no evidence of shadow.
        shadow = np.zeros((h, w), dtype=bool)
    else:
        model = fit_background(lab, ring)
        dist = background_distance(lab, model)
        thr, shadow = _studio_threshold_and_shadow(image, lab, model, dist)
    if use_grabcut:
        labels = initial_trimap(dist, thr, shadow, band=max(3, int(round(0.02 * max(h, w)))))
        if backdrop == "clusters" and focus is not None:
            labels[focus & (labels == cv2.GC_BGD) & (dist >= 0.6 * thr)] = cv2.GC_PR_BGD
        labels[ring & (dist < thr)] = cv2.GC_BGD
        mask = grabcut_refine(image, labels, model_side=grabcut_model_side,
                              model_iterations=grabcut_model_iterations) & ~shadow
    else:
        mask = (dist >= thr) & ~shadow
    if backdrop != "clusters":
        mask &= ~faint_border_regions(mask, dist, adaptive_threshold(model))
    mask = select_components(mask, dist, thr, focus=focus)
    mask = fill_holes(mask, dist, thr)
    contrast = float(np.median(dist[mask])) if mask.any() else 0.0
    score = float(model.inlier_fraction * min(1.0, contrast / (4.0 * thr)))
    return mask, score


def _studio_threshold_and_shadow(image: np.ndarray, lab: np.ndarray, model: BackgroundModel,
                                 dist: np.ndarray) -> tuple[float, np.ndarray]:
    """Object threshold and soft-shadow mask for a studio backdrop.

    A clean sweep is modelled to a fraction of a ΔE, so a product a few ΔE off
    the backdrop (white on white, a backdrop tinted like the product) is told
    apart with the low ``STUDIO_MIN_THRESHOLD``, and at that threshold a
    product's silhouette reads as a step, so its shading is not taken for
    shadow.  A contact shadow boxed in by legs, though, has little soft rim
    left at the low threshold; at the conservative :data:`MIN_THRESHOLD` its
    penumbra is soft again.  Those conservative pieces (which also take a
    product's own smooth shading more readily) are added only where a contact
    shadow lies: well under the object's centre.
    """
    thr = adaptive_threshold(model, floor=STUDIO_MIN_THRESHOLD)
    # Only pixels at least ``thr`` off the backdrop can be shadow candidates, at ``thr`` or at ``strict``.
    fit, grad = fit_shadow(image, lab, model, where=dist >= thr), gradient_magnitude(lab, sigma=1.0)
    shadow = soft_shadow_mask(grad, shadow_candidates(fit, dist, thr), dist, thr)
    strict = adaptive_threshold(model)
    if strict <= thr:
        return thr, shadow
    boxed_in = soft_shadow_mask(grad, shadow_candidates(fit, dist, strict), dist, strict) & ~shadow
    shadow |= _pieces_under_the_object(boxed_in, (dist >= thr) & ~shadow & ~boxed_in)
    return thr, shadow | compression_halo(dist, thr, strict)


def compression_halo(dist: np.ndarray, threshold: float, strict: float, reach: int = 2,
                     ratio: float = 0.3) -> np.ndarray:
    """Faint pixels on the backdrop side of a strong edge: JPEG ringing and chroma bleed.

    A low threshold also catches the 1–2 px fringe that compression smears
    around a contrasted silhouette.  Such a pixel is only faintly off the
    backdrop (under ``strict``), far fainter than the edge within ``reach``
    px (under ``ratio`` of its distance) and next to clean backdrop.
    """
    size = 2 * reach + 1
    local_max = cv2.dilate(dist.astype(np.float32), np.ones((size, size), np.uint8))
    clean = cv2.dilate((dist < threshold).astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    return (dist >= threshold) & (dist < strict) & (dist < ratio * local_max) & clean


def _pieces_under_the_object(pieces: np.ndarray, obj: np.ndarray, below: float = 0.25) -> np.ndarray:
    """Connected ``pieces`` whose centre lies in the bottom part of ``obj``'s extent, under its bulk.

    A contact shadow spreads on the floor under a product, so its centre is
    lower than the product's centre by ``below`` of the product's height or more.
    """
    if not pieces.any() or not obj.any():
        return np.zeros_like(pieces)
    ys = np.nonzero(obj)[0]
    top, bottom, centre = ys.min(), ys.max(), ys.mean()
    cut = centre + below * (bottom - top)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(pieces.astype(np.uint8), connectivity=8)
    keep = centroids[:, 1] >= cut
    keep[0] = False
    return keep[labels]


def centre_focus(shape: tuple[int, int], fraction: float = 0.5) -> np.ndarray:
    """A centred rectangle covering ``fraction`` of each side: where a catalog product sits."""
    h, w = shape
    f = np.zeros((h, w), dtype=bool)
    dy, dx = int(h * (1 - fraction) / 2), int(w * (1 - fraction) / 2)
    f[dy:h - dy, dx:w - dx] = True
    return f


def catalog_segmenter_id(grabcut_model_side: int | None, grabcut_model_iterations: int) -> str:
    """The id recorded with catalog masks; it changes whenever the settings change the masks.

    v2: the low studio threshold and contact shadows found at two thresholds (masks differ from v1's);
    v3: GrabCut's colour models learned in three rounds on a copy of at most 320 px (a few pixels from v2's);
    v4: in one round (the default)."""
    if not grabcut_model_side:
        return "classical:border-lab-v2"
    named = {(320, 3): "classical:border-lab-v3", (320, 1): "classical:border-lab-v4"}
    return named.get((grabcut_model_side, grabcut_model_iterations),
                     f"classical:border-lab-v4+gc{grabcut_model_side}x{grabcut_model_iterations}")


class ClassicalSegmenter:
    """Border-backdrop segmentation in CIELAB with soft-shadow suppression and GrabCut.

    Images larger than ``WORK_SIDE`` are segmented downscaled and the mask is
    scaled back up (the matting stage refines the edge at full resolution).
    """

    def __init__(self, settings: Settings | None = None, use_grabcut: bool = True) -> None:
        self.settings = settings
        self.use_grabcut = use_grabcut
        settings = settings or Settings()
        self.grabcut_model_side = settings.catalog_grabcut_model_side or None
        self.grabcut_model_iterations = settings.catalog_grabcut_model_iterations
        self.segmenter_id = catalog_segmenter_id(self.grabcut_model_side, self.grabcut_model_iterations)

    def segment(self, image: np.ndarray, boxes: Sequence[Box] | None = None) -> list[Mask]:
        image = as_rgb8(image)
        h, w = image.shape[:2]
        if boxes is None:
            mask, score = _at_work_size(image, lambda im: _segment_shot(im, self.use_grabcut, self.grabcut_model_side,
                                                                        self.grabcut_model_iterations))
            return [Mask(binary=mask, score=score, source=self.segmenter_id)]
        return [self._segment_box(image, box) for box in boxes]

    def _segment_box(self, image: np.ndarray, box: Box) -> Mask:
        h, w = image.shape[:2]
        full = np.zeros((h, w), dtype=bool)
        b = box.clip(w, h)
        if b.width < 4 or b.height < 4:
            return Mask(binary=full, score=0.0, source=self.segmenter_id)
        outer = b.expand(BOX_CONTEXT, w, h)
        oy, ox = outer.int_slices()
        crop = image[oy, ox]
        iy, ix = b.int_slices()
        inner = np.zeros(crop.shape[:2], dtype=bool)
        inner[iy.start - oy.start:iy.stop - oy.start, ix.start - ox.start:ix.stop - ox.start] = True
        mask, score = _at_work_size(crop, lambda im: _segment_in_box(im, _resize_mask(inner, im.shape[:2]),
                                                                     self.use_grabcut))
        full[oy, ox] = mask & inner
        return Mask(binary=full, score=score, source=self.segmenter_id)


# Share of the box size added on every side to sample the backdrop around a box.
BOX_CONTEXT = 0.15


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    return cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5


def _at_work_size(image: np.ndarray, run) -> tuple[np.ndarray, float]:
    """Run ``run(image) -> (mask, score)`` on a copy no larger than ``WORK_SIDE``; mask back at full size."""
    h, w = image.shape[:2]
    scale = WORK_SIDE / float(max(h, w))
    if scale >= 1.0:
        return run(image)
    small = cv2.resize(image, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))),
                       interpolation=cv2.INTER_AREA)
    mask, score = run(small)
    return _resize_mask(mask, (h, w)), score


def _segment_shot(image: np.ndarray, use_grabcut: bool, grabcut_model_side: int | None,
                  grabcut_model_iterations: int | None = None) -> tuple[np.ndarray, float]:
    """A catalog shot: backdrop from the image border, object expected near the middle."""
    h, w = image.shape[:2]
    ring = border_ring((h, w), max(3, int(round(0.02 * min(h, w)))))
    return segment_region(image, ring, focus=centre_focus((h, w)), use_grabcut=use_grabcut,
                          grabcut_model_side=grabcut_model_side, grabcut_model_iterations=grabcut_model_iterations)


def _segment_in_box(crop: np.ndarray, inner: np.ndarray, use_grabcut: bool) -> tuple[np.ndarray, float]:
    """A box in a larger photo: backdrop sampled around the box (or on the box's own border
    when the box reaches the image edges on all sides), object inside the box."""
    ring = ~inner
    if ring.sum() < 64:
        ch, cw = crop.shape[:2]
        ring = border_ring((ch, cw), max(2, int(round(0.03 * min(ch, cw)))))
    return segment_region(crop, ring, focus=inner, use_grabcut=use_grabcut, backdrop="clusters")


@register("segmenter", "classical")
def _factory(settings: Settings) -> ClassicalSegmenter:
    return ClassicalSegmenter(settings)
