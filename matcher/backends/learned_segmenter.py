"""The learned segmenter (``matcher seg train``) as a box-prompted segmenter backend.

Box prompts use the network's box channel: the box grown by the model's margin is cropped,
resized, segmented and the mask pasted back at full size, clipped to the box (plus a small
tolerance for inexact detector boxes).  ``boxes=None`` (a catalog shot with one product) uses the
same box from a border-background estimate as the SAM backend (:func:`sam_segmenter.catalog_box`).

The model directory comes from ``MATCHER_SEG_MODEL_DIR``; ids are ``learned:<sha256 prefix of the
weights>``, so masks from two different models never share an embedding space.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..registry import register
from ..types import Box, Mask

log = logging.getLogger(__name__)


class LearnedSegmenter:
    def __init__(self, model_dir: Path | str | None, *, device: str = "auto", threads: int | None = None,
                 workers: int = 1) -> None:
        import torch

        from ..device import resolve_device
        from ..segmentation.model import load_model_dir

        if threads is not None:
            torch.set_num_threads(int(threads))  # process-wide: the CPU budget the operator gave matcher
        self.model = load_model_dir(model_dir, device=resolve_device(device))
        self.segmenter_id = self.model.model_id
        self.workers = workers  # threads refining one photo's boxes (GrabCut releases the GIL)
        log.info("learned segmenter %s from %s", self.segmenter_id, self.model.path)

    @classmethod
    def from_settings(cls, settings: Any) -> "LearnedSegmenter":
        return cls(settings.seg_model_dir, device=settings.device, threads=settings.torch_threads,
                   workers=settings.query_workers)

    def segment(self, image: np.ndarray, boxes: Sequence[Box] | None = None) -> list[Mask]:
        from ..imageio import as_rgb8
        from ..segmentation.predict import segment_boxes
        from .sam_segmenter import catalog_box

        image = as_rgb8(image)
        if boxes is None:
            boxes = [catalog_box(image)]
        h, w = image.shape[:2]
        prompts = [b.clip(w, h).xyxy() for b in boxes]
        return [Mask(binary=r.mask > 0, score=r.score, source=self.segmenter_id)
                for r in segment_boxes(image, prompts, self.model, workers=self.workers)]


@register("segmenter", "learned")
def _factory(settings: Any) -> LearnedSegmenter:
    return LearnedSegmenter.from_settings(settings)
