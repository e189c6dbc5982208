"""The index job on Ray Data (``executor="ray"``) stores exactly what the process pool stores."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from matcher.db.engine import get_engine
from matcher.db.models import Cutout, Embedding, IndexEvent, IndexRun, Product
from matcher.indexing import run_index
from tests.matcher.indexing.test_reindex import _catalog, _write

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'matcher[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'matcher[ray]'")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def _second_database(pg_server, settings):
    name = "t_" + uuid.uuid4().hex[:12]
    pg_server.psql(f"CREATE DATABASE {name};")
    url = pg_server.get_uri().replace("/postgres?", f"/{name}?", 1)
    return settings.model_copy(update={"database_url": url, "data_dir": settings.data_dir.parent / "data-process"})


def _stored(settings) -> dict:
    with Session(get_engine(settings)) as session:
        joined = select(Product.sku, Embedding.vector).join(Embedding, Embedding.product_id == Product.id)
        vectors = dict(session.execute(joined).all())
        return {
            "products": session.scalar(select(func.count()).select_from(Product)),
            "cutouts": session.scalar(select(func.count()).select_from(Cutout)),
            "embeddings": session.scalar(select(func.count()).select_from(Embedding)),
            "skus": set(session.scalars(select(Product.sku))),
            "events": sorted(tuple(e) for e in session.execute(select(IndexEvent.sku, IndexEvent.kind))),
            "runs": [(r.status, r.counts) for r in session.scalars(select(IndexRun).order_by(IndexRun.id))],
            "vectors": {sku: np.asarray(v, dtype=np.float32) for sku, v in vectors.items()},
        }


@pytest.mark.slow
def test_ray_executor_stores_what_the_process_pool_stores_and_a_rerun_does_no_work(
        bench_dir, tmp_path, db_settings, pg_server, local_ray):
    catalog, rows = _catalog(bench_dir, tmp_path, 6)
    rows.append({"sku": "BROKEN-1", "title": "missing image", "category": None, "image": "images/missing.jpg"})
    _write(tmp_path, rows)  # the worker's load failure must come back from the actor as a failure record

    on_ray = run_index(catalog, db_settings, progress=False, remove_missing=True, kind="reindex",
                       executor="ray", workers=2)
    process_settings = _second_database(pg_server, db_settings)
    on_pool = run_index(catalog, process_settings, progress=False, remove_missing=True, kind="reindex",
                        executor="process", workers=1)

    assert on_ray.counts == on_pool.counts
    assert on_ray.counts["new"] == 6 and on_ray.counts["failed"] == 1 and on_ray.space_active
    assert [(f.sku, f.stage) for f in on_ray.failures] == [(f.sku, f.stage) for f in on_pool.failures] == [("BROKEN-1", "load")]
    ray_db, pool_db = _stored(db_settings), _stored(process_settings)
    for key in ("products", "cutouts", "embeddings", "skus", "events"):
        assert ray_db[key] == pool_db[key], key
    assert ray_db["products"] == ray_db["embeddings"] == 6
    assert ray_db["skus"] == {r["sku"] for r in rows[:6]}
    assert ray_db["runs"] == [("done", on_ray.counts)]
    for sku, vector in pool_db["vectors"].items():
        np.testing.assert_allclose(ray_db["vectors"][sku], vector, atol=1e-5)

    again = run_index(catalog, db_settings, progress=False, remove_missing=True, kind="reindex",
                      executor="ray", workers=2)
    assert again.processed == 0 and again.counts["unchanged"] == 6 and again.counts["new"] == 0
    assert _stored(db_settings)["events"] == ray_db["events"]  # no item stored again


def test_an_unknown_executor_is_refused(tmp_path, db_settings):
    catalog = _write(tmp_path, [])
    with pytest.raises(ValueError, match="unknown executor"):
        run_index(catalog, db_settings, progress=False, executor="threads")
