"""The three kinds of model the pipeline needs, as structural protocols.

A backend is any object with these attributes; it does not inherit from them.
Every backend has a stable id string that is stored with what it produced, so
results from different models or versions are never mixed.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..types import Box, Detection, Mask


@runtime_checkable
class Embedder(Protocol):
    """May also have ``parts: dict[str, slice]``, named parts of the vector ("colour", "texture",
    "shape") whose separate cosines become re-ranker features; embedders without it have none."""

    model_id: str  # e.g. "open_clip:ViT-B-32:laion2b_s34b_b79k" or "classical:lab-shape-v1"
    dim: int

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (composited cutouts) -> float32 (N, dim), rows L2-normalised."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    segmenter_id: str  # e.g. "classical:border-lab-v2" or "sam:vit_b"

    def segment(self, image: np.ndarray, boxes: Sequence[Box] | None = None) -> list[Mask]:
        """One full-image mask per box; ``boxes=None`` means "the one product in a catalog shot".

        Implementations never substitute the whole image for a failed mask: an
        empty or implausible mask is returned as it is and judged downstream.
        Box-prompted models compute the image embedding once per call.
        """
        ...


@runtime_checkable
class Detector(Protocol):
    detector_id: str

    def detect(self, image: np.ndarray) -> list[Detection]:
        ...
