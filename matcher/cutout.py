"""The polish stage: trimap, alpha matte, halo-free foreground, quality gates, composite.

Pure functions; the only state is what is passed in.  ``make_cutout`` turns a
segmenter's hard :class:`~matcher.types.Mask` into a :class:`~matcher.types.Cutout`
(or a cutout that says why it is not usable), and ``composite_for_embedding``
renders any cutout the same way, whether it came from a catalog shot or from
a box in a room photo, so both look alike to the embedder.

Alpha is estimated in two ways and combined per pixel (see :func:`matte`):
closed-form matting (``pymatting.estimate_alpha_cf``) where a pixel's colour
is explained as a mix of the nearby object and backdrop colours, and the
area coverage of a slightly smoothed sub-pixel contour of the mask where it
is not (dark anti-aliasing fringes, JPEG ringing, shading at silhouettes: the
colour-line model would call those pixels opaque).
"""

from __future__ import annotations

import cv2
import numpy as np

from .colors import dominant_colors
from .settings import Settings
from .types import Box, Cutout, Mask

# A mask whose pixels look like the image border's backdrop this much (share of
# pixels within LEAKAGE_DELTA_E of the border model) is flagged "leakage".
LEAKAGE_THRESHOLD = 0.15
LEAKAGE_DELTA_E = 6.0
# Flag "touches_border" when this share of the mask's outline lies on the image edge.
BORDER_TOUCH_THRESHOLD = 0.02
# Epsilon of the closed-form matting Laplacian (pymatting's default is 1e-7; a
# larger value is smoother and far better conditioned on JPEG noise).
CF_EPSILON = 1e-5
# How far outside the hard mask (px) closed-form alpha may add a soft fringe.
FRINGE_PX = 3
# Around each pixel that may get a soft fringe, this many pixels stay unknown in the closed-form solve.
CF_REACH_PX = 6
# Outside the mask, closed-form alpha is used only where it agrees with the
# colour-line alpha within this and the pixel lies this close (relative to the
# object/backdrop contrast) to the line between the two colours.
COLOR_LINE_TOLERANCE = 0.15


def default_band(shape: tuple[int, int]) -> int:
    """Unknown-band width for an image: 8 px up to 512 px side, growing to 16 px at 1024 px and above."""
    side = max(shape[:2])
    return int(np.clip(round(side / 64.0), 8, 16))


def make_trimap(mask: np.ndarray, band_px: int | None = None) -> np.ndarray:
    """uint8 trimap (0 backdrop, 128 unknown, 255 object) from a hard mask.

    ``band_px`` is the total width of the unknown band straddling the mask's
    edge: the mask is eroded by ``band_px // 2`` and dilated by
    ``band_px - band_px // 2`` (elliptical kernels).  Default
    :func:`default_band`.  Parts of the object thinner than the band (wires,
    legs) become entirely unknown.
    """
    m = np.asarray(mask).astype(bool)
    if band_px is None:
        band_px = default_band(m.shape)
    band_px = max(0, int(band_px))
    tri = np.zeros(m.shape, dtype=np.uint8)
    if band_px == 0:
        tri[m] = 255
        return tri
    r_in, r_out = band_px // 2, band_px - band_px // 2
    m8 = m.astype(np.uint8)
    inner = cv2.erode(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r_in + 1, 2 * r_in + 1))) if r_in else m8
    outer = cv2.dilate(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r_out + 1, 2 * r_out + 1)))
    tri[outer > 0] = 128
    tri[inner > 0] = 255
    return tri


def contour_coverage(mask: np.ndarray, sigma: float = 0.7, level: float = 0.6, upsample: int = 4) -> np.ndarray:
    """Area coverage of each pixel by a smoothed sub-pixel outline of ``mask`` (float32 in [0, 1]).

    The hard mask is blurred (``sigma`` px), upsampled ``upsample`` times,
    cut at ``level`` and averaged back: an anti-aliased rendering of the mask's
    outline.  A ``level`` above 0.5 pulls the outline slightly inwards, because
    a thresholded mask holds every pixel the object touches, not only those it
    half covers.
    """
    m = np.asarray(mask, dtype=np.float32)
    if not m.any():
        return np.zeros(m.shape, np.float32)
    h, w = m.shape
    blur = cv2.GaussianBlur(m, (0, 0), sigma) if sigma > 0 else m
    up = cv2.resize(blur, (w * upsample, h * upsample), interpolation=cv2.INTER_LINEAR)
    cov = cv2.resize((up > level).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    # Thin parts the smoothing would erase keep their hard value.
    lost = (m > 0) & (cv2.dilate(cov, np.ones((3, 3), np.uint8)) < 0.5)
    cov[lost] = 1.0
    return np.clip(cov, 0.0, 1.0).astype(np.float32)


def color_line_fit(image: np.ndarray, trimap: np.ndarray,
                   where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: alpha implied by the nearest known object and backdrop colours, and the fit's residual.

    ``F`` and ``B`` are the colours of the nearest definitely-object and
    definitely-backdrop pixels of the trimap; alpha is the projection of
    ``I - B`` onto ``F - B`` (unclipped) and the residual is the distance of
    ``I`` from that line, both relative to ``|F - B|``.  Used to decide where
    the colour matte can be believed.  With ``where`` (bool HxW), only those
    pixels are fitted; the others get NaN and an infinite residual.
    """
    from scipy import ndimage as ndi

    fg_known = trimap == 255
    bg_known = trimap == 0
    h, w = trimap.shape
    a_full, resid_full = np.full((h, w), np.nan, np.float32), np.full((h, w), np.inf, np.float32)
    if not fg_known.any() or not bg_known.any():
        return a_full, resid_full
    _, (fy, fx) = ndi.distance_transform_edt(~fg_known, return_indices=True)
    _, (by, bx) = ndi.distance_transform_edt(~bg_known, return_indices=True)
    ys, xs = np.nonzero(np.ones((h, w), bool) if where is None else where)
    img = image[ys, xs].astype(np.float32)
    f = image[fy[ys, xs], fx[ys, xs]].astype(np.float32)
    b = image[by[ys, xs], bx[ys, xs]].astype(np.float32)
    fb = f - b
    n2 = np.maximum((fb * fb).sum(axis=-1), 1e-6)
    ib = img - b
    a = (ib * fb).sum(axis=-1) / n2
    perp = ib - a[..., None] * fb
    a_full[ys, xs] = a
    resid_full[ys, xs] = np.sqrt((perp * perp).sum(axis=-1) / n2)
    return a_full, resid_full


def _closed_form_alpha(image01: np.ndarray, trimap: np.ndarray, preconditioner: str = "ichol") -> np.ndarray:
    import pymatting

    tri = trimap.astype(np.float64) / 255.0
    # Incomplete Cholesky (pymatting's default) gives the same answer as Jacobi in a third of the time.
    return pymatting.estimate_alpha_cf(
        image01, tri,
        preconditioner=pymatting.jacobi if preconditioner == "jacobi" else None,
        laplacian_kwargs={"epsilon": CF_EPSILON},
        cg_kwargs={"maxiter": 2000, "rtol": 1e-6},
    )


def band_alpha(image01: np.ndarray, mask: np.ndarray, trimap: np.ndarray, *, fringe_scope: str = "candidates") -> np.ndarray:
    """Alpha over a trimap: 0/1 where known, a per-pixel choice of two estimates in the unknown band.

    * :func:`contour_coverage` of the hard mask (geometric anti-aliasing of its
      outline) is the default.  It is right for the sharp silhouettes of most
      furniture and immune to dark fringes, JPEG ringing and shading, which
      the colour model mistakes for opaque object.
    * Closed-form matting (pymatting) is used for pixels *outside* the hard
      mask by up to ``FRINGE_PX`` pixels where the colour says "partly object": its
      alpha is above 0.25 and agrees within 0.15 with the alpha implied by the
      nearest object and backdrop colours, which must explain the pixel (line
      residual below 0.15 of the contrast).  That is fuzz, fringes and soft
      edges that the segmenter's threshold left out.

    ``fringe_scope="candidates"`` solves the closed-form system only around the pixels that can pass
    the colour-line test (none: no solve at all); ``"band"`` solves it over the whole unknown band.
    The solve was two thirds of a query's matting time and its answer is used only on those pixels.
    """
    alpha = trimap.astype(np.float32) / 255.0
    unknown = trimap == 128
    if not unknown.any():
        return alpha
    geo = contour_coverage(mask)
    alpha = np.where(unknown, geo, alpha).astype(np.float32)
    if not ((trimap == 255).any() and (trimap == 0).any()):
        return alpha
    m8 = mask.astype(np.uint8)
    ring = cv2.dilate(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FRINGE_PX + 1, 2 * FRINGE_PX + 1)))
    outside = (ring > 0) & (m8 == 0)
    line_alpha, resid = color_line_fit(image01, trimap, where=unknown & outside)  # the only pixels asked about
    possible = unknown & outside & (resid <= COLOR_LINE_TOLERANCE)
    cf_trimap = trimap
    if fringe_scope == "candidates":
        possible &= line_alpha > 0.25 - COLOR_LINE_TOLERANCE  # cf > 0.25 and |cf - line| <= tol need this
        if not possible.any():
            return alpha
        # Unknowns only near those pixels; the rest of the band is pinned to the hard mask.
        near = cv2.dilate(possible.astype(np.uint8), np.ones((2 * CF_REACH_PX + 1,) * 2, np.uint8)) > 0
        cf_trimap = np.where(unknown & ~near, np.where(mask, 255, 0), trimap).astype(trimap.dtype)
    cf = np.clip(_closed_form_alpha(image01.astype(np.float64), cf_trimap,
                                    "ichol" if fringe_scope == "candidates" else "jacobi"), 0.0, 1.0).astype(np.float32)
    soft = possible & (cf > 0.25) & (np.abs(cf - line_alpha) <= COLOR_LINE_TOLERANCE)
    alpha[soft] = cf[soft]
    return alpha


def matte(image: np.ndarray, mask: np.ndarray, max_side: int = 1024, *,
          fringe_scope: str = "candidates") -> tuple[np.ndarray, np.ndarray]:
    """Soft alpha and halo-free foreground colours for ``mask`` on ``image``.

    Works on the mask's bounding box plus the band (downscaled so its longest
    side is at most ``max_side``, the result upsampled).  Only the unknown
    band of :func:`make_trimap` can take values other than the hard mask's;
    there alpha is chosen per pixel by :func:`band_alpha` (geometric coverage
    of the outline, or closed-form matting for soft fringes outside it).  Foreground colours come from
    ``pymatting.estimate_foreground_ml`` (so backdrop colour does not bleed
    into edges); fully opaque pixels keep their own colour.

    Returns ``(alpha float32 HxW in [0, 1], foreground float32 HxWx3 in [0, 1])``.
    """
    import pymatting

    img = np.ascontiguousarray(np.asarray(image)[..., :3])
    m = np.asarray(mask).astype(bool)
    h, w = m.shape
    img01_full = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else np.clip(img.astype(np.float32), 0, 1)
    alpha_full = np.zeros((h, w), np.float32)
    fg_full = img01_full.copy()
    if not m.any():
        return alpha_full, fg_full
    band = default_band((h, w))
    ys, xs = np.nonzero(m)
    pad = band + 4
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    crop = img01_full[y0:y1, x0:x1]
    cmask = m[y0:y1, x0:x1]
    ch, cw = cmask.shape
    scale = min(1.0, float(max_side) / max(ch, cw))
    if scale < 1.0:
        sw, sh = max(1, int(round(cw * scale))), max(1, int(round(ch * scale)))
        work = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA)
        wmask = cv2.resize(cmask.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) >= 0.5
        wband = max(2, int(round(band * scale)))
    else:
        work, wmask, wband = crop, cmask, band
    tri = make_trimap(wmask, wband)
    alpha = band_alpha(work, wmask, tri, fringe_scope=fringe_scope)
    fg = pymatting.estimate_foreground_ml(work.astype(np.float64), alpha.astype(np.float64)).astype(np.float32)
    fg = np.where((alpha >= 1.0)[..., None], work, fg)
    if scale < 1.0:
        alpha = cv2.resize(alpha, (cw, ch), interpolation=cv2.INTER_LINEAR)
        fg = cv2.resize(fg, (cw, ch), interpolation=cv2.INTER_LINEAR)
        full_tri = make_trimap(cmask, band)
        alpha = np.where(full_tri == 128, alpha, full_tri.astype(np.float32) / 255.0)
        fg = np.where((alpha >= 1.0)[..., None], crop, fg)
    alpha_full[y0:y1, x0:x1] = np.clip(alpha, 0.0, 1.0)
    fg_full[y0:y1, x0:x1] = np.clip(fg, 0.0, 1.0)
    return alpha_full, fg_full


def mask_bbox(mask: np.ndarray) -> Box | None:
    """Tight box (exclusive right/bottom) around the mask's pixels, or None when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def border_touch_share(mask: np.ndarray) -> float:
    """Share of the mask's outline pixels that lie on the image's outermost rows/columns."""
    m = np.asarray(mask).astype(np.uint8)
    if not m.any():
        return 0.0
    inner = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    outline = (m > 0) & (inner == 0)
    edge = np.zeros_like(outline)
    edge[0, :] = edge[-1, :] = True
    edge[:, 0] = edge[:, -1] = True
    return float((outline & edge).sum() / max(1, outline.sum()))


def backdrop_likeness(image: np.ndarray, mask: np.ndarray, delta_e: float = LEAKAGE_DELTA_E) -> float:
    """Share of mask pixels indistinguishable from the image border's backdrop.

    The backdrop is modelled from the image's border ring outside the mask
    (median CIELAB colour); a mask pixel counts when it lies within
    ``delta_e`` (ΔE76) of it.  A mask that has flooded the backdrop scores
    high; a product merely similar in colour to the backdrop scores on its
    look-alike parts only.  0 when the border is entirely covered.
    """
    from .colors import rgb_to_lab

    m = np.asarray(mask).astype(bool)
    if not m.any():
        return 0.0
    h, w = m.shape
    width = max(2, int(round(0.02 * min(h, w))))
    ring = np.zeros((h, w), bool)
    ring[:width] = ring[-width:] = True
    ring[:, :width] = ring[:, -width:] = True
    ring &= ~m
    if ring.sum() < 16:
        return 0.0
    rgb = np.asarray(image)[..., :3]
    ref = np.median(rgb_to_lab(rgb[ring]), axis=0)  # only the pixels compared are converted
    d = np.linalg.norm(rgb_to_lab(rgb[m]) - ref, axis=1)
    return float((d < delta_e).mean())


def leakage_score(image: np.ndarray, mask: np.ndarray) -> float:
    """Ground-truth-free leakage score in [0, 1]; higher means the mask more likely spilled onto the backdrop.

    The larger of: the share of the mask's outline on the image border
    (:func:`border_touch_share`; a catalog product is framed with margin, a
    flood-filled backdrop runs into the edges), and the share of mask pixels
    that look like the border backdrop (:func:`backdrop_likeness`).  A score
    above ``LEAKAGE_THRESHOLD`` (0.15) raises the ``"leakage"`` flag.
    """
    return float(max(border_touch_share(mask), backdrop_likeness(image, mask)))


def _component_count(mask: np.ndarray, min_share: float = 0.01) -> int:
    n, _, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask).astype(np.uint8), connectivity=8)
    if n <= 1:
        return 0
    areas = stats[1:, cv2.CC_STAT_AREA]
    return int((areas >= min_share * areas.max()).sum())


def make_cutout(image: np.ndarray, mask: Mask, settings: Settings, *, max_side: int | None = None) -> Cutout:
    """Gate the mask on coverage, then matte it and describe it.

    Coverage below ``settings.min_coverage`` or above ``settings.max_coverage``
    gives a cutout with ``fail_reason`` (``"mask_fail: coverage ..."``), the
    ``"mask_fail"`` flag, the hard mask as alpha and no palette; nothing is
    matted.  Otherwise: the matte (:func:`matte`, at most
    ``settings.matting_max_side``), the bbox, coverage, :func:`leakage_score`,
    flags (``"touches_border"`` when more than 2 % of the outline is on the
    image edge, ``"leakage"`` when the score exceeds ``LEAKAGE_THRESHOLD``,
    ``"multi_component"`` when more than one piece of at least 1 % of the
    largest one) and ``settings.dominant_colors`` dominant colours.
    """
    img = np.ascontiguousarray(np.asarray(image)[..., :3])
    if img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
    binary = np.asarray(mask.binary).astype(bool)
    if binary.shape != img.shape[:2]:
        raise ValueError(f"mask {binary.shape} does not match image {img.shape[:2]}")
    coverage = float(binary.mean()) if binary.size else 0.0
    bbox = mask_bbox(binary)
    fail = None
    if coverage < settings.min_coverage:
        fail = f"mask_fail: coverage {coverage:.3f} below {settings.min_coverage:g}"
    elif coverage > settings.max_coverage:
        fail = f"mask_fail: coverage {coverage:.3f} above {settings.max_coverage:g}"
    if fail is not None:
        return Cutout(
            foreground=img.astype(np.float32) / 255.0,
            alpha=binary.astype(np.float32),
            mask=binary,
            bbox=bbox,
            coverage=coverage,
            leakage_score=1.0 if coverage > settings.max_coverage else 0.0,
            flags=("mask_fail",),
            fail_reason=fail,
            dominant_colors=[],
        )
    alpha, fg = matte(img, binary, max_side=max_side or settings.matting_max_side,
                      fringe_scope="candidates" if settings.fast_matting else "band")
    touch = border_touch_share(binary)
    leak = float(max(touch, backdrop_likeness(img, binary)))
    flags: list[str] = []
    if touch > BORDER_TOUCH_THRESHOLD:
        flags.append("touches_border")
    if leak > LEAKAGE_THRESHOLD:
        flags.append("leakage")
    if _component_count(binary) > 1:
        flags.append("multi_component")
    palette = dominant_colors(fg, alpha, k=settings.dominant_colors, max_samples=4000 if settings.fast_matting else 20000,
                              one_thread=settings.fast_matting)
    return Cutout(
        foreground=fg,
        alpha=alpha,
        mask=binary,
        bbox=bbox,
        coverage=coverage,
        leakage_score=leak,
        flags=tuple(flags),
        fail_reason=None,
        dominant_colors=palette,
    )


def composite_for_embedding(cutout: Cutout, background: tuple[int, int, int] = (128, 128, 128),
                            margin: float = 0.06) -> np.ndarray:
    """RGB uint8 square image of the cutout over a flat ``background``.

    The halo-free foreground is alpha-composited over ``background``, cropped
    to the bbox grown by ``margin`` times its longer side on every side
    (anything beyond the image counts as background), then padded to a square
    with the same background, object centred.  A cutout without a bbox gives a
    32x32 square of plain background.
    """
    bg_u8 = np.asarray(background, dtype=np.uint8).reshape(3)
    bg = bg_u8.astype(np.float32).reshape(1, 1, 3) / 255.0
    box = cutout.bbox
    if box is None or box.area <= 0:
        return np.tile(bg_u8, (32, 32, 1))
    fg = np.asarray(cutout.foreground, dtype=np.float32)
    a = np.clip(np.asarray(cutout.alpha, dtype=np.float32), 0.0, 1.0)[..., None]
    h, w = a.shape[:2]
    pad = margin * max(box.width, box.height)
    x0, y0 = int(np.floor(box.x0 - pad)), int(np.floor(box.y0 - pad))
    x1, y1 = int(np.ceil(box.x1 + pad)), int(np.ceil(box.y1 + pad))
    cw, ch = x1 - x0, y1 - y0
    side = max(cw, ch)
    ox, oy = (side - cw) // 2, (side - ch) // 2  # where the crop sits in the square
    out = np.empty((side, side, 3), np.float32)
    out[:] = bg
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if ix1 > ix0 and iy1 > iy0:
        sl = (slice(iy0, iy1), slice(ix0, ix1))
        comp = fg[sl] * a[sl] + bg * (1.0 - a[sl])
        out[oy + iy0 - y0:oy + iy1 - y0, ox + ix0 - x0:ox + ix1 - x0] = comp
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
