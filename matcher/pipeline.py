"""Catalog-side stages wired together: image -> mask -> matte -> composite.

Kept free of database and process-pool concerns so the query path, the
indexing (``matcher.indexing.item``) and the evaluation all run exactly the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .backends.protocols import Segmenter
from .cutout import composite_for_embedding, make_cutout
from .settings import Settings
from .types import Box, Cutout, LoadedImage


@dataclass
class PreparedImage:
    """A catalog image ready to embed: its cutout and the composite the embedder sees."""

    image: LoadedImage
    cutout: Cutout
    composite: np.ndarray | None  # None when the cutout failed its quality gate


REFERENCE_LONG_SIDE = 256


def reference_thumbnail(rgb: np.ndarray, long_side: int = REFERENCE_LONG_SIDE) -> np.ndarray:
    """The small lossless copy a later image is compared with (area-averaged, so JPEG noise mostly cancels)."""
    height, width = rgb.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def prepare_image(image: LoadedImage, segmenter: Segmenter, settings: Settings, box: Box | None = None) -> PreparedImage:
    mask = segmenter.segment(image.rgb, None if box is None else [box])[0]
    cutout = make_cutout(image.rgb, mask, settings)
    composite = composite_for_embedding(cutout, settings.composite_background) if cutout.ok else None
    return PreparedImage(image=image, cutout=cutout, composite=composite)
