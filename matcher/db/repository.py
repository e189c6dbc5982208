"""Every query the system runs against Postgres, in one place.

Functions take an open SQLAlchemy ``Session`` (or ``Connection``) and leave
transaction boundaries to the caller, so a caller can make "product + cutout +
embedding" one atomic unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from .models import Cutout, Embedding, EmbeddingSpace, IndexFailure, IndexRun, Product


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- embedding spaces --------------------------------------------------------------------------

def space_name(embedder_id: str, segmenter_id: str) -> str:
    return f"{embedder_id}|{segmenter_id}"


def get_or_create_space(session: Session, embedder_id: str, segmenter_id: str, dim: int,
                        hnsw_m: int = 16, hnsw_ef_construction: int = 64) -> EmbeddingSpace:
    """The space for this model pair, with its partial HNSW index (created once)."""
    name = space_name(embedder_id, segmenter_id)
    space = session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.name == name))
    if space is not None:
        if space.dim != dim:
            raise ValueError(f"embedding space {name!r} has dimension {space.dim}, the model gives {dim}")
        return space
    session.execute(
        insert(EmbeddingSpace)
        .values(name=name, embedder_id=embedder_id, segmenter_id=segmenter_id, dim=dim, status="building")
        .on_conflict_do_nothing(index_elements=["name"])
    )
    space = session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.name == name))
    assert space is not None
    if space.index_name is None:
        space.index_name = f"embeddings_hnsw_space_{space.id}"
        # dim and id are integers we created, m/ef are ints: safe to format into DDL.
        session.execute(text(
            f"CREATE INDEX IF NOT EXISTS {space.index_name} ON embeddings "
            f"USING hnsw ((vector::vector({int(dim)})) vector_cosine_ops) "
            f"WITH (m = {int(hnsw_m)}, ef_construction = {int(hnsw_ef_construction)}) "
            f"WHERE space_id = {int(space.id)}"
        ))
    return space


def activate_space(session: Session, space: EmbeddingSpace) -> None:
    """Make ``space`` the one that search uses; the previously active space is retired, not dropped."""
    if space.status == "active":
        return
    session.execute(update(EmbeddingSpace).where(EmbeddingSpace.status == "active", EmbeddingSpace.id != space.id)
                    .values(status="retired"))
    space.status = "active"
    space.activated_at = _now()


def drop_space(session: Session, space_id: int) -> None:
    """Delete a retired space: its vectors, its HNSW index, its row. The active space cannot be dropped."""
    space = session.get(EmbeddingSpace, space_id)
    if space is None:
        raise KeyError(f"no embedding space {space_id}")
    if space.status == "active":
        raise ValueError(f"space {space_id} ({space.name}) is the active one; activate another before dropping it")
    if space.index_name:
        session.execute(text(f'DROP INDEX IF EXISTS "{space.index_name}"'))
    session.execute(delete(Embedding).where(Embedding.space_id == space_id))
    session.delete(space)


def list_spaces(session: Session) -> list[tuple[EmbeddingSpace, int]]:
    counts = dict(session.execute(select(Embedding.space_id, func.count()).group_by(Embedding.space_id)).all())
    return [(s, int(counts.get(s.id, 0))) for s in session.scalars(select(EmbeddingSpace).order_by(EmbeddingSpace.id))]


def missing_in_space(session: Session, space: EmbeddingSpace) -> int:
    """Live products that this space has neither a vector nor a settled (failed) cutout for."""
    embedded = select(Embedding.product_id).where(Embedding.space_id == space.id)
    return int(session.scalar(
        select(func.count()).select_from(Product)
        .where(Product.deleted_at.is_(None), Product.id.not_in(embedded), ~select(Cutout.id).where(
            Cutout.product_id == Product.id, Cutout.segmenter_id == space.segmenter_id, Cutout.fail_reason.is_not(None),
            Cutout.image_sha256 == Product.image_sha256).exists())
    ) or 0)


def space_by_name(session: Session, name: str) -> EmbeddingSpace | None:
    return session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.name == name))


def active_space(session: Session, embedder_id: str | None = None, segmenter_id: str | None = None) -> EmbeddingSpace | None:
    query = select(EmbeddingSpace).where(EmbeddingSpace.status == "active")
    if embedder_id:
        query = query.where(EmbeddingSpace.embedder_id == embedder_id)
    if segmenter_id:
        query = query.where(EmbeddingSpace.segmenter_id == segmenter_id)
    return session.scalars(query.order_by(EmbeddingSpace.activated_at.desc())).first()


# --- products, cutouts, embeddings ---------------------------------------------------------------

@dataclass(frozen=True)
class IndexedState:
    product_id: int
    product_sha256: str
    cutout_sha256: str | None
    embedding_sha256: str | None
    cutout_failed: bool
    deleted: bool


def indexed_state(session: Session, space: EmbeddingSpace) -> dict[str, IndexedState]:
    """Per sku: which image is stored, and whether this space already has its cutout/embedding."""
    rows = session.execute(
        select(Product.sku, Product.id, Product.image_sha256, Cutout.image_sha256, Cutout.fail_reason,
               Embedding.image_sha256, Product.deleted_at)
        .outerjoin(Cutout, (Cutout.product_id == Product.id) & (Cutout.segmenter_id == space.segmenter_id))
        .outerjoin(Embedding, (Embedding.product_id == Product.id) & (Embedding.space_id == space.id))
    )
    return {
        sku: IndexedState(pid, psha, csha, esha, fail is not None, deleted is not None)
        for sku, pid, psha, csha, fail, esha, deleted in rows
    }


def upsert_product(session: Session, *, sku: str, title: str, category: str | None, attributes: dict[str, Any],
                   image_uri: str, image_sha256: str, reference_png: bytes | None = None) -> int:
    values = dict(sku=sku, title=title, category=category, attributes=attributes,
                  image_uri=image_uri, image_sha256=image_sha256, reference_png=reference_png)
    statement = insert(Product).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["sku"],
        set_={**{k: statement.excluded[k] for k in values if k != "sku"}, "updated_at": func.now(), "deleted_at": None},
    ).returning(Product.id)
    return int(session.execute(statement).scalar_one())


def upsert_cutout(session: Session, product_id: int, segmenter_id: str, **fields: Any) -> int:
    statement = insert(Cutout).values(product_id=product_id, segmenter_id=segmenter_id, **fields)
    statement = statement.on_conflict_do_update(
        index_elements=["product_id", "segmenter_id"],
        set_={**{k: statement.excluded[k] for k in fields}, "created_at": func.now()},
    ).returning(Cutout.id)
    return int(session.execute(statement).scalar_one())


def upsert_embedding(session: Session, product_id: int, space: EmbeddingSpace, model_id: str,
                     vector: np.ndarray, image_sha256: str) -> None:
    if vector.shape != (space.dim,):
        raise ValueError(f"vector of shape {vector.shape} does not fit space {space.name} (dim {space.dim})")
    statement = insert(Embedding).values(
        product_id=product_id, space_id=space.id, model_id=model_id, dim=space.dim,
        vector=vector.astype(np.float32), image_sha256=image_sha256,
    )
    session.execute(statement.on_conflict_do_update(
        index_elements=["product_id", "space_id"],
        set_={"vector": statement.excluded.vector, "image_sha256": statement.excluded.image_sha256,
              "model_id": statement.excluded.model_id, "created_at": func.now()},
    ))


def reference_images(session: Session, skus: Iterable[str]) -> dict[str, bytes]:
    rows = session.execute(select(Product.sku, Product.reference_png)
                           .where(Product.sku.in_(list(skus)), Product.reference_png.is_not(None)))
    return dict(rows.all())


def accept_same_picture(session: Session, product_id: int, image_uri: str, image_sha256: str) -> None:
    """New bytes, same picture: adopt the new file's hash everywhere so it is "unchanged" from now on."""
    session.execute(update(Product).where(Product.id == product_id)
                    .values(image_uri=image_uri, image_sha256=image_sha256, updated_at=func.now()))
    session.execute(update(Cutout).where(Cutout.product_id == product_id).values(image_sha256=image_sha256))
    session.execute(update(Embedding).where(Embedding.product_id == product_id).values(image_sha256=image_sha256))


def live_skus(session: Session) -> set[str]:
    return set(session.scalars(select(Product.sku).where(Product.deleted_at.is_(None))))


def soft_delete_missing(session: Session, listed_skus: set[str]) -> list[str]:
    """Products no longer in the catalog leave search (deleted_at) but keep their reviews and history."""
    gone = sorted(live_skus(session) - listed_skus)
    if gone:
        session.execute(update(Product).where(Product.sku.in_(gone)).values(deleted_at=func.now()))
    return gone


def record_event(session: Session, run_id: int, sku: str, kind: str, detail: dict | None = None) -> None:
    from .models import IndexEvent

    session.add(IndexEvent(run_id=run_id, sku=sku, kind=kind, detail=detail or {}))


# Postgres advisory lock key for catalog index runs ("mtchidx" as an int64).
INDEX_LOCK_KEY = 0x6D746368696478


def try_index_lock(connection) -> bool:
    """Session-level advisory lock, released when the connection closes (or its process dies)."""
    return bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": INDEX_LOCK_KEY}).scalar())


def release_index_lock(connection) -> None:
    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": INDEX_LOCK_KEY})


# Advisory lock key serialising schema migrations ("mtchmig"): several first commands may start at once.
MIGRATION_LOCK_KEY = 0x6D7463686D6967


def wait_for_migration_lock(connection) -> None:
    """Blocks until no other process is migrating; session-level, released by :func:`release_migration_lock`."""
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})


def release_migration_lock(connection) -> None:
    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})


def running_runs(session: Session) -> list[IndexRun]:
    return list(session.scalars(select(IndexRun).where(IndexRun.status == "running").order_by(IndexRun.id)))


def mark_interrupted(session: Session, run_ids: list[int]) -> None:
    if run_ids:
        session.execute(update(IndexRun).where(IndexRun.id.in_(run_ids)).values(status="interrupted"))


def delete_embedding(session: Session, product_id: int, space: EmbeddingSpace) -> None:
    session.execute(delete(Embedding).where(Embedding.product_id == product_id, Embedding.space_id == space.id))


def analyze_index_tables(session: Session) -> None:
    """Fresh planner statistics after bulk writes: without them the planner may sort instead of using HNSW."""
    session.execute(text("ANALYZE products"))
    session.execute(text("ANALYZE embeddings"))


def table_counts(session: Session) -> dict[str, int]:
    counts = {}
    for model in (Product, Cutout, Embedding, EmbeddingSpace, IndexRun, IndexFailure):
        counts[model.__tablename__] = int(session.scalar(select(func.count()).select_from(model)) or 0)
    return counts


def products_by_sku(session: Session, skus: Iterable[str]) -> dict[str, Product]:
    return {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(list(skus))))}


# --- runs ------------------------------------------------------------------------------------

def start_run(session: Session, *, catalog: str, backend: str, space_id: int | None, kind: str = "index") -> int:
    run = IndexRun(catalog=catalog, backend=backend, space_id=space_id, kind=kind, status="running", counts={})
    session.add(run)
    session.flush()
    return int(run.id)


def finish_run(session: Session, run_id: int, counts: dict[str, int], status: str, duration_s: float) -> None:
    session.execute(update(IndexRun).where(IndexRun.id == run_id).values(
        counts=counts, status=status, finished_at=_now(), duration_s=duration_s))


def _storable(text_value: str | None) -> str | None:
    """Postgres text cannot hold NUL: shown escaped instead (failure records must always be writable)."""
    return None if text_value is None else text_value.replace("\x00", "\\x00")


def record_failure(session: Session, run_id: int, line: int, sku: str | None, stage: str, reason: str) -> None:
    session.add(IndexFailure(run_id=run_id, line=line, sku=_storable(sku), stage=stage, reason=_storable(reason)[:2000]))


def run_failures(session: Session, run_id: int) -> list[IndexFailure]:
    return list(session.scalars(select(IndexFailure).where(IndexFailure.run_id == run_id).order_by(IndexFailure.line)))


def recent_runs(session: Session, limit: int = 20) -> list[IndexRun]:
    return list(session.scalars(select(IndexRun).order_by(IndexRun.id.desc()).limit(limit)))


# --- search ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchHit:
    product_id: int
    sku: str
    title: str
    category: str | None
    cosine: float


def pgvector_version(session: Session) -> tuple[int, ...]:
    version = session.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar_one()
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def search(session: Session, space: EmbeddingSpace, query: np.ndarray, k: int, *, ef_search: int = 100,
           category: str | None = None, exact: bool = False) -> list[SearchHit]:
    """Top-``k`` live products by cosine similarity in one space.

    The ORDER BY expression matches the space's partial HNSW index so the
    planner uses it; ``exact=True`` forces a sequential scan (ground truth).
    With a category filter on pgvector >= 0.8, iterative scans keep ``k`` results.
    """
    dim = int(space.dim)
    if query.shape != (dim,):
        raise ValueError(f"query of shape {query.shape} does not fit space {space.name} (dim {dim})")
    # SET cannot take bind parameters; set_config(..., is_local => true) is the same as SET LOCAL.
    session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(int(max(ef_search, k)))})
    if exact:
        session.execute(text("SET LOCAL enable_indexscan = off"))
    if category is not None and pgvector_version(session) >= (0, 8, 0):
        session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    sql = (
        f"SELECT p.id, p.sku, p.title, p.category, e.vector::vector({dim}) <=> CAST(:q AS vector({dim})) AS distance "
        "FROM embeddings e JOIN products p ON p.id = e.product_id "
        "WHERE e.space_id = :space AND p.deleted_at IS NULL "
        + ("AND p.category = :category " if category is not None else "")
        + f"ORDER BY e.vector::vector({dim}) <=> CAST(:q AS vector({dim})) LIMIT :k"
    )
    params = {"q": _vector_literal(query), "space": space.id, "k": int(k), "category": category}
    rows = session.execute(text(sql), params).all()
    return [SearchHit(int(r[0]), r[1], r[2], r[3], 1.0 - float(r[4])) for r in rows]


def embedding_vectors(session: Session, space_id: int, product_ids: Iterable[int]) -> dict[int, np.ndarray]:
    """The stored vectors of some products in one space."""
    ids = list(product_ids)
    if not ids:
        return {}
    rows = session.execute(select(Embedding.product_id, Embedding.vector)
                           .where(Embedding.space_id == space_id, Embedding.product_id.in_(ids)))
    return {int(product_id): np.asarray(vector, dtype=np.float32) for product_id, vector in rows}


def _vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


# --- re-rankers --------------------------------------------------------------------------------

def save_reranker(session: Session, *, version: str, kind: str, feature_names: list[str], model: bytes | None,
                  metrics: dict, activate: bool) -> int:
    from .models import Reranker

    row = Reranker(version=version, kind=kind, feature_names=feature_names, model=model, metrics=metrics, active=False)
    session.add(row)
    session.flush()
    if activate:
        activate_reranker(session, version)
    return int(row.id)


def activate_reranker(session: Session, version: str) -> None:
    from .models import Reranker

    session.execute(update(Reranker).where(Reranker.active.is_(True)).values(active=False))
    session.flush()
    changed = session.execute(update(Reranker).where(Reranker.version == version).values(active=True)).rowcount
    if not changed:
        raise KeyError(f"no re-ranker version {version!r}")


def active_reranker(session: Session):
    from .models import Reranker

    return session.scalar(select(Reranker).where(Reranker.active.is_(True)))


def list_rerankers(session: Session, limit: int = 20):
    from .models import Reranker

    return list(session.scalars(select(Reranker).order_by(Reranker.id.desc()).limit(limit)))


# --- catalog shapes for the re-ranker features ---------------------------------------------------

def catalog_cutouts(session: Session, product_ids: Iterable[int], segmenter_id: str) -> dict[int, Cutout]:
    ids = list(product_ids)
    if not ids:
        return {}
    rows = session.scalars(select(Cutout).where(Cutout.product_id.in_(ids), Cutout.segmenter_id == segmenter_id))
    return {c.product_id: c for c in rows}


# --- queries, detections, candidates -------------------------------------------------------------

def save_query(session: Session, *, image_path: str, image_sha256: str, width: int, height: int, source: str,
               space_id: int | None, reranker_version: str | None, timings: dict) -> int:
    from .models import Query

    row = Query(image_path=image_path, image_sha256=image_sha256, width=width, height=height, source=source,
                space_id=space_id, reranker_version=reranker_version, timings=timings)
    session.add(row)
    session.flush()
    return int(row.id)


def save_detection(session: Session, query_id: int, **fields: Any) -> int:
    from .models import DetectionRow

    row = DetectionRow(query_id=query_id, **fields)
    session.add(row)
    session.flush()
    return int(row.id)


def save_candidates(session: Session, detection_id: int, candidates: Iterable[dict[str, Any]]) -> None:
    from .models import CandidateRow

    session.add_all(CandidateRow(detection_id=detection_id, **c) for c in candidates)


def decisions_since(session: Session, since: datetime | None) -> int:
    from .models import Decision

    query = select(func.count()).select_from(Decision).where(Decision.undone_at.is_(None))
    if since is not None:
        query = query.where(Decision.created_at > since)
    return int(session.scalar(query) or 0)


def decision_groups(session: Session, space_id: int | None = None) -> list[tuple[str, list[dict], list[int]]]:
    """(photo key, candidate features, labels) for every detection with a live approve/reject decision.

    ``space_id``: only queries answered in that embedding space (cosines of two models do not mix)."""
    from .models import CandidateRow, Decision, DetectionRow, Query

    from sqlalchemy.dialects.postgresql import distinct_on

    latest = (
        select(Decision.detection_id, Decision.verdict, Decision.product_id)
        .where(Decision.undone_at.is_(None), Decision.verdict.in_(("approve", "reject_all")))
        .ext(distinct_on(Decision.detection_id))
        .order_by(Decision.detection_id, Decision.created_at.desc())
        .subquery()
    )
    query = (
        select(DetectionRow.query_id, latest.c.detection_id, latest.c.product_id, CandidateRow.product_id, CandidateRow.features)
        .join(latest, latest.c.detection_id == DetectionRow.id)
        .join(CandidateRow, CandidateRow.detection_id == DetectionRow.id)
        .order_by(latest.c.detection_id, CandidateRow.rank)
    )
    if space_id is not None:
        query = query.join(Query, Query.id == DetectionRow.query_id).where(Query.space_id == space_id)
    rows = session.execute(query).all()
    groups: dict[int, tuple[str, list[dict], list[int]]] = {}
    for query_id, detection_id, approved, candidate_product, features in rows:
        key, feats, labels = groups.setdefault(detection_id, (str(query_id), [], []))
        feats.append(features)
        labels.append(int(approved is not None and candidate_product == approved))
    return list(groups.values())


# --- review workflow -----------------------------------------------------------------------------
# Queue, decisions (with optimistic locking on detections.version), undo, history, export.

def _queue_filter(*, category: str | None = None, min_score: float | None = None, max_score: float | None = None,
                  no_candidates: bool = False, flag: str | None = None):
    """Pending detections joined with their query and best candidate, filtered."""
    from sqlalchemy import any_, or_

    from .models import CandidateRow, DetectionRow, Query

    top = (
        select(CandidateRow.detection_id, CandidateRow.score.label("top_score"), Product.sku.label("top_sku"),
               Product.category.label("top_category"))
        .join(Product, Product.id == CandidateRow.product_id)
        .where(CandidateRow.rank == 1)
        .subquery()
    )
    category_expr = func.coalesce(DetectionRow.category, top.c.top_category)
    query = (
        select(DetectionRow, Query.image_path, Query.source.label("query_source"), top.c.top_score, top.c.top_sku,
               category_expr.label("shown_category"))
        .join(Query, Query.id == DetectionRow.query_id)
        .outerjoin(top, top.c.detection_id == DetectionRow.id)
        .where(DetectionRow.status == "pending")
    )
    if category is not None:
        query = query.where(category_expr == category)
    if no_candidates:
        query = query.where(top.c.top_score.is_(None))
    if min_score is not None:
        query = query.where(top.c.top_score >= min_score)
    if max_score is not None:
        query = query.where(top.c.top_score < max_score)
    if flag == "mask_fail":
        query = query.where(or_(any_(DetectionRow.flags) == "mask_fail", DetectionRow.fail_reason.is_not(None)))
    elif flag is not None:
        query = query.where(any_(DetectionRow.flags) == flag)
    return query


def review_queue(session: Session, *, limit: int = 50, offset: int = 0, **filters: Any) -> list[Any]:
    """Rows of (DetectionRow, image_path, query_source, top_score, top_sku, shown_category), oldest first."""
    from .models import DetectionRow

    query = _queue_filter(**filters).order_by(DetectionRow.created_at, DetectionRow.id).offset(offset).limit(limit)
    return list(session.execute(query).all())


def review_queue_count(session: Session, **filters: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(_queue_filter(**filters).subquery())) or 0)


def upload_photos_in_use(session: Session, cutoff: datetime) -> set[str]:
    """Image paths of uploaded photos still needed: a detection pending review, or matched at/after ``cutoff``."""
    from sqlalchemy import exists, or_

    from .models import DetectionRow, Query

    pending = exists().where(DetectionRow.query_id == Query.id, DetectionRow.status == "pending")
    rows = session.scalars(select(Query.image_path).where(Query.source.like("upload:%"),
                                                          or_(pending, Query.created_at >= cutoff)).distinct())
    return set(rows)


def review_categories(session: Session) -> list[str]:
    rows = session.scalars(select(Product.category).where(Product.category.is_not(None), Product.deleted_at.is_(None))
                           .distinct().order_by(Product.category))
    return list(rows)


def review_detections(session: Session, detection_ids: Iterable[int] | None = None, *, query_id: int | None = None,
                      include_superseded: bool = False) -> list[Any]:
    """Rows of (DetectionRow, Query) by id or by query."""
    from .models import DetectionRow, Query

    query = select(DetectionRow, Query).join(Query, Query.id == DetectionRow.query_id)
    if detection_ids is not None:
        query = query.where(DetectionRow.id.in_(list(detection_ids)))
    if query_id is not None:
        query = query.where(DetectionRow.query_id == query_id)
    if not include_superseded:
        query = query.where(DetectionRow.status != "superseded")
    return list(session.execute(query.order_by(DetectionRow.id)).all())


def review_candidates(session: Session, detection_ids: Iterable[int]) -> list[Any]:
    """Rows of (CandidateRow, Product) for the detections, by detection then rank."""
    from .models import CandidateRow

    ids = list(detection_ids)
    if not ids:
        return []
    return list(session.execute(
        select(CandidateRow, Product).join(Product, Product.id == CandidateRow.product_id)
        .where(CandidateRow.detection_id.in_(ids)).order_by(CandidateRow.detection_id, CandidateRow.rank)).all())


def claim_detection(session: Session, detection_id: int, expected_version: int, new_status: str) -> int:
    """Optimistic lock: move a *pending* detection seen at ``expected_version`` to ``new_status``.

    Returns the number of rows changed (0: someone else changed it first)."""
    from .models import DetectionRow

    return int(session.execute(
        update(DetectionRow)
        .where(DetectionRow.id == detection_id, DetectionRow.version == expected_version, DetectionRow.status == "pending")
        .values(status=new_status, version=DetectionRow.version + 1)
    ).rowcount)


def insert_decision(session: Session, *, detection_id: int, reviewer: str, verdict: str, product_id: int | None,
                    note: str | None, reranker_version: str | None):
    from .models import Decision

    row = Decision(detection_id=detection_id, reviewer=reviewer, verdict=verdict, product_id=product_id, note=note,
                   reranker_version=reranker_version)
    session.add(row)
    session.flush()
    return row


def latest_decision(session: Session, detection_id: int, *, live_only: bool = False):
    from .models import Decision

    query = select(Decision).where(Decision.detection_id == detection_id)
    if live_only:
        query = query.where(Decision.undone_at.is_(None))
    return session.scalar(query.order_by(Decision.created_at.desc(), Decision.id.desc()).limit(1))


def last_live_decision_of(session: Session, reviewer: str, *, for_update: bool = False):
    from .models import Decision

    query = (select(Decision).where(Decision.reviewer == reviewer, Decision.undone_at.is_(None))
             .order_by(Decision.created_at.desc(), Decision.id.desc()).limit(1))
    if for_update:
        query = query.with_for_update()
    return session.scalar(query)


def reopen_detection(session: Session, detection_id: int) -> int:
    """A decided detection back to pending (undo); bumps the version so stale screens conflict."""
    from .models import DetectionRow

    return int(session.execute(
        update(DetectionRow).where(DetectionRow.id == detection_id, DetectionRow.status == "decided")
        .values(status="pending", version=DetectionRow.version + 1)
    ).rowcount)


def mark_decision_undone(session: Session, decision_id: int) -> None:
    from .models import Decision

    session.execute(update(Decision).where(Decision.id == decision_id).values(undone_at=_now()))


def decision_history(session: Session, *, reviewer: str | None = None, verdict: str | None = None,
                     live_only: bool = False, limit: int | None = 200) -> list[Any]:
    """Rows of (Decision, sku, title, category, DetectionRow, image_path), newest first."""
    from .models import Decision, DetectionRow, Query

    query = (
        select(Decision, Product.sku, Product.title, Product.category, DetectionRow, Query.image_path)
        .join(DetectionRow, DetectionRow.id == Decision.detection_id)
        .join(Query, Query.id == DetectionRow.query_id)
        .outerjoin(Product, Product.id == Decision.product_id)
    )
    if reviewer is not None:
        query = query.where(Decision.reviewer == reviewer)
    if verdict is not None:
        query = query.where(Decision.verdict == verdict)
    if live_only:
        query = query.where(Decision.undone_at.is_(None))
    query = query.order_by(Decision.created_at.desc(), Decision.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.execute(query).all())


def reviewer_counts(session: Session, since: datetime | None = None) -> list[tuple[str, str, int, int]]:
    """(reviewer, verdict, live decisions, undone decisions) per reviewer and verdict."""
    from sqlalchemy import case

    from .models import Decision

    live = func.sum(case((Decision.undone_at.is_(None), 1), else_=0))
    undone = func.sum(case((Decision.undone_at.is_not(None), 1), else_=0))
    query = select(Decision.reviewer, Decision.verdict, live, undone).group_by(Decision.reviewer, Decision.verdict)
    if since is not None:
        query = query.where(Decision.created_at >= since)
    return [(r, v, int(n or 0), int(u or 0)) for r, v, n, u in session.execute(query.order_by(Decision.reviewer))]


def labelled_counts(session: Session) -> dict[str, int]:
    """What the re-ranker can learn from: live approve / reject_all decisions and their candidate pairs."""
    from sqlalchemy.dialects.postgresql import distinct_on

    from .models import CandidateRow, Decision

    latest = (
        select(Decision.detection_id, Decision.verdict)
        .where(Decision.undone_at.is_(None), Decision.verdict.in_(("approve", "reject_all")))
        .ext(distinct_on(Decision.detection_id))
        .order_by(Decision.detection_id, Decision.created_at.desc())
        .subquery()
    )
    by_verdict = dict(session.execute(select(latest.c.verdict, func.count()).group_by(latest.c.verdict)).all())
    pairs = session.scalar(select(func.count()).select_from(CandidateRow)
                           .join(latest, latest.c.detection_id == CandidateRow.detection_id))
    return {"approved": int(by_verdict.get("approve", 0)), "rejected_all": int(by_verdict.get("reject_all", 0)),
            "pairs": int(pairs or 0)}


def review_row(session: Session, kind: str, row_id: int):
    """One products / queries / detections row by primary key (None when gone)."""
    from .models import DetectionRow, Query

    model = {"product": Product, "query": Query, "detection": DetectionRow}[kind]
    return session.get(model, int(row_id))


# --- reviewer accounts -----------------------------------------------------------------------------

def reviewer_account(session: Session, name: str, *, for_update: bool = False):
    from .models import ReviewerAccount

    query = select(ReviewerAccount).where(func.lower(ReviewerAccount.name) == name.lower())
    return session.scalar(query.with_for_update() if for_update else query)


def add_reviewer_account(session: Session, name: str, password_hash: str):
    from .models import ReviewerAccount

    row = ReviewerAccount(name=name, password_hash=password_hash, active=True)
    session.add(row)
    session.flush()
    return row


def update_reviewer_account(session: Session, account_id: int, **values: Any) -> None:
    from .models import ReviewerAccount

    session.execute(update(ReviewerAccount).where(ReviewerAccount.id == account_id).values(changed_at=_now(), **values))


def reviewer_accounts(session: Session) -> list[Any]:
    from .models import ReviewerAccount

    return list(session.scalars(select(ReviewerAccount).order_by(func.lower(ReviewerAccount.name))))


def record_sign_in(session: Session, name: str, succeeded: bool, reason: str = "") -> None:
    from .models import SignInAttempt

    session.add(SignInAttempt(name=name.lower()[:128], succeeded=succeeded, reason=reason))


def recent_failed_sign_ins(session: Session, name: str, since: datetime) -> int:
    """Failed attempts for this name after ``since`` and after its last successful sign-in."""
    from .models import SignInAttempt

    key = name.lower()[:128]
    last_ok = session.scalar(select(func.max(SignInAttempt.created_at))
                             .where(SignInAttempt.name == key, SignInAttempt.succeeded.is_(True)))
    start = max(since, last_ok) if last_ok is not None else since
    return int(session.scalar(select(func.count()).select_from(SignInAttempt)
                              .where(SignInAttempt.name == key, SignInAttempt.succeeded.is_(False),
                                     SignInAttempt.created_at > start)) or 0)


# --- reviewed masks --------------------------------------------------------------------------------

def latest_mask_correction(session: Session, detection_id: int):
    """The newest reviewed mask carried by a detection (None when it has none)."""
    from .models import MaskCorrection

    return session.scalar(select(MaskCorrection).where(MaskCorrection.detection_id == detection_id)
                          .order_by(MaskCorrection.id.desc()).limit(1))


def save_mask_correction(session: Session, **fields: Any) -> int:
    from .models import MaskCorrection

    row = MaskCorrection(**fields)
    session.add(row)
    session.flush()
    return int(row.id)


def reviewed_masks(session: Session) -> list[tuple[Any, Any, Any]]:
    """(correction, detection, query) for the newest reviewed mask of every live object.

    A superseded detection's masks are history; the object's current mask is on the detection that
    replaced it."""
    from .models import DetectionRow, MaskCorrection, Query

    newest = (select(func.max(MaskCorrection.id).label("id")).group_by(MaskCorrection.detection_id).subquery())
    return list(session.execute(
        select(MaskCorrection, DetectionRow, Query)
        .join(newest, newest.c.id == MaskCorrection.id)
        .join(DetectionRow, DetectionRow.id == MaskCorrection.detection_id)
        .join(Query, Query.id == MaskCorrection.query_id)
        .where(DetectionRow.status != "superseded")
        .order_by(Query.id, MaskCorrection.id)).all())


def review_mask_correction(session: Session, correction_id: int):
    from .models import MaskCorrection

    return session.get(MaskCorrection, int(correction_id))


def approved_products(session: Session, detection_ids: Iterable[int]) -> dict[int, Product]:
    """The product each detection's live approval chose."""
    from .models import Decision

    ids = [int(i) for i in detection_ids]
    if not ids:
        return {}
    rows = session.execute(
        select(Decision.detection_id, Product).join(Product, Product.id == Decision.product_id)
        .where(Decision.detection_id.in_(ids), Decision.verdict == "approve", Decision.undone_at.is_(None))).all()
    return {int(detection_id): product for detection_id, product in rows}


def top_candidate_titles(session: Session, detection_ids: Iterable[int]) -> dict[int, str]:
    from .models import CandidateRow

    ids = [int(i) for i in detection_ids]
    rows = session.execute(select(CandidateRow.detection_id, Product.title).join(Product, Product.id == CandidateRow.product_id)
                           .where(CandidateRow.detection_id.in_(ids), CandidateRow.rank == 1)).all() if ids else []
    return {int(detection_id): title for detection_id, title in rows}
