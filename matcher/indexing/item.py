"""Indexing ONE catalog item: load → segment → matte → composite, then embed → store.

The unit of work both executors of the index job share (the process pool in ``job``, the Ray Data
actors in ``ray_runner``); what runs a whole catalog (lock, plan, run records, activation) is
``job``'s.  Per item:

- ``prepare_item`` (in a worker: a pool process, a Ray actor, or this process) decodes the image,
  checks a changed image perceptually against the stored reference thumbnail (a re-encoded or
  resized copy is not re-segmented), then segments, mattes and composites it and encodes what will
  be stored (PNGs, figures: a ``StoredCutout``, a tenth of the arrays' bytes) → an ``Outcome``;
- ``store_outcomes`` embeds a batch of outcomes (one model call) and writes product + cutout +
  embedding (+ event) of each item in ONE transaction → one ``ItemResult`` per item;
- ``tally`` sums item results into the run's counts and failures.

A worker process calls ``init_worker`` (or ``set_worker``) once, before its first ``prepare_item``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from matcher import registry
from matcher.codec import alpha_to_uint8, decode_png, encode_png
from matcher.db import repository as repo
from matcher.db.engine import DatabaseUnavailableError, connection_lost
from matcher.imageio import ImageLoadError, decode_image, read_bytes
from matcher.pipeline import PreparedImage, prepare_image, reference_thumbnail
from matcher.settings import Settings
from matcher.types import CatalogError, CatalogRow

__all__ = ["COUNT_KEYS", "ItemResult", "Outcome", "StoredCutout", "WorkItem", "init_worker", "prepare_item",
           "set_worker", "store_outcomes", "tally"]

log = logging.getLogger(__name__)

COUNT_KEYS = ("catalog_rows", "new", "changed", "reembedded", "indexed", "mask_fail", "unchanged",
              "perceptually_equal", "metadata_updated", "removed", "failed", "interrupted_runs")


@dataclass
class WorkItem:
    row: CatalogRow
    reason: str  # new | changed | reembedded
    reference_png: bytes | None = None  # set when a perceptual check may spare the work


@dataclass
class StoredCutout:
    """A prepared catalog image as the database stores it: encoded in the worker, so the parent process
    (which embeds and writes) neither receives the float arrays nor spends its time compressing."""

    width: int
    height: int
    bbox: list[float] | None
    mask_png: bytes
    alpha_png: bytes | None  # None when the cutout failed its quality gate
    rgba_png: bytes | None
    coverage: float
    leakage_score: float
    flags: list[str]
    fail_reason: str | None
    dominant_colors: list[dict]
    composite: np.ndarray | None  # what the embedder sees; None when the cutout failed

    @classmethod
    def from_prepared(cls, prepared: PreparedImage) -> "StoredCutout":
        cutout = prepared.cutout
        return cls(
            width=prepared.image.width, height=prepared.image.height,
            bbox=list(cutout.bbox.xyxy()) if cutout.bbox else None,
            mask_png=encode_png(cutout.mask),
            alpha_png=encode_png(alpha_to_uint8(cutout.alpha)) if cutout.ok else None,
            rgba_png=encode_png(_crop_rgba(cutout)) if cutout.ok else None,
            coverage=float(cutout.coverage), leakage_score=float(cutout.leakage_score),
            flags=list(cutout.flags), fail_reason=cutout.fail_reason,
            dominant_colors=[{"lab": list(map(float, c.lab)), "weight": float(c.weight)} for c in cutout.dominant_colors],
            composite=prepared.composite,
        )


@dataclass
class Outcome:
    """What a worker sends back for one catalog row."""

    item: WorkItem
    sha256: str | None = None
    stored: StoredCutout | None = None
    reference_png: bytes | None = None
    same_picture: dict | None = None  # the perceptual verdict when the new bytes show the same picture
    error: CatalogError | None = None

    @property
    def row(self) -> CatalogRow:
        return self.item.row


@dataclass
class ItemResult:
    """What storing one work item came to; the run's counts and failures are summed from these."""

    sku: str
    line: int
    reason: str  # the work item's reason: new | changed | reembedded
    kind: str  # indexed | mask_fail | perceptually_equal | failed
    error: CatalogError | None = None


# --- worker side --------------------------------------------------------------------------------

_worker_segmenter = None
_worker_settings: Settings | None = None


def init_worker(settings: Settings, segmenter_name: str):
    """Build this process's segmenter for ``prepare_item`` (a pool initializer, a Ray actor); returns it."""
    global _worker_segmenter, _worker_settings
    _worker_settings = settings
    _worker_segmenter = registry.create("segmenter", segmenter_name, settings)
    return _worker_segmenter


def set_worker(settings: Settings, segmenter) -> None:
    """Let ``prepare_item`` use an already built segmenter in this process (no second model load)."""
    global _worker_segmenter, _worker_settings
    _worker_segmenter, _worker_settings = segmenter, settings


def prepare_item(item: WorkItem) -> Outcome:
    assert _worker_settings is not None and _worker_segmenter is not None
    settings, row = _worker_settings, item.row
    try:
        data = read_bytes(row.image, max_bytes=settings.max_image_bytes)
        image = decode_image(data, source=row.image, max_pixels=settings.max_image_pixels)
    except ImageLoadError as exc:
        return Outcome(item, error=CatalogError(row.line, row.sku, "load", str(exc)))
    thumbnail = reference_thumbnail(image.rgb)
    if item.reference_png is not None:
        try:
            verdict = _same_picture(item.reference_png, thumbnail)
        except Exception as exc:  # noqa: BLE001 - a damaged stored thumbnail: process the image again, replacing it
            log.warning("%s: stored reference thumbnail unreadable (%s); processing the image again", row.sku, exc)
            verdict = None
        if verdict is not None:
            return Outcome(item, sha256=image.sha256, same_picture=verdict)
    try:
        stored = StoredCutout.from_prepared(prepare_image(image, _worker_segmenter, settings))
    except Exception as exc:  # noqa: BLE001 - one item's failure must not stop the batch
        log.exception("segmenting %s failed", row.sku)
        return Outcome(item, sha256=image.sha256, error=CatalogError(row.line, row.sku, "segment", f"{type(exc).__name__}: {exc}"))
    return Outcome(item, sha256=image.sha256, stored=stored, reference_png=encode_png(thumbnail))


def _same_picture(reference_png: bytes, thumbnail: np.ndarray) -> dict | None:
    """The perceptual verdict if the new image shows the same picture as the stored reference, else None."""
    from matcher.diffmask import perceptually_equal

    verdict = perceptually_equal(decode_png(reference_png), thumbnail)
    if not verdict.equal:
        return None
    return {"changed_fraction": round(float(verdict.changed_fraction), 6), "threshold": round(float(verdict.threshold), 3),
            "reason": getattr(verdict, "reason", "")}


# --- store side ---------------------------------------------------------------------------------

def tally(results: list[ItemResult], counts: dict[str, int], failures: list[CatalogError]) -> None:
    for result in results:
        if result.kind == "failed":
            assert result.error is not None
            failures.append(result.error)
        elif result.kind == "perceptually_equal":
            counts["perceptually_equal"] += 1
        else:
            counts[result.reason] += 1
            counts[result.kind] += 1


def _failed(outcome: Outcome, error: CatalogError) -> ItemResult:
    return ItemResult(outcome.row.sku, outcome.row.line, outcome.item.reason, "failed", error)


def store_outcomes(engine: Engine, outcomes: list[Outcome], space, embedder, run_id: int) -> list[ItemResult]:
    """Store what the workers prepared: worker errors, same-picture verdicts, and one embedding batch.
    Shared by the process pool (in the main process) and the Ray actors (in each actor)."""
    results: list[ItemResult] = []
    batch: list[Outcome] = []
    for outcome in outcomes:
        if outcome.error is not None:
            results.append(_failed(outcome, outcome.error))
        elif outcome.same_picture is not None:
            results.append(_store_same_picture(engine, outcome, run_id))
        else:
            batch.append(outcome)
    if batch:
        results += _store_batch(engine, batch, space, embedder, run_id)
    return results


def _store_same_picture(engine: Engine, outcome: Outcome, run_id: int) -> ItemResult:
    row = outcome.row
    try:
        with Session(engine) as session, session.begin():
            product_id = repo.products_by_sku(session, [row.sku])[row.sku].id
            repo.accept_same_picture(session, product_id, row.image, outcome.sha256)
            repo.record_event(session, run_id, row.sku, "perceptually_equal", outcome.same_picture)
    except Exception as exc:  # noqa: BLE001
        _stop_if_database_lost(engine, exc, row.sku)
        log.exception("recording %s failed", row.sku)
        return _failed(outcome, CatalogError(row.line, row.sku, "store", f"{type(exc).__name__}: {exc}"))
    return ItemResult(row.sku, row.line, outcome.item.reason, "perceptually_equal")


def _store_batch(engine: Engine, batch: list[Outcome], space, embedder, run_id: int) -> list[ItemResult]:
    results: list[ItemResult] = []
    embeddable = [o for o in batch if o.stored is not None and o.stored.composite is not None]
    vectors: dict[str, np.ndarray] = {}
    if embeddable:
        try:
            matrix = embedder.embed([o.stored.composite for o in embeddable])
            vectors = {o.row.sku: matrix[i] for i, o in enumerate(embeddable)}
        except Exception as exc:  # noqa: BLE001 - record per item, keep going
            log.exception("embedding a batch failed")
            for o in embeddable:
                results.append(_failed(o, CatalogError(o.row.line, o.row.sku, "embed", f"{type(exc).__name__}: {exc}")))
            embeddable_skus = {o.row.sku for o in embeddable}
            batch = [o for o in batch if o.row.sku not in embeddable_skus]
    for outcome in batch:
        try:
            with Session(engine) as session, session.begin():
                _store_item(session, outcome, space, embedder.model_id, vectors.get(outcome.row.sku))
                fail_reason = outcome.stored.fail_reason
                repo.record_event(session, run_id, outcome.row.sku, outcome.item.reason,
                                  {"mask_fail": fail_reason} if fail_reason else {})
        except Exception as exc:  # noqa: BLE001 - the item's transaction rolled back as a whole
            _stop_if_database_lost(engine, exc, outcome.row.sku)
            log.exception("storing %s failed", outcome.row.sku)
            results.append(_failed(outcome, CatalogError(outcome.row.line, outcome.row.sku, "store",
                                                         f"{type(exc).__name__}: {exc}")))
            continue
        results.append(ItemResult(outcome.row.sku, outcome.row.line, outcome.item.reason,
                                  "indexed" if outcome.row.sku in vectors else "mask_fail"))
    return results


def _stop_if_database_lost(engine: Engine, exc: Exception, sku: str) -> None:
    """A lost database is not this item's failure: stop the batch instead of failing every item after it."""
    if connection_lost(engine, exc):
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseUnavailableError(f"the database stopped answering while storing {sku} ({reason})") from exc


def _store_item(session: Session, outcome: Outcome, space, model_id: str, vector: np.ndarray | None) -> None:
    row, stored = outcome.row, outcome.stored
    assert stored is not None and outcome.sha256 is not None
    product_id = repo.upsert_product(session, sku=row.sku, title=row.title, category=row.category,
                                     attributes=row.attributes, image_uri=row.image, image_sha256=outcome.sha256,
                                     reference_png=outcome.reference_png)
    repo.upsert_cutout(
        session, product_id, space.segmenter_id,
        image_sha256=outcome.sha256, width=stored.width, height=stored.height, bbox=stored.bbox,
        mask_png=stored.mask_png, alpha_png=stored.alpha_png, rgba_png=stored.rgba_png,
        coverage=stored.coverage, leakage_score=stored.leakage_score, flags=stored.flags,
        fail_reason=stored.fail_reason, dominant_colors=stored.dominant_colors,
    )
    if vector is not None:
        repo.upsert_embedding(session, product_id, space, model_id, vector, outcome.sha256)
    else:
        repo.delete_embedding(session, product_id, space)  # a stale vector of an older image must not stay searchable


def _crop_rgba(cutout) -> np.ndarray:
    rgba = cutout.rgba()
    if cutout.bbox is None:
        return rgba
    rows, cols = cutout.bbox.int_slices()
    return rgba[rows, cols]
