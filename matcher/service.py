"""The service API: what the CLI and the review app call.  No presentation here,
and no SQL (that lives in ``matcher.db.repository``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from . import registry
from .db import repository as repo
from .db.engine import get_engine, stop_embedded
from .db.migrate import current_revision, upgrade
from .settings import Settings


def db_upgrade(settings: Settings) -> dict[str, Any]:
    engine = get_engine(settings)
    pgvector = upgrade(engine)
    return {"revision": current_revision(engine), "pgvector": pgvector, "url": engine.url.render_as_string(hide_password=True)}


def db_status(settings: Settings) -> dict[str, Any]:
    engine = get_engine(settings)
    revision = current_revision(engine)
    if revision is None:
        return {"revision": None, "tables": {}}
    with Session(engine) as session:
        return {"revision": revision, "tables": repo.table_counts(session),
                "pgvector": ".".join(map(str, repo.pgvector_version(session)))}


def db_stop(settings: Settings) -> bool:
    return stop_embedded(settings)


def index_catalog(catalog: str | Path, settings: Settings, *, limit: int | None = None, workers: int = 1,
                  progress: bool = True):
    from indexer.job import run_index

    return run_index(catalog, settings, limit=limit, workers=workers, progress=progress)


def recent_runs(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    engine = get_engine(settings)
    upgrade(engine)
    with Session(engine) as session:
        return [
            {"id": r.id, "kind": r.kind, "status": r.status, "backend": r.backend, "catalog": r.catalog,
             "started_at": r.started_at.isoformat(timespec="seconds"), "duration_s": r.duration_s, "counts": r.counts}
            for r in repo.recent_runs(session, limit)
        ]


def eval_masks(dataset: str | Path, settings: Settings, *, segmenter_name: str | None = None,
               limit: int | None = None, json_out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    from .evaluation.masks import evaluate_catalog_masks

    segmenter = registry.create_segmenter(settings, segmenter_name)
    report = evaluate_catalog_masks(Path(dataset), segmenter, settings, limit=limit, progress=progress)
    report.setdefault("segmenter", segmenter.segmenter_id)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report
