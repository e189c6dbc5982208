"""A weight-free, deterministic embedder: colour, texture and silhouette.

Input: composited cutouts (the object on a uniform neutral grey, by default
``(128, 128, 128)``, cropped and padded square).  The foreground is estimated
as the pixels that differ from that grey: ``d = max_c |rgb_c - grey_c|``;
pixels with ``d >= 10`` are object, with a soft weight ramping from 0 at
``d = 3`` to 1 at ``d = 10`` for the colour histogram (anti-aliased, matted
edges blend towards grey).  Enclosed holes in the silhouette are filled and
count as object (a grey cushion inside a grey sofa is still sofa); a 3x3
opening removes single-pixel compression noise.  An object whose own colour is
that exact grey is invisible to this rule; an image with no foreground at all
is treated as all foreground so the vector is still defined.

The vector (``dim = 512``) concatenates three blocks, each L2-normalised and
then weighted so the squared weights sum to 1 (cosine similarity is the
weighted mean of the per-block cosines):

* colour, weight^2 = 0.45: joint CIELAB histogram, 4 (L*) x 8 (a*) x 8 (b*) =
  256 bins with trilinear soft binning (L* 0..100, a*/b* clipped to -64..64),
  weighted by the soft foreground, square-rooted (Hellinger) before
  normalising.
* texture, weight^2 = 0.20: rotation-invariant uniform LBP histograms (8
  neighbours, radius 1; 10 bins) of the grey image on the foreground, at full
  and at half resolution, plus a 12-bin magnitude-weighted gradient-orientation
  histogram (0..180 degrees) inside the eroded silhouette = 32.
* shape, weight^2 = 0.35: the silhouette cropped to its bounding box, centred
  in a square (aspect kept) and area-resized to a 14x14 occupancy grid (196,
  sub-weight^2 0.80), the log2 aspect ratio soft-binned into 8 bins over
  [-2, 2] (0.10) and the extent (object area / bounding-box area) into 6 bins
  over [0, 1] (0.10) = 210.  Cropping to the box makes shape invariant to small
  shifts and scale changes.  Hu moments were left out: they are unstable for
  thin furniture parts and the occupancy grid already carries the silhouette.

256 + 32 + 210 = 498 values, zero-padded to 512.  Images are first resized so
the long side is 224 px (area interpolation) so cost and histograms do not
depend on the input size; a 224 px image takes a few milliseconds.
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from ..registry import register
from .openclip_embedder import as_rgb_uint8

DIM = 512
WORK_SIDE = 224

COLOR_BINS = (4, 8, 8)
AB_RANGE = 64.0
GRID = 14
ASPECT_BINS = 8
EXTENT_BINS = 6
ORIENT_BINS = 12

BLOCK_WEIGHTS = {"colour": 0.45, "texture": 0.20, "shape": 0.35}  # squared weights, sum to 1
SHAPE_WEIGHTS = {"grid": 0.80, "aspect": 0.10, "extent": 0.10}

FG_HARD = 10.0
FG_SOFT_LOW = 3.0


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _soft_bins_1d(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear soft binning of values already scaled to bin-centre units [0, n-1]."""
    x = np.clip(x, 0.0, n - 1.0)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = x - lo
    return lo, hi, frac


def _soft_hist_scalar(value: float, lo: float, hi: float, n: int) -> np.ndarray:
    pos = (min(max(value, lo), hi) - lo) / (hi - lo) * (n - 1)
    out = np.zeros(n, dtype=np.float64)
    i = int(np.floor(pos))
    j = min(i + 1, n - 1)
    f = pos - i
    out[i] += 1 - f
    out[j] += f
    return out


def foreground(image: np.ndarray, background: tuple[int, int, int] = (128, 128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """(soft weight float32 in [0, 1], hard bool mask) of pixels differing from the uniform background."""
    diff = np.abs(image.astype(np.int16) - np.asarray(background, dtype=np.int16)).max(axis=2).astype(np.float32)
    soft = np.clip((diff - FG_SOFT_LOW) / (FG_HARD - FG_SOFT_LOW), 0.0, 1.0)
    hard = (diff >= FG_HARD).astype(np.uint8)
    hard = cv2.morphologyEx(hard, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # Fill enclosed holes: background-coloured regions not connected to the image border.
    h, w = hard.shape
    flood = np.pad(hard, 1, constant_values=0)
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 2)
    filled = (flood[1:-1, 1:-1] != 2)
    if not filled.any():
        return np.ones_like(soft), np.ones((h, w), dtype=bool)
    soft = np.where(filled, np.maximum(soft, (filled & (hard == 0)).astype(np.float32)), soft)
    soft = np.where(filled, soft, np.minimum(soft, 0.5))  # stray specks outside the silhouette count half at most
    return soft.astype(np.float32), filled


def colour_block(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    wts = weight.reshape(-1).astype(np.float64)
    sel = wts > 0
    lab, wts = lab[sel], wts[sel]
    nl, na, nb = COLOR_BINS
    l0, l1, lf = _soft_bins_1d(lab[:, 0] / 100.0 * (nl - 1), nl)
    a0, a1, af = _soft_bins_1d((lab[:, 1] + AB_RANGE) / (2 * AB_RANGE) * (na - 1), na)
    b0, b1, bf = _soft_bins_1d((lab[:, 2] + AB_RANGE) / (2 * AB_RANGE) * (nb - 1), nb)
    hist = np.zeros(nl * na * nb, dtype=np.float64)
    for li, lw in ((l0, 1 - lf), (l1, lf)):
        for ai, aw in ((a0, 1 - af), (a1, af)):
            for bi, bw in ((b0, 1 - bf), (b1, bf)):
                idx = (li * na + ai) * nb + bi
                hist += np.bincount(idx, weights=wts * lw * aw * bw, minlength=hist.size)
    total = hist.sum()
    if total > 0:
        hist /= total
    return _unit(np.sqrt(hist))


def _uniform_lut() -> np.ndarray:
    """Map 8-bit LBP codes to 10 rotation-invariant uniform classes (number of set bits, 9 = non-uniform)."""
    lut = np.empty(256, dtype=np.int64)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        lut[code] = sum(bits) if transitions <= 2 else 9
    return lut


_LBP_LUT = _uniform_lut()
_LBP_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # clockwise ring


def lbp_histogram(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """10-bin uniform LBP histogram (8 neighbours, radius 1) over the masked pixels, normalised to sum 1."""
    h, w = grey.shape
    padded = np.pad(grey, 1, mode="edge")
    code = np.zeros((h, w), dtype=np.int64)
    for bit, (dy, dx) in enumerate(_LBP_OFFSETS):
        code |= (padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] >= grey).astype(np.int64) << bit
    hist = np.bincount(_LBP_LUT[code[mask]], minlength=10).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def texture_block(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    parts = [_unit(lbp_histogram(grey, mask))]
    # The same at half resolution: coarser texture (weave, grain) rather than pixel noise.
    half = cv2.resize(grey, (max(1, grey.shape[1] // 2), max(1, grey.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    half_mask = cv2.resize(mask.astype(np.uint8), (half.shape[1], half.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    parts.append(_unit(lbp_histogram(half, half_mask)))
    g = grey.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    # Only gradients inside the silhouette, away from its outline (the outline is shape, not texture).
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ang = (np.degrees(np.arctan2(gy, gx)) % 180.0)[inner]
    pos = ang / 180.0 * ORIENT_BINS
    lo = np.floor(pos).astype(np.int64) % ORIENT_BINS
    hi = (lo + 1) % ORIENT_BINS
    frac = pos - np.floor(pos)
    m = mag[inner].astype(np.float64)
    hist = np.bincount(lo, weights=m * (1 - frac), minlength=ORIENT_BINS) + np.bincount(hi, weights=m * frac, minlength=ORIENT_BINS)
    parts.append(_unit(hist))
    return _unit(np.concatenate(parts))


def shape_block(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1].astype(np.float32)
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    oy, ox = (side - h) // 2, (side - w) // 2
    square[oy : oy + h, ox : ox + w] = crop
    grid = cv2.resize(square, (GRID, GRID), interpolation=cv2.INTER_AREA).reshape(-1).astype(np.float64)
    aspect = _soft_hist_scalar(float(np.log2(w / h)), -2.0, 2.0, ASPECT_BINS)
    extent = _soft_hist_scalar(float(crop.mean()), 0.0, 1.0, EXTENT_BINS)
    return np.concatenate([
        np.sqrt(SHAPE_WEIGHTS["grid"]) * _unit(grid),
        np.sqrt(SHAPE_WEIGHTS["aspect"]) * _unit(aspect),
        np.sqrt(SHAPE_WEIGHTS["extent"]) * _unit(extent),
    ])


_COLOUR_LEN = COLOR_BINS[0] * COLOR_BINS[1] * COLOR_BINS[2]
_TEXTURE_LEN = 10 + 10 + ORIENT_BINS
_SHAPE_LEN = GRID * GRID + ASPECT_BINS + EXTENT_BINS


class ClassicalEmbedder:
    """Explicit colour + texture + silhouette descriptor; no weights, no randomness."""

    model_id = "classical:lab-texture-shape-v1"
    dim = DIM
    # Named parts of the vector, so the re-ranker can weigh them itself (see matcher.features).
    parts = {"colour": slice(0, _COLOUR_LEN), "texture": slice(_COLOUR_LEN, _COLOUR_LEN + _TEXTURE_LEN),
             "shape": slice(_COLOUR_LEN + _TEXTURE_LEN, _COLOUR_LEN + _TEXTURE_LEN + _SHAPE_LEN)}

    def __init__(self, background: Sequence[int] = (128, 128, 128)) -> None:
        self.background = tuple(int(c) for c in background)
        if len(self.background) != 3:
            raise ValueError("background must be an RGB triple")

    @classmethod
    def from_settings(cls, settings: Any) -> "ClassicalEmbedder":
        return cls(background=getattr(settings, "composite_background", (128, 128, 128)))

    def embed_one(self, image: np.ndarray) -> np.ndarray:
        img = as_rgb_uint8(image)
        h, w = img.shape[:2]
        scale = WORK_SIDE / max(h, w)
        if scale < 1.0:
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        soft, mask = foreground(img, self.background)
        blocks = [
            np.sqrt(BLOCK_WEIGHTS["colour"]) * colour_block(img, soft),
            np.sqrt(BLOCK_WEIGHTS["texture"]) * texture_block(img, mask),
            np.sqrt(BLOCK_WEIGHTS["shape"]) * shape_block(mask),
        ]
        vec = np.concatenate(blocks)
        out = np.zeros(DIM, dtype=np.float64)
        out[: vec.size] = vec
        return _unit(out).astype(np.float32)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 composited cutouts -> float32 ``(N, 512)``, rows L2-normalised."""
        images = list(images)
        if not images:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.stack([self.embed_one(im) for im in images])


@register("embedder", "classical")
def create_classical_embedder(settings: Any) -> ClassicalEmbedder:
    return ClassicalEmbedder.from_settings(settings)
