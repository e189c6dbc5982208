"""Pure drawing helpers for the review app: boxes and mask outlines on a photo (OpenCV, RGB in and out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from matcher.types import Box

# RGB colours by review status.
STATUS_COLOURS = {
    "pending": (255, 176, 0),
    "decided": (40, 180, 90),
    "focus": (0, 140, 255),
    "superseded": (150, 150, 150),
}


@dataclass(frozen=True)
class Overlay:
    box: Box
    label: str
    mask: np.ndarray | None = None  # bool, photo-sized
    status: str = "pending"


def _thickness(height: int, width: int) -> int:
    return max(2, round(max(height, width) / 400))


def annotate(photo: np.ndarray, overlays: Sequence[Overlay]) -> np.ndarray:
    """A copy of ``photo`` with each overlay's mask outline, box and label drawn on it."""
    canvas = np.ascontiguousarray(photo[..., :3], dtype=np.uint8).copy()
    height, width = canvas.shape[:2]
    thick = _thickness(height, width)
    for overlay in overlays:
        colour = STATUS_COLOURS.get(overlay.status, STATUS_COLOURS["pending"])
        if overlay.mask is not None and overlay.mask.shape[:2] == (height, width) and overlay.mask.any():
            contours, _ = cv2.findContours(overlay.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, (255, 255, 255), thick + 2)
            cv2.drawContours(canvas, contours, -1, colour, thick)
        box = overlay.box.clip(width, height)
        p0 = (int(round(box.x0)), int(round(box.y0)))
        p1 = (max(p0[0], int(round(box.x1)) - 1), max(p0[1], int(round(box.y1)) - 1))
        cv2.rectangle(canvas, p0, p1, colour, thick)
        if overlay.label:
            _label(canvas, overlay.label, p0, colour, thick)
    return canvas


def _label(canvas: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int], thick: int) -> None:
    scale = max(0.45, thick / 4)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = min(max(origin[0], 0), max(canvas.shape[1] - tw - 4, 0))
    y = origin[1] - th - base - 4
    if y < 0:
        y = origin[1] + thick
    cv2.rectangle(canvas, (x, y), (x + tw + 4, y + th + base + 4), colour, -1)
    cv2.putText(canvas, text, (x + 2, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def crop(photo: np.ndarray, box: Box, margin: float = 0.25) -> np.ndarray:
    """The part of ``photo`` around ``box`` (grown by ``margin`` of its size), for a thumbnail."""
    height, width = photo.shape[:2]
    rows, cols = box.expand(margin, width, height).int_slices()
    out = photo[rows, cols]
    return out if out.size else photo


def checkerboard_composite(rgba: np.ndarray, tile: int = 8) -> np.ndarray:
    """An RGBA cutout over a light checkerboard, so transparent areas read as such."""
    height, width = rgba.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    board = np.where(((yy // tile + xx // tile) % 2)[..., None] == 0, 235, 205).astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * alpha + board * (1.0 - alpha)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
