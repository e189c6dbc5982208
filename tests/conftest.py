"""Shared test fixtures: the bench data set path and the embedded database."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_root() -> Path:
    return Path(os.environ.get("MATCHER_BENCH_DIR", REPO_ROOT.parent / "shared" / "bench" / "furniture-dev"))


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    root = bench_root()
    if not (root / "catalog" / "products.jsonl").is_file():
        pytest.skip(f"bench data set not found at {root} (set MATCHER_BENCH_DIR)")
    return root


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """One embedded Postgres (pgserver) for the test session, deleted afterwards."""
    import pgserver

    # A short path: the server's Unix socket lives in its data directory.
    pgdata = Path(tempfile.mkdtemp(prefix="mpg", dir="/tmp"))
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture
def db_settings(pg_server, tmp_path, request):
    """Settings pointing at a brand-new, empty database of the session server."""
    from matcher.settings import Settings

    name = "t_" + uuid.uuid4().hex[:12]
    pg_server.psql(f"CREATE DATABASE {name};")
    base_uri = pg_server.get_uri()  # postgresql://postgres:@/postgres?host=...
    url = base_uri.replace("/postgres?", f"/{name}?", 1)
    return Settings(database_url=url, data_dir=tmp_path / "data", backend="classical", batch_size=4)
