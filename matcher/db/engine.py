"""Connecting to Postgres: a user-given ``DATABASE_URL`` or the embedded pgserver.

The embedded server (PyPI ``pgserver``: Postgres 16 + pgvector) lives in
``settings.pgdata_dir`` and is left running between commands, so the second
command in a shell session connects instantly; ``matcher db stop`` stops it.
"""

from __future__ import annotations

import logging
import re
import warnings
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text

from ..settings import Settings

log = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    pass


class DatabaseUnavailableError(DatabaseError):
    """The database stopped answering (stopped, restarted, network) in the middle of the work."""


def connection_lost(engine: Engine, exc: BaseException) -> bool:
    """Whether ``exc`` came from losing the database rather than from one statement (a bad row,
    a constraint): the first stops a batch, the second fails one item."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure to answer a ping means the database is gone
        return True
    return False


def _sqlalchemy_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


@lru_cache(maxsize=4)
def _start_embedded(pgdata: Path) -> str:
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise DatabaseError("no DATABASE_URL set and the embedded server package 'pgserver' is not installed") from exc
    pgdata.mkdir(parents=True, exist_ok=True)
    # Unix sockets live in the data directory; their path is limited to ~107 bytes.
    if len(str(pgdata / ".s.PGSQL.5432")) > 100:
        raise DatabaseError(f"data directory path too long for a Postgres socket: {pgdata}; set MATCHER_DATA_DIR to a shorter path")
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return _sqlalchemy_url(settings.database_url)
    return _sqlalchemy_url(_start_embedded(settings.pgdata_dir.resolve()))


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs from this data directory."""
    import os

    pgdata = settings.pgdata_dir.resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    # pgserver runs Postgres as its own 'pgserver' user when we are root (Postgres refuses root);
    # its pg_ctl wrapper switches to that user.
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user="pgserver" if os.geteuid() == 0 else None)
    _start_embedded.cache_clear()
    _engine_for.cache_clear()
    return True


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True, future=True)

    @event.listens_for(engine, "connect")
    def _register_vector(dbapi_connection, _record) -> None:  # noqa: ANN001
        from pgvector.psycopg import register_vector

        try:
            register_vector(dbapi_connection)
        except Exception:  # noqa: BLE001 - extension not created yet (before the first migration)
            pass

    return engine


def get_engine(settings: Settings) -> Engine:
    return _engine_for(database_url(settings))


def ensure_vector_extension(engine: Engine) -> str:
    """Create pgvector if missing and return its version string."""
    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        version = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar_one()
    engine.dispose()  # new connections register the vector type
    return version


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])
