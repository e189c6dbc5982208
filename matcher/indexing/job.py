"""The index job: bring a whole catalog into the database, incrementally (``matcher index`` and
``matcher reindex``, through ``matcher.service``; the scene evaluation indexes its catalog with it).

This module runs the catalog: the lock, the plan, the run records and the process pool.  The work on
one item (steps 4-6) is ``matcher.indexing.item``'s, shared with the Ray executor (``ray_runner``).

Flow per run:
1. take the index advisory lock (a second concurrent run stops with a clear message);
   runs left "running" by a killed process are marked "interrupted";
2. read the catalog (bad rows become failures with their line number);
3. plan: compare every row with what the current embedding space holds —
   unchanged (same image hash, already embedded: no decoding at all), new,
   changed bytes (checked perceptually against the stored reference thumbnail,
   so a re-encoded or resized copy is not re-segmented), or missing from this
   space (a new model: re-embed); products gone from the catalog are
   soft-deleted (reindex only);
4. decode, segment, matte and composite in a process pool (CPU-bound, per item);
5. embed the composites in batches in this process (one model load);
6. write product + cutout + embedding (+ event) of each item in ONE transaction,
   so ``kill -9`` at any point loses at most the items in flight, which the
   next run redoes; nothing is ever half-written or written twice;
   (``executor="ray"`` runs steps 4-6 in Ray Data actors instead: ``matcher.indexing.ray_runner``)
7. the space becomes the searched one only once every live product is in it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Engine
from sqlalchemy.orm import Session
from tqdm import tqdm

from matcher import registry
from matcher.parallel import one_thread_here, one_thread_per_process
from matcher.db import repository as repo
from matcher.db.engine import DatabaseUnavailableError, connection_lost, database_url, get_engine
from matcher.db.migrate import upgrade
from matcher.imageio import ImageLoadError, read_bytes
from matcher.settings import Settings
from matcher.types import CatalogError, CatalogRow

from .catalog import read_catalog
from .item import COUNT_KEYS, Outcome, WorkItem, init_worker, prepare_item, set_worker, store_outcomes, tally

log = logging.getLogger(__name__)

EXECUTORS = ("process", "ray")


class IndexLockedError(RuntimeError):
    """Another index run holds the lock."""


class MassRemovalError(RuntimeError):
    """The catalog would remove more live products than ``max_removal_share`` allows (an empty or cut export?)."""


@dataclass
class IndexReport:
    run_id: int
    catalog: str
    backend: str
    space: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[CatalogError] = field(default_factory=list)
    seconds: float = 0.0
    space_active: bool = False
    reranker: dict | None = None

    @property
    def processed(self) -> int:
        """Items that went through segmentation (and embedding, unless their mask failed)."""
        return self.counts.get("indexed", 0) + self.counts.get("mask_fail", 0)


# --- the process pool ---------------------------------------------------------------------------

class _InlineExecutor(Executor):
    """Runs work in this process: no pool start-up for one worker or tiny jobs."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:  # type: ignore[override]
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _executor(workers: int, settings: Settings, segmenter_name: str, segmenter) -> Executor:
    if workers <= 1:
        set_worker(settings, segmenter)
        return _InlineExecutor()
    context = multiprocessing.get_context("spawn")  # torch and numba are not fork-safe
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_pool_worker,
                               initargs=(os.getpid(), settings, segmenter_name))


def _init_pool_worker(parent_pid: int, settings: Settings, segmenter_name: str) -> None:
    die_with_parent(parent_pid)
    one_thread_per_process()  # the pool's processes are the parallelism; threads inside them only fight
    init_worker(settings, segmenter_name)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies, even by ``kill -9`` (a pool worker holds ~450 MB
    and must not outlive the run). Elsewhere a no-op beyond the check that the parent is still there."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _ordered_results(executor: Executor, items: list[WorkItem], window: int) -> Iterator[Outcome]:
    """Submit at most ``window`` items ahead so memory stays bounded on big catalogs."""
    pending: list[Future] = []
    for item in items:
        pending.append(executor.submit(prepare_item, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


# --- main side ----------------------------------------------------------------------------------

def file_sha256(path: str, max_bytes: int) -> str:
    return hashlib.sha256(read_bytes(path, max_bytes=max_bytes)).hexdigest()


@contextmanager
def exclusive_index_lock(engine: Engine) -> Iterator[None]:
    """Hold the index advisory lock for the duration; refuse to start if another run holds it."""
    connection = engine.connect()
    acquired = False
    try:
        acquired = repo.try_index_lock(connection)
        if not acquired:
            with Session(engine) as session:
                running = repo.running_runs(session)
            who = ", ".join(f"run {r.id} ({r.kind}, started {r.started_at:%Y-%m-%d %H:%M:%S %Z})" for r in running)
            raise IndexLockedError(f"another index run is in progress{': ' + who if who else ''}; "
                                   "try again when it has finished")
        connection.commit()
        yield
    finally:
        if acquired:
            # Unlock explicitly: closing the connection also releases the lock, but only once the
            # server has noticed, so a run started right after this one could be refused.
            with suppress(Exception):  # a broken connection: closing it below releases the lock
                repo.release_index_lock(connection)
        connection.invalidate()
        connection.close()


def run_index(catalog: str | Path, settings: Settings, *, limit: int | None = None, workers: int = 1,
              progress: bool = True, remove_missing: bool = False, since: datetime | None = None,
              kind: str = "index", executor: str = "process", allow_mass_removal: bool = False) -> IndexReport:
    """``executor``: "process" (a local process pool, the default) or "ray" (Ray Data actors; see ``ray_runner``).

    With ``remove_missing``, a catalog that would soft-delete more than ``settings.max_removal_share`` of the
    live products raises :class:`MassRemovalError` before anything is written, unless ``allow_mass_removal``."""
    started = time.perf_counter()
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of: {', '.join(EXECUTORS)}")
    if executor == "ray":
        from .ray_runner import require_ray

        require_ray()  # fail before taking the lock when the extra is not installed
    engine = get_engine(settings)
    upgrade(engine)
    segmenter_name = registry.segmenter_name(settings)
    embedder = registry.create_embedder(settings)
    segmenter = registry.create("segmenter", segmenter_name, settings)
    rows, catalog_errors = read_catalog(catalog)
    if limit is not None:
        rows = rows[:limit]

    with exclusive_index_lock(engine):
        record_deferred_run_ends(engine, settings)
        with Session(engine) as session, session.begin():
            if remove_missing and not allow_mass_removal:
                _refuse_mass_removal(session, catalog, rows, catalog_errors, limit, settings.max_removal_share)
            stale = [r.id for r in repo.running_runs(session)]
            repo.mark_interrupted(session, stale)
            space = repo.get_or_create_space(session, embedder.model_id, segmenter.segmenter_id, embedder.dim,
                                             settings.hnsw_m, settings.hnsw_ef_construction)
            run_id = repo.start_run(session, catalog=str(catalog), backend=settings.backend, space_id=space.id, kind=kind)
            state = repo.indexed_state(session, space)
            session.expunge(space)
        report = IndexReport(run_id=run_id, catalog=str(catalog), backend=settings.backend, space=space.name)
        counts = dict.fromkeys(COUNT_KEYS, 0)
        counts["catalog_rows"] = len(rows) + len(catalog_errors)
        counts["interrupted_runs"] = len(stale)
        failures: list[CatalogError] = list(catalog_errors)

        todo, unchanged_rows, hash_failures = plan(rows, state, settings, since)
        failures += hash_failures
        counts["unchanged"] = len(unchanged_rows)
        _attach_references(engine, todo)
        status = "failed"
        try:
            counts["metadata_updated"] = _refresh_metadata(engine, unchanged_rows)
            if remove_missing:
                counts["removed"] = _remove_missing(engine, run_id, rows, catalog_errors, limit)
            if executor == "ray" and todo:
                from .ray_runner import process_with_ray

                process_with_ray(todo, settings, space, run_id, workers=workers, progress=progress,
                                 counts=counts, failures=failures)
            else:
                _process(engine, todo, space, embedder, segmenter_name, segmenter, settings, workers, progress,
                         run_id, counts, failures)
            status = "done"
        except Exception as exc:
            if isinstance(exc, DatabaseUnavailableError) or connection_lost(engine, exc):
                raise DatabaseUnavailableError(
                    f"run {run_id} stopped: {exc if isinstance(exc, DatabaseUnavailableError) else 'the database stopped answering'}. "
                    f"Products stored before that are kept; the run is recorded as failed once the database is back; "
                    f"run the command again to finish") from exc
            raise
        finally:
            counts["failed"] = len(failures)
            report.seconds = time.perf_counter() - started
            _finish_run(engine, settings, run_id, failures, counts, status, report.seconds)
        try:
            report.space_active = _activate_if_complete(engine, space) if status == "done" else False
            if counts["indexed"] + counts["mask_fail"] + counts["removed"]:
                with Session(engine) as session, session.begin():
                    repo.analyze_index_tables(session)
        except Exception as exc:  # the database went away after the last product was stored
            if connection_lost(engine, exc):
                raise DatabaseUnavailableError(
                    f"run {run_id} stored every product, then the database stopped answering before the search "
                    f"space could be switched over; run the command again to finish") from exc
            raise
    report.counts, report.failures = counts, failures
    return report


def _finish_run(engine: Engine, settings: Settings, run_id: int, failures: list[CatalogError], counts: dict[str, int],
                status: str, seconds: float) -> None:
    """Record the failures and the final state; a run never stays "running" because a failure could not be
    stored.  When the database itself is gone, the end is kept in a file and recorded when it is back."""
    try:
        with Session(engine) as session, session.begin():
            for failure in failures:
                repo.record_failure(session, run_id, failure.line, failure.sku, failure.stage, failure.reason)
            repo.finish_run(session, run_id, counts, status, seconds)
    except Exception as exc:
        if connection_lost(engine, exc):
            _defer_run_end(settings, run_id, failures, counts, status, seconds)
            return
        log.exception("could not record the failures of run %s; recording its end without them", run_id)
        with Session(engine) as session, session.begin():
            repo.finish_run(session, run_id, {**counts, "failures_unrecorded": len(failures)}, "failed", seconds)
        raise


def _deferred_dir(settings: Settings) -> Path:
    # One folder per database: run ids are only unique within one.
    key = hashlib.sha256(database_url(settings).encode()).hexdigest()[:16]
    return settings.data_dir / "deferred-run-ends" / key


def _defer_run_end(settings: Settings, run_id: int, failures: list[CatalogError], counts: dict[str, int],
                   status: str, seconds: float) -> None:
    folder = _deferred_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run_id, "status": status, "seconds": seconds, "counts": counts,
              "failures": [[f.line, f.sku, f.stage, f.reason] for f in failures]}
    temporary = folder / f"run-{run_id}.json.tmp"
    temporary.write_text(json.dumps(record))
    temporary.replace(folder / f"run-{run_id}.json")  # atomic: never a half-written record


def record_deferred_run_ends(engine: Engine, settings: Settings) -> int:
    """Record the ends of runs that lost the database before they could record them; returns how many."""
    folder = _deferred_dir(settings)
    done = 0
    for path in sorted(folder.glob("run-*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        with Session(engine) as session, session.begin():
            for line, sku, stage, reason in record["failures"]:
                repo.record_failure(session, record["run_id"], line, sku, stage, reason)
            repo.finish_run(session, record["run_id"], record["counts"], record["status"], record["seconds"])
        path.unlink()
        done += 1
    return done


def plan(rows: list[CatalogRow], state: dict[str, repo.IndexedState], settings: Settings, since: datetime | None
         ) -> tuple[list[WorkItem], list[CatalogRow], list[CatalogError]]:
    """Split catalog rows into work items and unchanged rows without decoding any image."""
    todo, unchanged, failures = [], [], []
    for row in rows:
        known = state.get(row.sku)
        if known is None:
            todo.append(WorkItem(row, "new"))
            continue
        if since is not None and _done_for(known, known.product_sha256) and _modified_before(row.image, since):
            unchanged.append(row)  # trusted without hashing: not touched since the given time
            continue
        try:
            sha = file_sha256(row.image, settings.max_image_bytes)
        except ImageLoadError as exc:
            failures.append(CatalogError(row.line, row.sku, "load", str(exc)))
            continue
        if sha == known.product_sha256 and _done_for(known, sha):
            unchanged.append(row)
        elif sha == known.product_sha256:
            todo.append(WorkItem(row, "reembedded"))  # same image, but this space (a new model) lacks it
        else:
            todo.append(WorkItem(row, "changed", reference_png=b"" if _done_for(known, known.product_sha256) else None))
    return todo, unchanged, failures


def _done_for(known: repo.IndexedState, sha: str) -> bool:
    """This space already holds the result for the image with hash ``sha``."""
    return known.embedding_sha256 == sha or (known.cutout_failed and known.cutout_sha256 == sha)


def _modified_before(image: str, since: datetime) -> bool:
    if image.startswith(("http://", "https://")):
        return False
    try:
        return datetime.fromtimestamp(os.stat(image).st_mtime, tz=timezone.utc) < since
    except OSError:
        return False


def _attach_references(engine: Engine, todo: list[WorkItem]) -> None:
    """Load stored reference thumbnails for the changed items that may turn out to be the same picture."""
    wanted = [item for item in todo if item.reference_png == b""]
    if not wanted:
        return
    with Session(engine) as session:
        references = repo.reference_images(session, (i.row.sku for i in wanted))
    for item in wanted:
        item.reference_png = references.get(item.row.sku)


def _refresh_metadata(engine: Engine, rows: list[CatalogRow]) -> int:
    """Title/category/attribute edits need no image work: update them in place (and revive removed rows)."""
    if not rows:
        return 0
    changed = 0
    with Session(engine) as session, session.begin():
        stored = repo.products_by_sku(session, (r.sku for r in rows))
        for row in rows:
            product = stored[row.sku]
            if (product.title, product.category, product.attributes) != (row.title, row.category, row.attributes) \
                    or product.deleted_at is not None:
                product.title, product.category, product.attributes = row.title, row.category, row.attributes
                product.deleted_at = None
                changed += 1
    return changed


def _listed_skus(rows: list[CatalogRow], errors: list[CatalogError], limit: int | None) -> set[str] | None:
    """Every sku the catalog lists, or None when the listing is partial (a --limit, or rows that failed
    to parse, whose skus we cannot see): then nothing is removed, so a broken file never deletes products."""
    if limit is not None or any(e.sku is None for e in errors):
        return None
    return {r.sku for r in rows} | {e.sku for e in errors if e.sku}


def _refuse_mass_removal(session, catalog: str | Path, rows: list[CatalogRow], errors: list[CatalogError],
                         limit: int | None, max_share: float) -> None:
    listed = _listed_skus(rows, errors, limit)
    if listed is None:
        return
    live = repo.live_skus(session)
    gone = sorted(live - listed)
    if live and len(gone) > max_share * len(live):
        examples = ", ".join(gone[:5]) + (", ..." if len(gone) > 5 else "")
        raise MassRemovalError(
            f"refusing to remove {len(gone)} of {len(live)} live products ({len(gone) / len(live):.0%}, more than "
            f"MATCHER_MAX_REMOVAL_SHARE={max_share:g}): {catalog} lists {len(rows)} usable rows. An empty or cut-off "
            f"export? Nothing was changed. Would be removed: {examples}. If this is intended, run again with "
            "--allow-mass-removal.")


def _remove_missing(engine: Engine, run_id: int, rows: list[CatalogRow], errors: list[CatalogError],
                    limit: int | None) -> int:
    """Soft-delete products that left the catalog (only when the listing is complete)."""
    live = _listed_skus(rows, errors, limit)
    if live is None:
        log.warning("not removing missing products: the catalog listing is partial")
        return 0
    with Session(engine) as session, session.begin():
        gone = repo.soft_delete_missing(session, live)
        for sku in gone:
            repo.record_event(session, run_id, sku, "removed")
    return len(gone)


def _process(engine: Engine, todo: list[WorkItem], space, embedder, segmenter_name: str, segmenter,
             settings: Settings, workers: int, progress: bool, run_id: int, counts: dict[str, int],
             failures: list[CatalogError]) -> None:
    bar = tqdm(total=len(todo), desc="indexing", unit="item", disable=not progress or not todo)
    workers = workers if len(todo) > 1 else 1
    executor = _executor(workers, settings, segmenter_name, segmenter)
    try:
        # With a pool the workers have the cores; this process only embeds and writes.
        with one_thread_here() if workers > 1 else nullcontext():
            batch: list[Outcome] = []
            # Two batches ahead: the workers go on with the next batch while this process embeds and stores one.
            for outcome in _ordered_results(executor, todo, window=max(4 * workers, 2 * settings.batch_size)):
                batch.append(outcome)
                if len(batch) >= settings.batch_size:
                    tally(store_outcomes(engine, batch, space, embedder, run_id), counts, failures)
                    bar.update(len(batch))
                    batch = []
            if batch:
                tally(store_outcomes(engine, batch, space, embedder, run_id), counts, failures)
                bar.update(len(batch))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)  # a stopped run does not segment the items still queued
        bar.close()


def _activate_if_complete(engine: Engine, space) -> bool:
    """Search switches to a space only when every live product is in it."""
    with Session(engine) as session, session.begin():
        live = session.merge(space)
        if repo.missing_in_space(session, live):
            return live.status == "active"
        repo.activate_space(session, live)
        return True
