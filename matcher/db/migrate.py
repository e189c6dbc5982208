"""Run the Alembic migrations from code (``matcher db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect

from .engine import ensure_vector_extension

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to ``revision``; returns the pgvector version in use.

    Every command upgrades on start, so several may do it at once on a fresh database: a Postgres
    advisory lock makes them take turns (the later ones find the schema current and do nothing)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from .repository import release_migration_lock, wait_for_migration_lock

    # The lock's own unpooled connection: it is really closed afterwards, whatever happens to ``engine``'s
    # pool meanwhile (a pooled one could outlive a dispose() and keep the database busy).
    lock_engine = create_engine(engine.url, poolclass=NullPool)
    try:
        with lock_engine.connect() as lock_connection:
            wait_for_migration_lock(lock_connection)
            try:
                version = ensure_vector_extension(engine)
                command.upgrade(alembic_config(engine.url.render_as_string(hide_password=False)), revision)
            finally:
                release_migration_lock(lock_connection)
                lock_connection.commit()
    finally:
        lock_engine.dispose()
    engine.dispose()
    return version


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
