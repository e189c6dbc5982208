"""Typed values passed between the pipeline stages.

Images are numpy arrays in RGB order, ``uint8``, shape ``(H, W, 3)``; masks are
``bool`` ``(H, W)``; alpha mattes are ``float32`` ``(H, W)`` in ``[0, 1]``.
Boxes are pixel coordinates ``x0, y0, x1, y1`` (exclusive right/bottom).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> "Box":
        return cls(float(x), float(y), float(x + w), float(y + h))

    @property
    def width(self) -> float:
        return max(0.0, self.x1 - self.x0)

    @property
    def height(self) -> float:
        return max(0.0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return self.width * self.height

    def xywh(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.width, self.height)

    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def clip(self, width: int, height: int) -> "Box":
        return Box(
            min(max(self.x0, 0.0), width), min(max(self.y0, 0.0), height),
            min(max(self.x1, 0.0), width), min(max(self.y1, 0.0), height),
        )

    def expand(self, fraction: float, width: int, height: int) -> "Box":
        """Grow by ``fraction`` of the box size on every side, clipped to the image."""
        dx, dy = self.width * fraction, self.height * fraction
        return Box(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy).clip(width, height)

    def int_slices(self) -> tuple[slice, slice]:
        """Row and column slices covering the box (rounded outwards)."""
        return (slice(int(np.floor(self.y0)), int(np.ceil(self.y1))), slice(int(np.floor(self.x0)), int(np.ceil(self.x1))))

    def intersection(self, other: "Box") -> float:
        """Area of the overlap (0 when the boxes do not meet)."""
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        return ix * iy

    def iou(self, other: "Box") -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class LoadedImage:
    """An image decoded safely into 8-bit RGB, with how it was normalised."""

    rgb: np.ndarray
    source: str
    sha256: str
    original_mode: str
    exif_transposed: bool = False
    had_alpha: bool = False

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass(frozen=True)
class Mask:
    """A binary object mask over the full image, with the segmenter's confidence."""

    binary: np.ndarray
    score: float
    source: str

    @property
    def coverage(self) -> float:
        return float(self.binary.mean()) if self.binary.size else 0.0


@dataclass(frozen=True)
class LabColor:
    lab: tuple[float, float, float]
    weight: float


@dataclass
class Cutout:
    """A matted object: foreground colours, alpha, quality flags and palette.

    ``fail_reason`` is set when the mask could not be trusted (for example it
    covered almost nothing or almost everything); such cutouts are stored with
    their reason but never embedded.
    """

    foreground: np.ndarray  # float32 (H, W, 3) in [0, 1], halo-free colours
    alpha: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # bool (H, W): the hard mask the matte was built from
    bbox: Box | None
    coverage: float
    leakage_score: float
    flags: tuple[str, ...] = ()
    fail_reason: str | None = None
    dominant_colors: list[LabColor] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fail_reason is None

    def rgba(self) -> np.ndarray:
        rgb = np.clip(self.foreground * 255.0 + 0.5, 0, 255).astype(np.uint8)
        a = np.clip(self.alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.dstack([rgb, a])


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # float32 (D,), L2-normalised
    model_id: str

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])


@dataclass(frozen=True)
class CatalogRow:
    """One product as read from a catalog file, before any image is touched."""

    sku: str
    title: str
    category: str | None
    image: str  # resolved local path or URL
    attributes: dict[str, Any]
    line: int  # 1-based line/row number in the catalog file, for error messages


@dataclass(frozen=True)
class CatalogError:
    """A catalog row or item that could not be used, and why."""

    line: int
    sku: str | None
    stage: str
    reason: str


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    label: str
    category: str | None
    source: str


@dataclass
class Candidate:
    sku: str
    product_id: int
    score: float
    features: dict[str, float]
    title: str = ""
    category: str | None = None
    explanation: str = ""
