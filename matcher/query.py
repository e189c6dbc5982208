"""The query path: find -> trace -> polish -> identify -> re-rank, for one room photo.

``QueryEngine`` holds the models and the database handle for many queries
(the CLI makes one per command, the review app one per session, the
evaluation one per run).  Each stage is timed; every candidate carries its
feature breakdown and a one-line explanation.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from sqlalchemy.orm import Session

from . import registry
from .codec import decode_png, encode_png
from .colors import palette_distances
from .cutout import composite_for_embedding, make_cutout
from .db import repository as repo
from .db.engine import get_engine
from .db.migrate import upgrade
from .fusion import FusionConfig, fuse_detections
from .features import ShapeSummary, add_list_features, candidate_features, part_cosines, shape_summary
from .imageio import load_image
from .parallel import numba_threads_safe, thread_map
from .rerank import FORMULA, Reranker, UnsafeModelError, explain
from .settings import Settings
from .types import Box, Candidate, Cutout, Detection, LabColor, LoadedImage

log = logging.getLogger(__name__)

STAGES = ("find", "trace", "polish", "embed", "search", "rerank", "store")
CROP_MARGIN = 0.15  # context kept around a box for matting


class NotIndexedError(RuntimeError):
    pass


@dataclass
class QueryObject:
    """One object found in the photo, its cutout and its ranked candidates."""

    detection: Detection
    cutout: Cutout | None
    candidates: list[Candidate] = field(default_factory=list)
    full_mask: np.ndarray | None = None  # bool, photo-sized
    crop_box: Box | None = None  # where the cutout's arrays sit in the photo
    detection_id: int | None = None
    cutout_path: str | None = None
    mask_path: str | None = None

    def full_alpha(self, height: int, width: int) -> np.ndarray | None:
        """The matte placed back into photo coordinates."""
        if self.cutout is None or not self.cutout.ok or self.crop_box is None:
            return None
        alpha = np.zeros((height, width), np.float32)
        rows, cols = self.crop_box.int_slices()
        alpha[rows, cols] = self.cutout.alpha
        return alpha

    def to_dict(self, top_k: int | None = None) -> dict:
        det = self.detection
        return {
            "detection_id": self.detection_id,
            "box_xywh": [round(v, 1) for v in det.box.xywh()],
            "score": round(det.score, 4), "label": det.label, "category": det.category, "source": det.source,
            "mask_path": self.mask_path, "cutout_path": self.cutout_path,
            "flags": list(self.cutout.flags) if self.cutout else [],
            "fail_reason": self.cutout.fail_reason if self.cutout else "no mask",
            "candidates": [
                {"rank": i + 1, "sku": c.sku, "title": c.title, "category": c.category, "score": round(c.score, 4),
                 "features": {k: round(v, 4) for k, v in c.features.items()}, "explanation": c.explanation}
                for i, c in enumerate(self.candidates[:top_k])
            ],
        }


@dataclass
class MatchResult:
    image: str
    width: int
    height: int
    objects: list[QueryObject]
    timings: dict[str, float]
    space: str
    reranker_version: str
    query_id: int | None = None

    def to_dict(self, top_k: int | None = None) -> dict:
        return {"query_id": self.query_id, "image": self.image, "width": self.width, "height": self.height,
                "space": self.space, "reranker": self.reranker_version,
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "detections": [o.to_dict(top_k) for o in self.objects]}


class QueryEngine:
    def __init__(self, settings: Settings, *, detectors: Sequence[str] = (), segmenter=None, embedder=None,
                 detector_objects: Sequence = (), fusion: FusionConfig | None = None, space_name: str | None = None) -> None:
        """``space_name``: search that space instead of the active one (evaluations comparing models)."""
        self.settings = settings
        self.fusion = fusion or FusionConfig()
        self.engine = get_engine(settings)
        upgrade(self.engine)
        with Session(self.engine) as session:
            # Search always runs in the one active space; a space being built for a new model
            # is invisible here until the reindex has completed it.
            space = repo.space_by_name(session, space_name) if space_name else repo.active_space(session)
            if space is None and space_name:
                raise NotIndexedError(f"no embedding space named {space_name!r}")
            if space is None:
                raise NotIndexedError(f"no indexed catalog yet: run `matcher index CATALOG --backend {settings.backend}` first")
            session.expunge(space)
            self.space = space
            self.reranker = self._load_reranker(session)
        if embedder is None or segmenter is None:
            embedder, catalog_segmenter = registry.backends_for_space(space.embedder_id, space.segmenter_id, settings)
            segmenter = registry.query_segmenter(settings, space.embedder_id, catalog_segmenter)
        else:  # injected backends (tests, evaluations) must be the space's own
            registry.check_backends(embedder, segmenter, space.embedder_id, space.segmenter_id)
        # self.segmenter traces room photos; it may differ from the catalog's (see registry.BACKEND_PRESETS).
        self.embedder, self.segmenter = embedder, segmenter
        self.detectors = list(detector_objects) + [registry.create("detector", name, settings) for name in detectors]
        self._shapes: dict[int, ShapeSummary | None] = {}
        self._catalog_vectors: dict[int, np.ndarray] = {}
        self._parts = getattr(embedder, "parts", None)  # named parts of the vector, if the embedder has them

    def _load_reranker(self, session: Session) -> Reranker:
        """The active re-ranker if it was trained in this space, else plain cosine (features of two models differ)."""
        row = repo.active_reranker(session)
        if row is None:
            return FORMULA
        if (row.metrics or {}).get("space") != self.space.name:
            log.info("re-ranker %s was trained in space %s, not %s: ranking by cosine", row.version,
                     (row.metrics or {}).get("space"), self.space.name)
            return FORMULA
        try:
            return Reranker.from_bytes(row.version, row.kind, row.model, row.feature_names, row.metrics)
        except UnsafeModelError as exc:  # searching still works, by cosine; the operator sees why in the log
            log.error("%s; ranking by cosine", exc)
            return FORMULA

    def reload_reranker(self) -> None:
        with Session(self.engine) as session:
            self.reranker = self._load_reranker(session)

    # --- stages ----------------------------------------------------------------------------

    def find(self, image: LoadedImage) -> list[Detection]:
        return find_objects(self.detectors, image, self.fusion)

    def trace(self, image: LoadedImage, detections: Sequence[Detection]) -> list[np.ndarray]:
        """Full-size boolean masks, one per detection (the image is encoded once)."""
        if not detections:
            return []
        masks = self.segmenter.segment(image.rgb, [d.box for d in detections])
        return [m.binary for m in masks]

    @staticmethod
    def crop_box(image: LoadedImage, detection: Detection) -> Box:
        return crop_box(image, detection)

    def polish(self, image: LoadedImage, detection: Detection, mask: np.ndarray) -> Cutout:
        return cut_out(image, detection, mask, self.segmenter.segmenter_id, self.settings)

    def identify(self, cutouts: Sequence[Cutout], detections: Sequence[Detection], top_n: int,
                 category_filter: bool, timings: dict[str, float]) -> list[list[Candidate]]:
        usable = [i for i, c in enumerate(cutouts) if c.ok]
        results: list[list[Candidate]] = [[] for _ in cutouts]
        if not usable:
            return results
        with _timed(timings, "embed"):
            vectors = self.embedder.embed([composite_for_embedding(cutouts[i], self.settings.composite_background) for i in usable])
        with Session(self.engine) as session, session.begin():  # one connection for all of the photo's objects
            for row, i in enumerate(usable):
                with _timed(timings, "search"):
                    category = detections[i].category if category_filter else None
                    hits = repo.search(session, self.space, vectors[row], top_n, ef_search=self.settings.ef_search, category=category)
                    self._cache_shapes(session, [h.product_id for h in hits])
                    self._cache_parts(session, [h.product_id for h in hits])
                with _timed(timings, "rerank"):
                    results[i] = self._rank(cutouts[i], detections[i], hits, vectors[row])
        return results

    def _cache_shapes(self, session: Session, product_ids: list[int]) -> None:
        missing = [p for p in product_ids if p not in self._shapes]
        for product_id, cutout in repo.catalog_cutouts(session, missing, self.space.segmenter_id).items():
            try:
                alpha = decode_png(cutout.alpha_png) if cutout.alpha_png else None
                palette = [LabColor(tuple(c["lab"]), c["weight"]) for c in cutout.dominant_colors]
                self._shapes[product_id] = shape_summary(alpha, palette) if alpha is not None else None
            except Exception as exc:  # noqa: BLE001 - one damaged stored matte must not fail every query
                log.error("product %s: stored catalog matte unreadable (%s); ranked without its shape", product_id, exc)
                self._shapes[product_id] = None
        for product_id in missing:
            self._shapes.setdefault(product_id, None)

    def _cache_parts(self, session: Session, product_ids: list[int]) -> None:
        """Catalog vectors for the part cosines (only fetched for embedders that declare parts)."""
        missing = [p for p in product_ids if p not in self._catalog_vectors]
        if not self._parts or not missing:
            return
        for product_id, vector in repo.embedding_vectors(session, self.space.id, missing).items():
            self._catalog_vectors[product_id] = vector

    def _part_cosines(self, query_vector: np.ndarray, product_id: int) -> dict[str, float]:
        product_vector = self._catalog_vectors.get(product_id)
        return part_cosines(query_vector, product_vector, self._parts) if self._parts and product_vector is not None else {}

    def _rank(self, cutout: Cutout, detection: Detection, hits, query_vector: np.ndarray) -> list[Candidate]:
        query_shape = shape_summary(cutout.alpha, cutout.dominant_colors)
        if query_shape is None or not hits:
            return []
        best = hits[0].cosine
        shapes = [self._shapes.get(h.product_id) for h in hits]
        distances = palette_distances(query_shape.palette, [s.palette if s else None for s in shapes])
        rows = [candidate_features(query_shape, shape, h.cosine, detection.category, h.category, rank, len(hits), best,
                                   self._part_cosines(query_vector, h.product_id), delta_e=distance)
                for rank, (h, shape, distance) in enumerate(zip(hits, shapes, distances))]
        add_list_features(rows)  # over all hits, before the list is cut to what is stored
        scores = self.reranker.score(rows)
        candidates = [Candidate(sku=h.sku, product_id=h.product_id, score=float(s), features=f, title=h.title,
                                category=h.category, explanation=explain(f)) for h, f, s in zip(hits, rows, scores)]
        return sorted(candidates, key=lambda c: -c.score)

    # --- the whole path ----------------------------------------------------------------------

    def match(self, image: LoadedImage | str | Path, *, boxes: Sequence[Box] | None = None, top_n: int | None = None,
              category_filter: bool = False, store: bool = True, source: str = "cli",
              artifacts_dir: Path | None = None, box_categories: Sequence[str | None] | None = None,
              objects: Sequence[Detection] | None = None) -> MatchResult:
        """``boxes`` a user drew, or ``objects`` found elsewhere (e.g. the learned segmenter's instances), else the
        detectors find them."""
        if not isinstance(image, LoadedImage):
            if not str(image).startswith(("http://", "https://")):
                image = Path(image).expanduser().resolve()  # stored queries name their photo absolutely
            image = load_image(image, max_pixels=self.settings.max_image_pixels, max_bytes=self.settings.max_image_bytes)
        timings = {stage: 0.0 for stage in STAGES}
        if boxes is None and objects is None and not self.detectors:
            raise ValueError("no detector configured: pass boxes (--box x,y,w,h) or --detector NAME")
        with _timed(timings, "find"):
            if objects is not None:
                detections = list(objects)
            else:
                detections = user_detections(image, boxes, box_categories) if boxes is not None else self.find(image)
        with _timed(timings, "trace"):
            masks = self.trace(image, detections)
        with _timed(timings, "polish"):
            workers = self.settings.query_workers if numba_threads_safe() else 1
            cutouts = thread_map(lambda pair: self.polish(image, *pair), zip(detections, masks), workers)
        candidates = self.identify(cutouts, detections, top_n or self.settings.top_n, category_filter, timings)
        objects = [QueryObject(detection=d, cutout=c, candidates=cands, full_mask=m, crop_box=self.crop_box(image, d))
                   for d, c, cands, m in zip(detections, cutouts, candidates, masks)]
        result = MatchResult(image=image.source, width=image.width, height=image.height, objects=objects,
                             timings=timings, space=self.space.name, reranker_version=self.reranker.version)
        if store:
            with _timed(timings, "store"):
                self._store(result, image, source, artifacts_dir or self.settings.artifacts_dir / "queries")
        return result

    def _store(self, result: MatchResult, image: LoadedImage, source: str, artifacts_root: Path) -> None:
        with Session(self.engine) as session, session.begin():
            query_id = repo.save_query(session, image_path=image.source, image_sha256=image.sha256, width=image.width,
                                       height=image.height, source=source, space_id=self.space.id,
                                       reranker_version=self.reranker.version, timings=result.timings)
            folder = artifacts_root / str(query_id)
            folder.mkdir(parents=True, exist_ok=True)
            for index, obj in enumerate(result.objects):
                if obj.cutout is not None and obj.cutout.ok:
                    obj.cutout_path = str(folder / f"det{index}_cutout.png")
                    Path(obj.cutout_path).write_bytes(encode_png(obj.cutout.rgba()))
                if obj.full_mask is not None:
                    obj.mask_path = str(folder / f"det{index}_mask.png")
                    Path(obj.mask_path).write_bytes(encode_png(obj.full_mask))
                det = obj.detection
                obj.detection_id = repo.save_detection(
                    session, query_id, box=list(det.box.xyxy()), score=det.score, label=det.label, category=det.category,
                    source=det.source, cutout_path=obj.cutout_path, mask_path=obj.mask_path,
                    flags=list(obj.cutout.flags) if obj.cutout else [],
                    fail_reason=obj.cutout.fail_reason if obj.cutout else "no mask")
                repo.save_candidates(session, obj.detection_id, [
                    {"product_id": c.product_id, "rank": rank + 1, "score": c.score, "features": c.features,
                     "explanation": c.explanation}
                    for rank, c in enumerate(obj.candidates[: self.settings.stored_candidates])])
            result.query_id = query_id


def find_objects(detectors: Sequence, image: LoadedImage, fusion: FusionConfig | None = None) -> list[Detection]:
    """Every detector's boxes, fused into one list."""
    per_source = {d.detector_id: d.detect(image.rgb) for d in detectors}
    return fuse_detections(per_source, image.width, image.height, fusion or FusionConfig())


def user_detections(image: LoadedImage, boxes: Sequence[Box], categories: Sequence[str | None] | None = None) -> list[Detection]:
    """Boxes a user drew, clipped to the photo; a box outside it or under 4 px is a ValueError."""
    detections = []
    for i, box in enumerate(boxes):
        clipped = box.clip(image.width, image.height)
        if clipped.width < 4 or clipped.height < 4:
            raise ValueError(f"box {box.xywh()} lies outside the {image.width}x{image.height} image or is too small")
        category = categories[i] if categories else None
        detections.append(Detection(box=clipped, score=1.0, label=category or "user box", category=category, source="user"))
    return detections


def crop_box(image: LoadedImage, detection: Detection) -> Box:
    """The region matted for a detection: its box with a margin for the matte's soft edge."""
    return detection.box.expand(CROP_MARGIN, image.width, image.height)


def cut_out(image: LoadedImage, detection: Detection, mask: np.ndarray, segmenter_id: str, settings: Settings,
            max_side: int | None = None) -> Cutout:
    """Trimap matting on the crop around the box, so cost scales with the object, not the photo.

    Matting runs at ``settings.query_matting_max_side`` unless ``max_side`` says otherwise: a query
    cutout only feeds the embedder (224-320 px) and the review app's thumbnails."""
    from .types import Mask

    rows, cols = crop_box(image, detection).int_slices()
    crop_mask = Mask(binary=mask[rows, cols], score=detection.score, source=segmenter_id)
    return make_cutout(np.ascontiguousarray(image.rgb[rows, cols]), crop_mask, settings,
                       max_side=max_side or settings.query_matting_max_side)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def parse_box(text: str) -> Box:
    """``x,y,w,h`` in pixels -> Box (the one parser of --box, the review app's box lines and the API's box fields)."""
    try:
        x, y, w, h = (float(v) for v in str(text).split(","))
    except ValueError as exc:
        raise ValueError(f"box must be x,y,w,h in pixels, got {text!r}") from exc
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box must be finite with a positive width and height, got {text!r}")
    return Box.from_xywh(x, y, w, h)
