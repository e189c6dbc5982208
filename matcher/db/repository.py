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
    """Make ``space`` the one searched for its embedder family; retire none (dropping is explicit)."""
    if space.status != "active":
        space.status = "active"
        space.activated_at = _now()


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
    product_sha256: str
    cutout_sha256: str | None
    embedding_sha256: str | None
    cutout_failed: bool
    deleted: bool


def indexed_state(session: Session, space: EmbeddingSpace) -> dict[str, IndexedState]:
    """Per sku: which image is stored, and whether this space already has its cutout/embedding."""
    rows = session.execute(
        select(Product.sku, Product.image_sha256, Cutout.image_sha256, Cutout.fail_reason,
               Embedding.image_sha256, Product.deleted_at)
        .outerjoin(Cutout, (Cutout.product_id == Product.id) & (Cutout.segmenter_id == space.segmenter_id))
        .outerjoin(Embedding, (Embedding.product_id == Product.id) & (Embedding.space_id == space.id))
    )
    return {
        sku: IndexedState(psha, csha, esha, fail is not None, deleted is not None)
        for sku, psha, csha, fail, esha, deleted in rows
    }


def upsert_product(session: Session, *, sku: str, title: str, category: str | None, attributes: dict[str, Any],
                   image_uri: str, image_sha256: str) -> int:
    values = dict(sku=sku, title=title, category=category, attributes=attributes,
                  image_uri=image_uri, image_sha256=image_sha256)
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


def record_failure(session: Session, run_id: int, line: int, sku: str | None, stage: str, reason: str) -> None:
    session.add(IndexFailure(run_id=run_id, line=line, sku=sku, stage=stage, reason=reason[:2000]))


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


def product_ids_by_sku(session: Session, skus: Iterable[str]) -> dict[str, int]:
    return dict(session.execute(select(Product.sku, Product.id).where(Product.sku.in_(list(skus)))).all())


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


def decision_groups(session: Session) -> list[tuple[str, list[dict], list[int]]]:
    """(photo key, candidate features, labels) for every detection with a live approve/reject decision."""
    from .models import CandidateRow, Decision, DetectionRow

    latest = (
        select(Decision.detection_id, Decision.verdict, Decision.product_id)
        .where(Decision.undone_at.is_(None), Decision.verdict.in_(("approve", "reject_all")))
        .distinct(Decision.detection_id)
        .order_by(Decision.detection_id, Decision.created_at.desc())
        .subquery()
    )
    rows = session.execute(
        select(DetectionRow.query_id, latest.c.detection_id, latest.c.product_id, CandidateRow.product_id, CandidateRow.features)
        .join(latest, latest.c.detection_id == DetectionRow.id)
        .join(CandidateRow, CandidateRow.detection_id == DetectionRow.id)
        .order_by(latest.c.detection_id, CandidateRow.rank)
    ).all()
    groups: dict[int, tuple[str, list[dict], list[int]]] = {}
    for query_id, detection_id, approved, candidate_product, features in rows:
        key, feats, labels = groups.setdefault(detection_id, (str(query_id), [], []))
        feats.append(features)
        labels.append(int(approved is not None and candidate_product == approved))
    return list(groups.values())
