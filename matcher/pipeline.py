"""Catalog-side stages wired together: image -> mask -> matte -> composite.

Kept free of database and process-pool concerns so the query path, the
indexer and the evaluation all run exactly the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def prepare_image(image: LoadedImage, segmenter: Segmenter, settings: Settings, box: Box | None = None) -> PreparedImage:
    mask = segmenter.segment(image.rgb, None if box is None else [box])[0]
    cutout = make_cutout(image.rgb, mask, settings)
    composite = composite_for_embedding(cutout, settings.composite_background) if cutout.ok else None
    return PreparedImage(image=image, cutout=cutout, composite=composite)
