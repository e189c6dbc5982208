"""Schema migrations against the real embedded Postgres."""

from sqlalchemy import inspect, text

from matcher.db.engine import get_engine
from matcher.db.migrate import current_revision, upgrade


def test_upgrade_from_empty_creates_schema_and_is_repeatable(db_settings):
    engine = get_engine(db_settings)
    assert current_revision(engine) is None

    version = upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"products", "cutouts", "embeddings", "embedding_spaces", "index_runs", "index_failures"} <= tables
    assert version.count(".") >= 1
    head = current_revision(engine)
    assert head is not None

    upgrade(engine)  # a second upgrade is a no-op, not an error
    assert current_revision(engine) == head


def test_vectors_of_the_wrong_dimension_are_refused_by_the_schema(db_settings):
    import pytest
    from sqlalchemy.exc import IntegrityError

    engine = get_engine(db_settings)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO products (sku, image_uri, image_sha256) VALUES ('a', 'x', 'h')"))
        conn.execute(text("INSERT INTO embedding_spaces (name, embedder_id, segmenter_id, dim) VALUES ('s', 'e', 'g', 3)"))
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO embeddings (product_id, space_id, model_id, dim, image_sha256, vector) "
                "SELECT p.id, s.id, 'e', 3, 'h', '[1,2]' FROM products p, embedding_spaces s"))
