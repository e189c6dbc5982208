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
                  progress: bool = True, executor: str = "process"):
    from .indexing import run_index

    return run_index(catalog, settings, limit=limit, workers=workers, progress=progress, executor=executor)


def recent_runs(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    from .indexing.job import record_deferred_run_ends

    engine = get_engine(settings)
    upgrade(engine)
    record_deferred_run_ends(engine, settings)
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


# --- query path ----------------------------------------------------------------------------------

def query_engine(settings: Settings, detectors: tuple[str, ...] = ()):
    from .query import QueryEngine

    return QueryEngine(settings, detectors=detectors)


def match_image(image: str | Path, settings: Settings, *, boxes=None, detectors: tuple[str, ...] = (),
                category_filter: bool = False, store: bool = True, source: str = "cli", engine=None):
    engine = engine or query_engine(settings, detectors)
    return engine.match(image, boxes=boxes, category_filter=category_filter, store=store, source=source)


def evaluate_dataset(dataset: str | Path, settings: Settings, *, json_out: str | Path, use_gt_boxes: bool = True,
                     detectors: tuple[str, ...] = (), limit: int | None = None, workers: int = 1,
                     progress: bool = True) -> dict[str, Any]:
    """Run the scene evaluation; write the JSON, a markdown report and example strips beside it."""
    from .evaluation.report import write_markdown
    from .evaluation.scenes import evaluate_scenes

    json_path = Path(json_out)
    examples_dir = json_path.with_name(json_path.stem + "_examples")
    report, _groups = evaluate_scenes(Path(dataset), settings, use_gt_boxes=use_gt_boxes, detectors=detectors,
                                      limit=limit, workers=workers, progress=progress, examples_dir=examples_dir)
    json_path.write_text(json.dumps(report, indent=2))
    markdown = json_path.with_suffix(".md")
    write_markdown(report, markdown)
    report["markdown"] = str(markdown)
    return report


def compare_embedders(dataset: str | Path, settings: Settings, models: tuple[str, ...], *, json_out: str | Path,
                      limit: int | None = None, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Several embedders on the same query cutouts; writes the JSON and a markdown table beside it."""
    from .evaluation.embedders import compare_embedders as compare
    from .evaluation.report import write_comparison_markdown

    report = compare(Path(dataset), settings, models, limit=limit, workers=workers, progress=progress)
    json_path = Path(json_out)
    json_path.write_text(json.dumps(report, indent=2))
    markdown = json_path.with_suffix(".md")
    write_comparison_markdown(report, markdown)
    report["markdown"] = str(markdown)
    return report


# --- re-ranker -----------------------------------------------------------------------------------

def _active_space(settings: Settings):
    engine = get_engine(settings)
    upgrade(engine)
    with Session(engine) as session:
        space = repo.active_space(session)
        if space is not None:
            session.expunge(space)
        return space


def labelled_groups_from_decisions(settings: Settings, space_id: int | None = None):
    """Review decisions as training groups: the approved product is the positive; "none of these" gives negatives.

    ``space_id``: only decisions on queries answered in that space (default: the active one)."""
    from .rerank import LabelledGroup

    if space_id is None:
        space = _active_space(settings)
        space_id = space.id if space is not None else None
    engine = get_engine(settings)
    upgrade(engine)
    with Session(engine) as session:
        return [LabelledGroup(key, features, labels) for key, features, labels in repo.decision_groups(session, space_id)]


def train_reranker(settings: Settings, *, source: str = "decisions", dataset: str | Path | None = None,
                   activate: str = "if-better", test_fraction: float = 0.3, seed: int = 0,
                   progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on held-out photos, store the versioned model, and activate it by policy.

    ``activate``: "if-better" (recall@1 lift over cosine >= 0, mean of the split check),
    "always" or "never".
    """
    from .rerank import reliable_lift, train

    if source == "decisions":
        space = _active_space(settings)
        if space is None:
            raise ValueError("no indexed catalog yet: nothing to train for")
        space_name = space.name
        groups = labelled_groups_from_decisions(settings, space.id)
    elif source == "bench":
        if dataset is None:
            raise ValueError("--dataset is needed to train from a bench data set")
        from .evaluation.scenes import evaluate_scenes

        report, groups = evaluate_scenes(Path(dataset), settings, train_reranker=False, progress=progress)
        space_name = report["space"]
    else:
        raise ValueError(f"unknown training source {source!r}: use decisions or bench")
    reranker = train(groups, test_fraction=test_fraction, seed=seed)
    activated = activate == "always" or (activate == "if-better" and reliable_lift(reranker.metrics) >= 0)
    engine = get_engine(settings)
    with Session(engine) as session, session.begin():
        repo.save_reranker(session, version=reranker.version, kind=reranker.kind,
                           feature_names=reranker.metrics["features"], model=reranker.to_bytes(),
                           metrics={**reranker.metrics, "source": source, "space": space_name}, activate=activated)
    return {"version": reranker.version, "activated": activated, "groups": len(groups), **reranker.metrics}


def list_rerankers(settings: Settings) -> list[dict[str, Any]]:
    engine = get_engine(settings)
    upgrade(engine)
    with Session(engine) as session:
        return [{"version": r.version, "kind": r.kind, "active": r.active, "created_at": r.created_at.isoformat(timespec="seconds"),
                 "lift_recall@1": r.metrics.get("held_out", {}).get("lift_recall@1"),
                 "lift_recall@1_mean_of_splits": (r.metrics.get("split_check") or {}).get("lift_recall@1_mean")}
                for r in repo.list_rerankers(session)]


def retrain_reranker_if_due(settings: Settings) -> dict[str, Any] | None:
    """Nightly: retrain when enough new decisions exist; activate only if the held-out lift (mean of the
    split check) is not worse than the active model's (or, with none active, not worse than cosine alone).
    Only decisions made in the active embedding space count, and the model records that space."""
    from .rerank import reliable_lift, train

    space = _active_space(settings)
    if space is None:
        return {"retrained": False, "reason": "no active embedding space"}
    engine = get_engine(settings)
    with Session(engine) as session:
        active = repo.active_reranker(session)
        if active is not None and (active.metrics or {}).get("space") != space.name:
            active = None  # trained in another space: search does not use it, so it is no baseline
        new = repo.decisions_since(session, active.created_at if active else None)
    if new < settings.retrain_min_decisions:
        return {"retrained": False, "reason": f"{new} new decisions, need {settings.retrain_min_decisions}"}
    try:
        reranker = train(labelled_groups_from_decisions(settings, space.id))
    except ValueError as exc:
        return {"retrained": False, "reason": str(exc)}
    lift = reliable_lift(reranker.metrics)
    baseline = (reliable_lift(active.metrics) if active else 0.0) or 0.0
    activated = lift >= baseline
    with Session(engine) as session, session.begin():
        repo.save_reranker(session, version=reranker.version, kind=reranker.kind, feature_names=reranker.metrics["features"],
                           model=reranker.to_bytes(), metrics={**reranker.metrics, "source": "decisions", "space": space.name},
                           activate=activated)
    return {"retrained": True, "version": reranker.version, "lift_recall@1": lift, "previous_lift": baseline,
            "activated": activated}


def reindex_catalog(catalog: str | Path, settings: Settings, *, since=None, workers: int = 1, progress: bool = True,
                    executor: str = "process", allow_mass_removal: bool = False):
    """The nightly run: index what changed, soft-delete what left the catalog, then retrain the re-ranker if due."""
    from .indexing import run_index

    report = run_index(catalog, settings, workers=workers, progress=progress, remove_missing=True, since=since,
                       kind="reindex", executor=executor, allow_mass_removal=allow_mass_removal)
    report.reranker = retrain_reranker_if_due(settings)
    return report


def list_spaces(settings: Settings) -> list[dict[str, Any]]:
    engine = get_engine(settings)
    upgrade(engine)
    with Session(engine) as session:
        return [{"id": s.id, "name": s.name, "status": s.status, "dim": s.dim, "vectors": n,
                 "missing": repo.missing_in_space(session, s)} for s, n in repo.list_spaces(session)]


def drop_space(settings: Settings, space_id: int) -> None:
    engine = get_engine(settings)
    with Session(engine) as session, session.begin():
        repo.drop_space(session, space_id)


def take_apart(photo: str | Path, out_dir: str | Path, settings: Settings, request=None):
    """``matcher layers``: the photo's objects as RGBA layers over a filled background (PNG, PSD, manifest)."""
    from .take_apart import LayersRequest, take_apart as run

    return run(photo, out_dir, settings, request or LayersRequest())


def export_dataset(settings: Settings, out_dir: str | Path, *, name: str, version: str, seed: int = 42):
    """``matcher dataset export``: reviewed masks as a versioned bench-format data set."""
    from .datasets import export_reviewed_masks

    return export_reviewed_masks(settings, out_dir, name=name, version=version, seed=seed)


# --- the shoppers' HTTP API (matcher.api) -------------------------------------------------------------

def save_upload(settings: Settings, filename: str, data: bytes) -> Path:
    """A posted photo checked (format sniffed from the bytes, fully decoded within limits) and stored."""
    from .review import save_upload as save

    return save(settings, filename, data)


def product_info(settings: Settings, sku: str) -> dict[str, Any] | None:
    """A live catalog product as shoppers see it (None when unknown or removed)."""
    with Session(get_engine(settings)) as session:
        product = repo.products_by_sku(session, [sku]).get(sku)
        if product is None or product.deleted_at is not None:
            return None
        return {"sku": product.sku, "title": product.title, "category": product.category,
                "attributes": product.attributes or {}, "updated_at": product.updated_at.isoformat(timespec="seconds")}


def stored_query(settings: Settings, query_id: int) -> dict[str, Any] | None:
    """What a match stored: the photo's size, timings, and each object's box and ranked products."""
    from .review import query_detections

    with Session(get_engine(settings)) as session:
        query = repo.review_row(session, "query", int(query_id))
        if query is None:
            return None
        head = {"query_id": int(query.id), "source": query.source, "width": query.width, "height": query.height,
                "reranker": query.reranker_version, "timings_s": query.timings,
                "created_at": query.created_at.isoformat(timespec="seconds")}
    objects = [{"detection_id": v.id, "box": [round(c, 1) for c in v.box.xywh()], "label": v.label, "status": v.status,
                "products": [{"rank": c.rank, "sku": c.sku, "title": c.title, "category": c.category,
                              "score": round(c.score, 4), "explanation": c.explanation} for c in v.candidates]}
               for v in query_detections(settings, int(query_id))]
    return {**head, "objects": objects}


def readiness(settings: Settings) -> dict[str, Any]:
    """Whether a server can answer matches: the database answers and an indexed catalog is active."""
    try:
        engine = get_engine(settings)
        upgrade(engine)
        with Session(engine) as session:
            space = repo.active_space(session)
            return {"database": True, "index": space is not None, "space": space.name if space else None}
    except Exception as exc:  # noqa: BLE001 - any failure to reach the database means "not ready", with why
        return {"database": False, "index": False, "space": None, "error": str(exc).splitlines()[0][:200]}
