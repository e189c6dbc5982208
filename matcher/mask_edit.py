"""A reviewer's mask fix: "add here" and "remove here" hints turned into a corrected mask.

Hints are points ``(x, y)`` or rectangles ``(x, y, w, h)`` in photo pixels. Regions snap to image
structure rather than to the hint's exact shape: the photo around the object is cut into SLIC
superpixels, and a hint takes or drops the superpixels it touches (a point, the one under it; a
rectangle, those at least half inside it). "Add" hints also re-run the segmenter on the object's box
grown to take them in, so a missed part that the segmenter can see comes back with its own outline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .types import Box

SUPERPIXEL_AREA = 300  # pixels per superpixel: fine enough for chair legs, coarse enough to be one click
ADD_REACH = 0.25  # an "add" hint grows the segmenter's box this share of the box's size around the hint
HINT_MARGIN = 0.15  # the superpixel window reaches this share of the box beyond the box and the hints


@dataclass(frozen=True)
class Hint:
    """A point (w = h = 0) or a rectangle, in photo pixels."""

    x: float
    y: float
    w: float = 0.0
    h: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Hint":
        parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (2, 4) or not all(np.isfinite(values)) or (len(values) == 4 and min(values[2:]) <= 0):
            raise ValueError(f"hint {text!r}: write a point as x,y or a rectangle as x,y,w,h (pixels)")
        return cls(*values)

    @property
    def is_point(self) -> bool:
        return self.w <= 0 or self.h <= 0

    def box(self) -> Box:
        return Box(self.x, self.y, self.x + max(self.w, 1.0), self.y + max(self.h, 1.0))

    def to_list(self) -> list[float]:
        return [self.x, self.y] if self.is_point else [self.x, self.y, self.w, self.h]


def parse_hints(text: str) -> list[Hint]:
    """One hint per non-empty line."""
    return [Hint.parse(line) for line in text.splitlines() if line.strip()]


def union_box(boxes: Sequence[Box]) -> Box:
    return Box(min(b.x0 for b in boxes), min(b.y0 for b in boxes), max(b.x1 for b in boxes), max(b.y1 for b in boxes))


def superpixels(image: np.ndarray, window: Box) -> tuple[np.ndarray, tuple[slice, slice]]:
    """SLIC labels for the photo inside ``window`` (labels from 1) and the window's slices."""
    from skimage.segmentation import slic

    rows, cols = window.int_slices()
    crop = image[rows, cols]
    segments = max(16, int(crop.shape[0] * crop.shape[1] / SUPERPIXEL_AREA))
    return slic(crop, n_segments=segments, compactness=10.0, start_label=1, channel_axis=-1), (rows, cols)


def hint_region(labels: np.ndarray, origin: tuple[int, int], hint: Hint) -> np.ndarray:
    """The superpixels a hint touches, as a bool array over the window."""
    ox, oy = origin
    if hint.is_point:
        r, c = int(hint.y) - oy, int(hint.x) - ox
        if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]):
            return np.zeros(labels.shape, bool)
        return labels == labels[r, c]
    inside = np.zeros(labels.shape, bool)
    r0, c0 = max(0, int(hint.y) - oy), max(0, int(hint.x) - ox)
    inside[r0:max(r0, int(np.ceil(hint.y + hint.h)) - oy), c0:max(c0, int(np.ceil(hint.x + hint.w)) - ox)] = True
    share = np.bincount(labels.ravel(), weights=inside.ravel(), minlength=labels.max() + 1) / \
        np.maximum(np.bincount(labels.ravel(), minlength=labels.max() + 1), 1)
    return share[labels] >= 0.5


def _component_at(mask: np.ndarray, hint: Hint) -> np.ndarray:
    """The connected pieces of ``mask`` under the hint (a point, or any pixel of a rectangle)."""
    import cv2

    count, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    rows, cols = hint.box().clip(mask.shape[1], mask.shape[0]).int_slices()
    ids = np.unique(comp[rows, cols])
    return np.isin(comp, ids[ids > 0]) if count > 1 else np.zeros(mask.shape, bool)


def refine_mask(image: np.ndarray, mask: np.ndarray, box: Box, add: Sequence[Hint] = (), remove: Sequence[Hint] = (),
                segmenter=None) -> np.ndarray:
    """The corrected full-size bool mask: ``mask`` plus what the add hints point at, minus what the remove hints do."""
    height, width = mask.shape
    out = mask.astype(bool).copy()
    hints = list(add) + list(remove)
    if not hints:
        return out
    if add and segmenter is not None:  # the segmenter sees the grown box; keep the parts the hints point at
        reach = ADD_REACH * max(box.width, box.height)  # the missed part usually extends past the click
        grown = union_box([box] + [Box(h.x - reach, h.y - reach, h.box().x1 + reach, h.box().y1 + reach)
                                   for h in add]).clip(width, height)
        fresh = segmenter.segment(image, [grown])[0].binary.astype(bool)
        for hint in add:
            out |= _component_at(fresh, hint)
    span = union_box([box] + [h.box() for h in hints])
    window = span.expand(HINT_MARGIN, width, height)
    labels, (rows, cols) = superpixels(image, window)
    origin = (cols.start, rows.start)
    view = out[rows, cols]
    for hint in add:
        if not _component_at(out, hint).any() or not hint.is_point:
            view |= hint_region(labels, origin, hint)
    for hint in remove:
        view &= ~hint_region(labels, origin, hint)
        if hint.is_point:  # a click on a stray piece removes the whole piece
            piece = _component_at(mask.astype(bool), hint)
            if piece.any() and piece.sum() < _largest_piece(mask):
                out &= ~piece
    return out


def _largest_piece(mask: np.ndarray) -> int:
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0
