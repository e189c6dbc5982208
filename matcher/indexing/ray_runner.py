"""The index/reindex job's per-item work (steps 4-6 of ``matcher.indexing.job``) as a Ray Data pipeline.

``run_index(..., executor="ray")`` / ``matcher reindex ... --executor ray`` (optional extra
``matcher[ray]``).  The driver (the process that runs ``run_index``) does exactly what it does with
the process pool: it holds the index advisory lock, marks interrupted runs, plans the work, writes
the ``index_runs`` row, the failures and the final counts, and activates the space.  Only the work
items go to Ray:

    ray.data.from_items(work items: catalog row + reason + stored reference thumbnail)
      .map_batches(_IndexActor, actor pool of ``workers`` actors, batch_size=settings.batch_size)

Each actor builds its segmenter and embedder ONCE (through ``matcher.registry``) and opens its own
database connection; per batch it decodes, segments, mattes and composites every item
(``item.prepare_item``), embeds the batch, and writes each item in its own transaction through the
same store code as the process pool (``item.store_outcomes``: product + cutout + embedding +
``repo.record_event``, or the same-picture verdict).  It returns one small record per item (sku,
line, reason, outcome kind, error), which the driver sums into the run's counts and failures
(``item.tally``).  The
database is the only shared state, so ``kill -9`` of the driver or of any actor keeps the job's
guarantee: at most the items in flight are lost, and the next run redoes them.

When to use it: a catalog that outgrows one machine.  Point the driver at a Ray cluster
(``RAY_ADDRESS=ray://head:10001`` or ``ray start`` on every node and ``RAY_ADDRESS=auto``) and use
``--workers`` for the total number of actors across the machines; each actor holds its own model and
database connection.  Every node needs this package (with the same model weights), a
``DATABASE_URL`` reachable from every node (the embedded pgserver's socket is local to one machine)
and the images at the same paths (a shared filesystem) or as URLs.

When not to: a single machine.  The process pool (``--executor process``, the default) does the same
work with less overhead: no cluster start-up (seconds), no object store, and one model load for
embedding instead of one per actor.

Failed actors are not restarted and their batches are not retried: a retried batch would store again
the items it had already committed (recording them twice).  The run fails instead, like after
``kill -9``, and the next run finishes the job.
"""

from __future__ import annotations

import json
import os
from typing import Any

from matcher import registry
from matcher.db.engine import database_url
from matcher.settings import Settings
from matcher.types import CatalogError, CatalogRow

from .item import COUNT_KEYS, ItemResult, WorkItem, init_worker, prepare_item, store_outcomes, tally

_RESULT_COLUMNS = ("sku", "line", "reason", "kind", "stage", "error")


def require_ray() -> None:
    """Raise a clear error when the optional extra is missing."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ValueError("executor 'ray' needs Ray Data: pip install 'matcher[ray]'") from exc


def _to_record(item: WorkItem) -> dict[str, Any]:
    row = item.row
    return {"sku": row.sku, "title": row.title, "category": row.category, "image": row.image,
            "attributes": json.dumps(row.attributes), "line": row.line, "reason": item.reason,
            "reference_png": item.reference_png}


def _from_record(record: dict[str, Any]) -> WorkItem:
    row = CatalogRow(sku=record["sku"], title=record["title"], category=record["category"], image=record["image"],
                     attributes=json.loads(record["attributes"]), line=int(record["line"]))
    return WorkItem(row, record["reason"], reference_png=record["reference_png"])


def _result_record(result: ItemResult) -> dict[str, Any]:
    error = result.error
    return {"sku": result.sku, "line": result.line, "reason": result.reason, "kind": result.kind,
            "stage": error.stage if error else None, "error": error.reason if error else None}


def _result_from_record(record: dict[str, Any]) -> ItemResult:
    error = None
    if record["kind"] == "failed":
        error = CatalogError(int(record["line"]), record["sku"], record["stage"], record["error"])
    return ItemResult(record["sku"], int(record["line"]), record["reason"], record["kind"], error)


class _IndexActor:
    """One per Ray actor: its own segmenter, embedder and database engine, made once."""

    def __init__(self, settings: Settings, space_id: int, run_id: int, driver_cwd: str) -> None:
        from sqlalchemy.orm import Session

        from matcher.db.engine import get_engine
        from matcher.db.models import EmbeddingSpace

        if os.path.isdir(driver_cwd):
            os.chdir(driver_cwd)  # relative image paths mean what they meant to the driver
        segmenter_name = registry.segmenter_name(settings)
        segmenter = init_worker(settings, segmenter_name)  # this actor's segmenter, used by prepare_item
        self.embedder = registry.create_embedder(settings)
        self.engine = get_engine(settings)
        self.run_id = run_id
        with Session(self.engine) as session:
            self.space = session.get(EmbeddingSpace, space_id)
            if self.space is None:
                raise RuntimeError(f"embedding space {space_id} not found")
            session.expunge(self.space)
        made = (self.embedder.model_id, segmenter.segmenter_id)
        if made != (self.space.embedder_id, self.space.segmenter_id):
            raise RuntimeError(f"this node builds {made}, but the run indexes space {self.space.name} "
                               f"({self.space.embedder_id}, {self.space.segmenter_id}): same weights on every node?")

    def __call__(self, batch):  # a pyarrow.Table of work items -> a pyarrow.Table of results
        import pyarrow as pa

        outcomes = [prepare_item(_from_record(record)) for record in batch.to_pylist()]
        results = store_outcomes(self.engine, outcomes, self.space, self.embedder, self.run_id)
        return pa.Table.from_pylist([_result_record(r) for r in results], schema=_result_schema())


def _result_schema():
    import pyarrow as pa

    return pa.schema([("sku", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("kind", pa.string()),
                      ("stage", pa.string()), ("error", pa.string())])


def process_with_ray(todo: list[WorkItem], settings: Settings, space, run_id: int, *, workers: int = 2,
                     progress: bool = False, counts: dict[str, int] | None = None,
                     failures: list[CatalogError] | None = None) -> tuple[dict[str, int], list[CatalogError]]:
    """Prepare, embed and store ``todo`` on Ray Data actors; returns (and adds into) ``counts``, ``failures``.

    Uses the running Ray instance if there is one, else ``ray.init()`` (which joins the cluster named
    by ``RAY_ADDRESS``, or starts a local one and shuts it down afterwards)."""
    require_ray()
    import ray
    import ray.data
    from tqdm import tqdm

    counts = counts if counts is not None else dict.fromkeys(COUNT_KEYS, 0)
    failures = failures if failures is not None else []
    if not todo:
        return counts, failures
    started_here = not ray.is_initialized()
    if started_here:
        ray.init()
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False  # the driver's own bar below counts items
    try:
        # Actors reach the database the driver uses (the embedded server's URL resolved here).
        actor_settings = settings.model_copy(update={"database_url": database_url(settings)})
        size = max(1, min(workers, len(todo)))
        dataset = ray.data.from_items([_to_record(item) for item in todo]).map_batches(
            _IndexActor,
            fn_constructor_kwargs={"settings": actor_settings, "space_id": space.id, "run_id": run_id,
                                   "driver_cwd": os.getcwd()},
            compute=ray.data.ActorPoolStrategy(size=size),  # = concurrency=size; not deprecated in Ray >= 2.51
            batch_size=settings.batch_size,
            batch_format="pyarrow",
            max_restarts=0,  # no retried batches: see the module docstring
        )
        bar = tqdm(total=len(todo), desc="indexing (ray)", unit="item", disable=not progress)
        for results in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            records = results.to_pylist()
            tally([_result_from_record(r) for r in records], counts, failures)
            bar.update(len(records))
        bar.close()
    finally:
        context.enable_progress_bars = bars
        if started_here:
            ray.shutdown()
    return counts, failures
