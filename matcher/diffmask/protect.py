"""Protection masks: areas that must come from the original, whatever changed there.

Two sources: user-given keep-out boxes (always available) and frontal faces from
OpenCV's bundled Haar cascade.  Some OpenCV wheels ship ``cv2.data`` without the
cascade XML files (the build in this project's virtualenv is one of them); then
``face_detector_available()`` is ``False`` and ``detect_faces`` raises
``FaceDetectorUnavailable`` rather than silently protecting nothing.  A cascade
file can be passed explicitly, or found through ``$MATCHER_FACE_CASCADE``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import cv2

from ..types import Box

__all__ = [
    "FaceDetectorUnavailable",
    "find_face_cascade",
    "face_detector_available",
    "detect_faces",
    "parse_box",
    "protection_mask",
]

_CASCADE_NAME = "haarcascade_frontalface_default.xml"


class FaceDetectorUnavailable(RuntimeError):
    """No Haar cascade file could be found for face protection."""


def find_face_cascade(explicit: str | Path | None = None) -> Path | None:
    """The frontal-face cascade: the explicit path, ``$MATCHER_FACE_CASCADE``, ``cv2.data``, system dirs."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    env = os.environ.get("MATCHER_FACE_CASCADE")
    if env:
        candidates.append(Path(env))
    data = getattr(cv2, "data", None)
    base = getattr(data, "haarcascades", None) if data is not None else None
    if base:
        candidates.append(Path(base) / _CASCADE_NAME)
    for root in ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades", "/usr/local/share/opencv4/haarcascades"):
        candidates.append(Path(root) / _CASCADE_NAME)
    for path in candidates:
        if path.is_file():
            return path
    return None


def face_detector_available(explicit: str | Path | None = None) -> bool:
    return find_face_cascade(explicit) is not None


def detect_faces(rgb: np.ndarray, cascade: str | Path | None = None, *, max_side: int = 1024,
                 grow: float = 0.25) -> list[Box]:
    """Frontal faces as boxes in ``rgb`` pixel coordinates, each grown by ``grow`` on every side.

    The detector runs on a copy scaled to ``max_side`` so the cost does not grow
    with the photo; boxes are mapped back to full resolution.
    """
    path = find_face_cascade(cascade)
    if path is None:
        raise FaceDetectorUnavailable(
            "face protection is unavailable: this OpenCV build ships no Haar cascade "
            f"({_CASCADE_NAME}); pass keep-out boxes instead or set MATCHER_FACE_CASCADE")
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise FaceDetectorUnavailable(f"face protection is unavailable: cannot load the cascade {path}")
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    min_side = max(16, round(0.03 * max(grey.shape)))
    found = classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    boxes = []
    for x, y, bw, bh in np.asarray(found).reshape(-1, 4):
        box = Box.from_xywh(x / scale, y / scale, bw / scale, bh / scale)
        boxes.append(box.expand(grow, w, h))
    return boxes


def parse_box(text: str) -> Box:
    """``"x,y,w,h"`` (pixels of the BEFORE image) into a ``Box``; raises ``ValueError`` with the reason."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise ValueError(f"keep-out box {text!r} must be x,y,w,h")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError as exc:
        raise ValueError(f"keep-out box {text!r} must be four numbers x,y,w,h") from exc
    if w <= 0 or h <= 0 or not all(np.isfinite([x, y, w, h])):
        raise ValueError(f"keep-out box {text!r} must have a positive width and height")
    return Box.from_xywh(x, y, w, h)


def protection_mask(shape: tuple[int, int], boxes: list[Box] | tuple[Box, ...] = (), faces: list[Box] | tuple[Box, ...] = (),
                    scale: float = 1.0) -> np.ndarray:
    """Boolean ``(H, W)`` mask of protected pixels at ``scale`` times the box coordinates.

    Keep-out boxes are protected as rectangles (the pixels they cover, rounded
    outwards); faces as the ellipse inscribed in their (grown) box, which follows
    the head instead of cutting a square notch into the shoulders.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=np.uint8)
    for box in boxes:
        b = Box(box.x0 * scale, box.y0 * scale, box.x1 * scale, box.y1 * scale).clip(w, h)
        if b.area <= 0:
            continue
        ys, xs = b.int_slices()
        out[ys, xs] = 1
    for box in faces:
        b = Box(box.x0 * scale, box.y0 * scale, box.x1 * scale, box.y1 * scale)
        centre = (int(round((b.x0 + b.x1) / 2)), int(round((b.y0 + b.y1) / 2)))
        axes = (max(1, int(np.ceil(b.width / 2))), max(1, int(np.ceil(b.height / 2))))
        cv2.ellipse(out, centre, axes, 0, 0, 360, 1, thickness=-1)
    return out.astype(bool)
