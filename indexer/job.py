"""``matcher index``: bring a catalog into the database, idempotently.

Flow per run:
1. read the catalog (bad rows become failures with their line number);
2. hash each image file and compare with what the active embedding space holds:
   unchanged items are skipped without decoding;
3. decode, segment, matte and composite in a process pool (CPU-bound, per item);
4. embed the composites in batches in this process (one model load, batched);
5. write product + cutout + embedding of each item in ONE transaction, so a
   crash or a bad item never leaves half an item behind.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from sqlalchemy.orm import Session
from tqdm import tqdm

from matcher import registry
from matcher.codec import alpha_to_uint8, encode_png
from matcher.db import repository as repo
from matcher.db.engine import get_engine
from matcher.db.migrate import upgrade
from matcher.imageio import ImageLoadError, decode_image, read_bytes
from matcher.pipeline import PreparedImage, prepare_image
from matcher.settings import Settings
from matcher.types import CatalogError, CatalogRow

from .catalog import read_catalog

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    run_id: int
    catalog: str
    backend: str
    space: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[CatalogError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.counts.get("indexed", 0) + self.counts.get("mask_fail", 0)


@dataclass
class _Outcome:
    """What a worker sends back for one catalog row."""

    row: CatalogRow
    sha256: str | None = None
    prepared: PreparedImage | None = None
    error: CatalogError | None = None


# --- worker side --------------------------------------------------------------------------------

_worker_segmenter = None
_worker_settings: Settings | None = None


def _init_worker(settings: Settings, segmenter_name: str) -> None:
    global _worker_segmenter, _worker_settings
    _worker_settings = settings
    _worker_segmenter = registry.create("segmenter", segmenter_name, settings)


def _prepare_row(row: CatalogRow) -> _Outcome:
    assert _worker_settings is not None and _worker_segmenter is not None
    settings = _worker_settings
    try:
        data = read_bytes(row.image, max_bytes=settings.max_image_bytes)
        image = decode_image(data, source=row.image, max_pixels=settings.max_image_pixels)
    except ImageLoadError as exc:
        return _Outcome(row, error=CatalogError(row.line, row.sku, "load", str(exc)))
    try:
        prepared = prepare_image(image, _worker_segmenter, settings)
    except Exception as exc:  # noqa: BLE001 - one item's failure must not stop the batch
        log.exception("segmenting %s failed", row.sku)
        return _Outcome(row, sha256=image.sha256, error=CatalogError(row.line, row.sku, "segment", f"{type(exc).__name__}: {exc}"))
    return _Outcome(row, sha256=image.sha256, prepared=prepared)


class _InlineExecutor(Executor):
    """Runs work in this process: no pool start-up for one worker or tiny jobs."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:  # type: ignore[override]
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _executor(workers: int, settings: Settings, segmenter_name: str, segmenter) -> Executor:
    if workers <= 1:
        global _worker_segmenter, _worker_settings
        _worker_segmenter, _worker_settings = segmenter, settings
        return _InlineExecutor()
    context = multiprocessing.get_context("spawn")  # torch and numba are not fork-safe
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(settings, segmenter_name))


def _ordered_results(executor: Executor, rows: list[CatalogRow], window: int) -> Iterator[_Outcome]:
    """Submit at most ``window`` rows ahead so memory stays bounded on big catalogs."""
    pending: list[Future] = []
    iterator = iter(rows)
    for row in iterator:
        pending.append(executor.submit(_prepare_row, row))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


# --- main side ----------------------------------------------------------------------------------

def file_sha256(path: str, max_bytes: int) -> str:
    return hashlib.sha256(read_bytes(path, max_bytes=max_bytes)).hexdigest()


def run_index(catalog: str | Path, settings: Settings, *, limit: int | None = None, workers: int = 1,
              progress: bool = True) -> IndexReport:
    started = time.perf_counter()
    engine = get_engine(settings)
    upgrade(engine)
    segmenter_name = registry.BACKEND_PRESETS[settings.backend]["segmenter"]
    embedder = registry.create_embedder(settings)
    segmenter = registry.create("segmenter", segmenter_name, settings)
    segmenter_id = segmenter.segmenter_id
    rows, catalog_errors = read_catalog(catalog)
    if limit is not None:
        rows = rows[:limit]

    with Session(engine) as session, session.begin():
        space = repo.get_or_create_space(session, embedder.model_id, segmenter_id, embedder.dim,
                                         settings.hnsw_m, settings.hnsw_ef_construction)
        run_id = repo.start_run(session, catalog=str(catalog), backend=settings.backend, space_id=space.id)
        state = repo.indexed_state(session, space)
        session.expunge(space)
    report = IndexReport(run_id=run_id, catalog=str(catalog), backend=settings.backend, space=space.name)
    counts = {"catalog_rows": len(rows) + len(catalog_errors), "indexed": 0, "mask_fail": 0,
              "unchanged": 0, "metadata_updated": 0, "failed": 0}
    failures: list[CatalogError] = list(catalog_errors)

    todo, unchanged_rows, hash_failures = _split_unchanged(rows, state, settings)
    failures += hash_failures
    counts["unchanged"] = len(unchanged_rows)
    counts["metadata_updated"] = _refresh_metadata(engine, unchanged_rows)

    status = "failed"
    try:
        bar = tqdm(total=len(todo), desc="indexing", unit="item", disable=not progress)
        with _executor(workers, settings, segmenter_name, segmenter) as executor:
            batch: list[_Outcome] = []
            for outcome in _ordered_results(executor, todo, window=max(4 * workers, settings.batch_size)):
                if outcome.error is not None:
                    failures.append(outcome.error)
                    bar.update(1)
                    continue
                batch.append(outcome)
                if len(batch) >= settings.batch_size:
                    _store_batch(engine, batch, space, embedder, counts, failures)
                    bar.update(len(batch))
                    batch = []
            if batch:
                _store_batch(engine, batch, space, embedder, counts, failures)
                bar.update(len(batch))
        bar.close()
        status = "done"
    finally:
        counts["failed"] = len(failures)
        report.seconds = time.perf_counter() - started
        with Session(engine) as session, session.begin():
            for failure in failures:
                repo.record_failure(session, run_id, failure.line, failure.sku, failure.stage, failure.reason)
            repo.finish_run(session, run_id, counts, status, report.seconds)
            if status == "done":
                live_space = session.merge(space)
                repo.activate_space(session, live_space)
        if status == "done" and report_processed(counts):
            with Session(engine) as session, session.begin():
                repo.analyze_index_tables(session)
    report.counts = counts
    report.failures = failures
    return report


def _split_unchanged(rows: list[CatalogRow], state: dict[str, repo.IndexedState], settings: Settings
                     ) -> tuple[list[CatalogRow], list[CatalogRow], list[CatalogError]]:
    todo, unchanged, failures = [], [], []
    for row in rows:
        known = state.get(row.sku)
        if known is None:
            todo.append(row)
            continue
        try:
            sha = file_sha256(row.image, settings.max_image_bytes)
        except ImageLoadError as exc:
            failures.append(CatalogError(row.line, row.sku, "load", str(exc)))
            continue
        done_in_space = known.embedding_sha256 == sha or (known.cutout_failed and known.cutout_sha256 == sha)
        if known.product_sha256 == sha and done_in_space and not known.deleted:
            unchanged.append(row)
        else:
            todo.append(row)
    return todo, unchanged, failures


def _refresh_metadata(engine, rows: list[CatalogRow]) -> int:
    """Title/category/attribute edits need no image work: update them in place."""
    if not rows:
        return 0
    changed = 0
    with Session(engine) as session, session.begin():
        stored = repo.products_by_sku(session, (r.sku for r in rows))
        for row in rows:
            product = stored[row.sku]
            if (product.title, product.category, product.attributes) != (row.title, row.category, row.attributes):
                product.title, product.category, product.attributes = row.title, row.category, row.attributes
                changed += 1
    return changed


def _store_batch(engine, batch: list[_Outcome], space, embedder, counts: dict[str, int],
                 failures: list[CatalogError]) -> None:
    embeddable = [o for o in batch if o.prepared is not None and o.prepared.composite is not None]
    vectors: dict[str, np.ndarray] = {}
    if embeddable:
        try:
            matrix = embedder.embed([o.prepared.composite for o in embeddable])
            vectors = {o.row.sku: matrix[i] for i, o in enumerate(embeddable)}
        except Exception as exc:  # noqa: BLE001 - record per item, keep going
            log.exception("embedding a batch failed")
            for o in embeddable:
                failures.append(CatalogError(o.row.line, o.row.sku, "embed", f"{type(exc).__name__}: {exc}"))
            embeddable_skus = {o.row.sku for o in embeddable}
            batch = [o for o in batch if o.row.sku not in embeddable_skus]
    for outcome in batch:
        try:
            with Session(engine) as session, session.begin():
                _store_item(session, outcome, space, embedder.model_id, vectors.get(outcome.row.sku))
        except Exception as exc:  # noqa: BLE001 - the item's transaction rolled back as a whole
            log.exception("storing %s failed", outcome.row.sku)
            failures.append(CatalogError(outcome.row.line, outcome.row.sku, "store", f"{type(exc).__name__}: {exc}"))
            continue
        counts["indexed" if outcome.row.sku in vectors else "mask_fail"] += 1


def _store_item(session: Session, outcome: _Outcome, space, model_id: str, vector: np.ndarray | None) -> None:
    row, prepared = outcome.row, outcome.prepared
    assert prepared is not None and outcome.sha256 is not None
    cutout = prepared.cutout
    product_id = repo.upsert_product(session, sku=row.sku, title=row.title, category=row.category,
                                     attributes=row.attributes, image_uri=row.image, image_sha256=outcome.sha256)
    repo.upsert_cutout(
        session, product_id, space.segmenter_id,
        image_sha256=outcome.sha256,
        width=prepared.image.width, height=prepared.image.height,
        bbox=list(cutout.bbox.xyxy()) if cutout.bbox else None,
        mask_png=encode_png(cutout.mask),
        alpha_png=encode_png(alpha_to_uint8(cutout.alpha)) if cutout.ok else None,
        rgba_png=encode_png(_crop_rgba(cutout)) if cutout.ok else None,
        coverage=float(cutout.coverage), leakage_score=float(cutout.leakage_score),
        flags=list(cutout.flags), fail_reason=cutout.fail_reason,
        dominant_colors=[{"lab": list(map(float, c.lab)), "weight": float(c.weight)} for c in cutout.dominant_colors],
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


def report_processed(counts: dict[str, int]) -> int:
    return counts.get("indexed", 0) + counts.get("mask_fail", 0)


def iter_failures(report: IndexReport) -> Iterable[str]:
    for f in report.failures:
        yield f"line {f.line} {f.sku or '?'} [{f.stage}] {f.reason}"
