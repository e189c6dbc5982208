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


def test_first_commands_started_together_all_succeed(db_settings, tmp_path):
    """Several commands upgrading a fresh database at once take turns instead of racing on alembic_version."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo_root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "MATCHER_DATABASE_URL": db_settings.database_url, "MATCHER_DATA_DIR": str(tmp_path)}
    # Each process signals when its imports are done, then waits for the start file: the upgrades start together.
    start = tmp_path / "go"
    code = ("import sys, time, pathlib; from matcher.cli import app\n"
            "pathlib.Path(sys.argv[1]).touch()\n"
            f"while not pathlib.Path({str(start)!r}).exists(): time.sleep(0.01)\n"
            "sys.argv = ['matcher', 'db', 'upgrade']; app()")
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    processes = [subprocess.Popen([sys.executable, "-c", code, str(flag)], env=env, cwd=repo_root,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for flag in ready]
    import time

    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    start.touch()
    outputs = [p.communicate(timeout=180)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(o[-1500:] for o in outputs)
    engine = get_engine(db_settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert current_revision(engine) is not None
