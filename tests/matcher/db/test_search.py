"""Vector search (``repository.search``) against the real embedded Postgres + pgvector.

Small tables on purpose: with ``ef_search`` at least the number of vectors in a
space, an HNSW search keeps every reachable node in its candidate list, so it
visits the whole (connected) graph and must return exactly the sequential-scan
answer.  That makes "HNSW == exact" a deterministic assertion, not a recall
threshold, while the plan check proves that the index was really used.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
import pytest
from sqlalchemy import event, text, update
from sqlalchemy.orm import Session

from matcher.db import repository as repo
from matcher.db.engine import get_engine
from matcher.db.migrate import upgrade
from matcher.db.models import Product

N_VECTORS = 300
DIM = 32
K = 10


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def engine(db_settings):
    engine = get_engine(db_settings)
    upgrade(engine)
    yield engine
    engine.dispose()


def _load_space(session: Session, embedder_id: str, vectors: np.ndarray, *, prefix: str,
                categories: list[str | None] | None = None):
    """One space through the project's own code path (the HNSW index exists before the rows)."""
    space = repo.get_or_create_space(session, embedder_id, "seg", vectors.shape[1])
    session.flush()
    for i, vector in enumerate(vectors):
        category = categories[i] if categories else None
        pid = repo.upsert_product(session, sku=f"{prefix}{i:04d}", title=f"{prefix} {i}", category=category,
                                  attributes={}, image_uri=f"mem://{prefix}{i}", image_sha256=f"{i:064x}")
        repo.upsert_embedding(session, pid, space, embedder_id, vector, f"{i:064x}")
    return space


def _analyze(session: Session) -> None:
    """Statistics for both joined tables, as after any bulk load.  Without them the planner takes
    the (tiny-looking, never analysed) products table as the driver and never reaches the index."""
    session.execute(text("ANALYZE products"))
    session.execute(text("ANALYZE embeddings"))
    session.commit()


@contextmanager
def _capture_sql(session: Session):
    """Record the statements ``repo.search`` sends, to EXPLAIN the real query."""
    seen: list[tuple[str, object]] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        seen.append((statement, parameters))

    connection = session.connection()
    event.listen(connection, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(connection, "before_cursor_execute", before)


def _search_and_plan(session: Session, space, query: np.ndarray, **kwargs) -> tuple[list[repo.SearchHit], str]:
    """Run ``repo.search`` and EXPLAIN its final SELECT inside the same transaction (same SET LOCALs)."""
    with _capture_sql(session) as seen:
        hits = repo.search(session, space, query, K, **kwargs)
    statement, parameters = next((s, p) for s, p in reversed(seen) if s.lstrip().upper().startswith("SELECT P.ID"))
    plan = "\n".join(r[0] for r in session.connection().exec_driver_sql("EXPLAIN " + statement, parameters))
    session.rollback()  # end the transaction: SET LOCAL (ef_search, enable_indexscan) must not leak
    return hits, plan


def test_hnsw_matches_exact_search_and_uses_the_index(engine):
    rng = np.random.default_rng(7)
    vectors = _unit(rng, N_VECTORS, DIM)
    queries = _unit(rng, 8, DIM)
    with Session(engine, expire_on_commit=False) as session:
        space = _load_space(session, "clip-test", vectors, prefix="p")
        session.commit()
        index_name = space.index_name
        assert index_name
        _analyze(session)

        for q in queries:
            hnsw, hnsw_plan = _search_and_plan(session, space, q, ef_search=N_VECTORS)
            exact, exact_plan = _search_and_plan(session, space, q, exact=True)
            assert index_name in hnsw_plan, hnsw_plan
            assert index_name not in exact_plan, exact_plan
            assert len(exact) == K
            assert [h.sku for h in hnsw] == [h.sku for h in exact]
            np.testing.assert_allclose([h.cosine for h in hnsw], [h.cosine for h in exact], atol=1e-6)
            # The scores are true cosines, highest first.
            expected = np.sort(vectors @ q)[::-1][:K]
            np.testing.assert_allclose([h.cosine for h in exact], expected, atol=1e-5)

            # The default ef_search (100, a third of the table) goes through the index too and is
            # exact in practice at this size: 0 differences in 200 queries over 25 fresh builds
            # (pgvector draws HNSW levels at random, so the graph differs between builds).
            default, default_plan = _search_and_plan(session, space, q)
            assert index_name in default_plan, default_plan
            assert [h.sku for h in default] == [h.sku for h in exact]


def test_soft_deleted_products_never_appear(engine):
    rng = np.random.default_rng(11)
    vectors = _unit(rng, N_VECTORS, DIM)
    queries = vectors[:6]  # each query is a stored vector: its own product would be the top hit
    with Session(engine, expire_on_commit=False) as session:
        space = _load_space(session, "clip-test", vectors, prefix="d")
        session.commit()
        deleted = {f"d{i:04d}" for i in range(0, N_VECTORS, 2)}  # half the catalogue, every query's own sku too
        session.execute(update(Product).where(Product.sku.in_(deleted)).values(deleted_at=datetime.now(timezone.utc)))
        session.commit()
        _analyze(session)

        for q in queries:
            for kwargs in ({"ef_search": N_VECTORS}, {}, {"exact": True}):
                hits, plan = _search_and_plan(session, space, q, **kwargs)
                assert (space.index_name in plan) != bool(kwargs.get("exact")), plan  # HNSW path filters too
                assert len(hits) == K, kwargs  # the live half still fills the page
                assert not deleted & {h.sku for h in hits}, kwargs


def test_spaces_of_different_dimensions_do_not_mix(engine):
    rng = np.random.default_rng(3)
    # Enough rows per space that the planner prefers each space's HNSW index to a sort.
    a_vectors = _unit(rng, N_VECTORS, DIM)
    b_vectors = _unit(rng, N_VECTORS, 16)
    with Session(engine, expire_on_commit=False) as session:
        space_a = _load_space(session, "model-a", a_vectors, prefix="a")
        space_b = _load_space(session, "model-b", b_vectors, prefix="b")
        session.commit()
        _analyze(session)
        assert space_a.id != space_b.id and space_a.index_name != space_b.index_name
        count = session.execute(text("SELECT count(*), count(DISTINCT dim) FROM embeddings")).one()
        assert tuple(count) == (2 * N_VECTORS, 2)  # one table, two dimensions

        for kwargs in ({}, {"exact": True}):
            hits_a, plan_a = _search_and_plan(session, space_a, _unit(rng, 1, DIM)[0], **kwargs)
            hits_b, plan_b = _search_and_plan(session, space_b, _unit(rng, 1, 16)[0], **kwargs)
            assert len(hits_a) == K and all(h.sku.startswith("a") for h in hits_a), kwargs
            assert len(hits_b) == K and all(h.sku.startswith("b") for h in hits_b), kwargs
            if not kwargs:
                assert space_a.index_name in plan_a and space_b.index_name in plan_b

        # A vector of the other space's dimension is refused before it reaches SQL.
        with pytest.raises(ValueError):
            repo.search(session, space_a, _unit(rng, 1, 16)[0], K)
        with pytest.raises(ValueError):
            repo.search(session, space_b, _unit(rng, 1, DIM)[0], K, exact=True)
        with pytest.raises(ValueError):
            repo.upsert_embedding(session, 1, space_a, "model-a", _unit(rng, 1, 16)[0], "0" * 64)
        session.rollback()


def test_category_filter_returns_only_that_category(engine):
    rng = np.random.default_rng(5)
    vectors = _unit(rng, N_VECTORS, DIM)
    categories = ["sofa", "chair", "lamp"] * (N_VECTORS // 3)
    with Session(engine, expire_on_commit=False) as session:
        space = _load_space(session, "clip-test", vectors, prefix="c", categories=categories)
        session.commit()
        _analyze(session)
        chairs = {f"c{i:04d}" for i, c in enumerate(categories) if c == "chair"}
        for q in _unit(rng, 4, DIM):
            exact, _ = _search_and_plan(session, space, q, category="chair", exact=True)
            hnsw, hnsw_plan = _search_and_plan(session, space, q, category="chair", ef_search=N_VECTORS)
            default, default_plan = _search_and_plan(session, space, q, category="chair")
            assert space.index_name in hnsw_plan and space.index_name in default_plan  # filtered after the index
            assert len(exact) == K
            for hits in (exact, hnsw, default):
                assert hits and {h.sku for h in hits} <= chairs
                assert all(h.category == "chair" for h in hits)
            # ef_search >= table size: even a post-filtered HNSW scan (pgvector < 0.8) holds every chair.
            assert [h.sku for h in hnsw] == [h.sku for h in exact]
