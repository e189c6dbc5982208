"""``matcher layers``: a photo taken apart into matted object layers over a filled background.

The objects come from boxes the user drew, from a text prompt (the learned segmenter's instances of
that label) or from the detectors. Each one goes through the query path's own stages (segment, then
trimap matting on the crop) so a layer is exactly the cutout the search would see; when a catalog is
indexed each layer is also matched and named by its best product.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import registry
from .imageio import load_image
from .cutout import mask_bbox
from .layers import LayerObject, LayerSet, build_layer_set, composite_error, psd_problems, write_all
from .query import NotIndexedError, QueryEngine, crop_box, cut_out, find_objects, user_detections
from .settings import Settings
from .types import Box, Cutout, Detection, LoadedImage, Mask

log = logging.getLogger(__name__)

MIN_INSTANCE_SHARE = 0.001  # prompt regions under 0.1 % of the photo are specks, not objects


@dataclass(frozen=True)
class LayersRequest:
    boxes: tuple[Box, ...] = ()
    prompt: str | None = None
    detectors: tuple[str, ...] = ()
    threshold: float | None = None  # the prompt's mask threshold (default: the model's calibrated one)
    inpaint: str = "telea"
    match: bool = True  # name layers by their best catalog product when a catalog is indexed


@dataclass
class LayersResult:
    out_dir: Path
    layer_set: LayerSet
    manifest: dict
    composite_error: float  # mean absolute error (0..255) where objects were
    psd_problems: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "manifest": self.manifest,
                "composite_error": round(self.composite_error, 3), "psd_problems": self.psd_problems,
                "warnings": self.layer_set.warnings(), "notes": self.notes,
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()}}


def take_apart(photo: str | Path, out_dir: str | Path, settings: Settings, request: LayersRequest) -> LayersResult:
    """Write ``png/``, ``background.png``, ``layers.psd`` and ``manifest.json`` for ``photo`` into ``out_dir``."""
    if not (request.boxes or request.prompt or request.detectors):
        raise ValueError("nothing to take apart: pass --box x,y,w,h, --prompt TEXT or --detector NAME")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    image = load_image(Path(photo).expanduser().resolve(), max_pixels=settings.max_image_pixels,
                       max_bytes=settings.max_image_bytes)
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    engine, notes = _engine(settings, request)
    timings["open_catalog"] = time.perf_counter() - start
    start = time.perf_counter()
    detections, masks = _objects(image, settings, request, engine)
    timings["segment"] = time.perf_counter() - start
    start = time.perf_counter()
    # full catalog resolution: a layer is seen as it is, not only by the embedder
    cutouts = [cut_out(image, d, m.binary, m.source, settings, settings.matting_max_side)
               for d, m in zip(detections, masks)]
    timings["matte"] = time.perf_counter() - start
    start = time.perf_counter()
    best = _best_products(engine, cutouts, detections)
    timings["match"] = time.perf_counter() - start
    start = time.perf_counter()
    objects = [layer_object(image, d, m, c, product)
               for d, m, c, product in zip(detections, masks, cutouts, best)]
    layer_set = build_layer_set(image.rgb, objects, request.inpaint)
    timings["inpaint"] = time.perf_counter() - start
    start = time.perf_counter()
    out = Path(out_dir)
    manifest = write_all(layer_set, image.source, out)
    timings["write"] = time.perf_counter() - start
    return LayersResult(out_dir=out, layer_set=layer_set, manifest=manifest, composite_error=composite_error(layer_set),
                        psd_problems=psd_problems(out / "layers.psd", manifest, out), timings=timings, notes=notes)


def _engine(settings: Settings, request: LayersRequest) -> tuple[QueryEngine | None, list[str]]:
    """The query engine when a catalog is indexed (layers get skus), else None with a note saying so."""
    if not request.match:
        return None, []
    try:
        return QueryEngine(settings, detectors=request.detectors), []
    except NotIndexedError as exc:
        return None, [f"layers carry no sku: {exc}"]


def _objects(image: LoadedImage, settings: Settings, request: LayersRequest,
             engine: QueryEngine | None) -> tuple[list[Detection], list[Mask]]:
    if request.prompt:
        return prompted_objects(image, request.prompt, settings, request.threshold)
    if request.boxes:
        detections = user_detections(image, request.boxes)
    elif engine is not None:
        detections = engine.find(image)
    else:
        detections = find_objects([registry.create("detector", n, settings) for n in request.detectors], image)
    segmenter = engine.segmenter if engine is not None else registry.create_query_segmenter(settings)
    masks = segmenter.segment(image.rgb, [d.box for d in detections]) if detections else []
    return detections, list(masks)


def prompted_objects(image: LoadedImage, prompt: str, settings: Settings,
                     threshold: float | None = None) -> tuple[list[Detection], list[Mask]]:
    """One object per connected region of the learned segmenter's mask for the prompt's label."""
    from .segmentation.labels import resolve_prompt

    model = _seg_model(settings)
    return _label_instances(image, model, [resolve_prompt(prompt, model.config.labels)], settings, threshold)


def all_instances(image: LoadedImage, settings: Settings) -> tuple[list[Detection], list[Mask]]:
    """Every region of every label the learned segmenter knows (objects for a photo sent without boxes)."""
    model = _seg_model(settings)
    detections, masks = _label_instances(image, model, list(model.config.labels), settings, None)
    return _one_label_per_region(detections, masks)


def _one_label_per_region(detections: list[Detection], masks: list[Mask],
                          overlap: float = 0.5) -> tuple[list[Detection], list[Mask]]:
    """Label channels each fire on a look-alike object: where regions overlap, the most confident label wins."""
    from .evaluation.masks import mask_iou

    kept: list[int] = []
    for i in sorted(range(len(masks)), key=lambda k: -masks[k].score):
        if all(mask_iou(masks[i].binary, masks[j].binary) < overlap for j in kept):
            kept.append(i)
    kept.sort()
    return [detections[i] for i in kept], [masks[i] for i in kept]


def _seg_model(settings: Settings):
    from .device import resolve_device
    from .segmentation.model import find_model_dir

    return _loaded_seg_model(str(find_model_dir(settings.seg_model_dir)), resolve_device(settings.device))


@functools.lru_cache(maxsize=2)
def _loaded_seg_model(model_dir: str, device: str):
    """Loaded once per process: the API calls this for every photo sent without boxes."""
    from .segmentation.model import load_model_dir

    return load_model_dir(model_dir, device=device)


def _label_instances(image: LoadedImage, model, labels: list[str], settings: Settings,
                     threshold: float | None) -> tuple[list[Detection], list[Mask]]:
    from .segmentation.predict import text_mask, text_probabilities

    cfg = model.config
    probabilities = text_probabilities(model, image.rgb, labels)  # one forward pass for all the labels
    min_area = max(16, int(MIN_INSTANCE_SHARE * image.width * image.height))
    detections, masks = [], []
    for label, probs in zip(labels, probabilities):
        mask = text_mask(probs, cfg.threshold_text if threshold is None else float(threshold), cfg.postprocess_text)
        for piece in _pieces(model, image.rgb, mask, min_area):
            score = float(probs[piece].mean())
            detections.append(Detection(box=mask_bbox(piece), score=score, label=label, category=None,
                                        source=f"prompt:{label}"))
            masks.append(Mask(binary=piece, score=score, source=model.model_id))
    return detections, masks


def _pieces(model, rgb: np.ndarray, mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """One bool mask per object of a label mask: its connected regions, each re-cut by the box channel when
    the model's config says (``refine_text="boxes"``, the outlines the prompt path draws too)."""
    import cv2

    from .segmentation.predict import recut_pieces

    if model.config.refine_text == "boxes":
        pieces = [piece for _, piece in recut_pieces(model, rgb, mask)]
    else:
        count, components, _, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        pieces = [components == i for i in range(1, count)]
    return [piece for piece in pieces if int(piece.sum()) >= min_area]


def _best_products(engine: QueryEngine | None, cutouts: Sequence[Cutout],
                   detections: Sequence[Detection]) -> list[tuple[str, float, str] | None]:
    if engine is None or not detections:
        return [None] * len(detections)
    ranked = engine.identify(cutouts, detections, 1, False, {})
    return [(c[0].sku, c[0].score, c[0].title) if c else None for c in ranked]


def layer_object(image: LoadedImage, detection: Detection, mask: Mask, cutout: Cutout,
                 product: tuple[str, float, str] | None) -> LayerObject:
    """The cutout as an RGBA layer cropped to its visible pixels, with where that crop sits in the photo."""
    rows, cols = crop_box(image, detection).int_slices()
    rgba = cutout.rgba()
    offset = (cols.start, rows.start)
    visible = mask_bbox(rgba[..., 3] > 0)
    if visible is not None:  # trim the fully transparent margin; an empty matte keeps its crop
        rgba_rows, rgba_cols = visible.int_slices()
        rgba = rgba[rgba_rows, rgba_cols]
        offset = (cols.start + rgba_cols.start, rows.start + rgba_rows.start)
    return LayerObject(label=_label(detection, product), box=detection.box, rgba=np.ascontiguousarray(rgba),
                       offset=offset, mask_score=float(mask.score), segmenter=mask.source, flags=tuple(cutout.flags),
                       sku=product[0] if product else None, match_score=product[1] if product else None)


def _label(detection: Detection, product: tuple[str, float, str] | None) -> str:
    """The detector's or prompt's label; for a drawn box, the object label of the matched product's title."""
    from .segmentation.labels import label_for_product

    if detection.source != "user":
        return detection.label
    return detection.category or (label_for_product(product[2]) if product else None) or "object"
