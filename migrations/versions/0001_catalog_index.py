"""Catalog index: products, cutouts, embedding spaces, embeddings, index runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("sku", sa.Text, nullable=False, unique=True),
        sa.Column("title", sa.Text, nullable=False, server_default=""),
        sa.Column("category", sa.Text),
        sa.Column("attributes", JSONB, nullable=False, server_default="{}"),
        sa.Column("image_uri", sa.Text, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        _created_at(),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
    op.create_index("products_category", "products", ["category"])
    op.create_table(
        "cutouts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("product_id", sa.BigInteger, sa.ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
        sa.Column("segmenter_id", sa.Text, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("bbox", JSONB),
        sa.Column("mask_png", sa.LargeBinary, nullable=False),
        sa.Column("alpha_png", sa.LargeBinary),
        sa.Column("rgba_png", sa.LargeBinary),
        sa.Column("coverage", sa.Float, nullable=False),
        sa.Column("leakage_score", sa.Float, nullable=False),
        sa.Column("flags", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("fail_reason", sa.Text),
        sa.Column("dominant_colors", JSONB, nullable=False, server_default="[]"),
        _created_at(),
        sa.UniqueConstraint("product_id", "segmenter_id"),
    )
    op.create_table(
        "embedding_spaces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("embedder_id", sa.Text, nullable=False),
        sa.Column("segmenter_id", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="building"),
        sa.Column("index_name", sa.Text),
        _created_at(),
        sa.Column("activated_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('building', 'active', 'retired')", name="embedding_spaces_status"),
    )
    op.create_table(
        "embeddings",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("product_id", sa.BigInteger, sa.ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
        sa.Column("space_id", sa.Integer, sa.ForeignKey("embedding_spaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        # No fixed dimension: each space gets a partial HNSW index over vector::vector(dim).
        sa.Column("vector", Vector(), nullable=False),
        _created_at(),
        sa.UniqueConstraint("product_id", "space_id"),
        sa.CheckConstraint("vector_dims(vector) = dim", name="embeddings_dim_matches"),
    )
    op.create_table(
        "index_runs",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, server_default="index"),
        sa.Column("catalog", sa.Text, nullable=False),
        sa.Column("backend", sa.Text, nullable=False),
        sa.Column("space_id", sa.Integer, sa.ForeignKey("embedding_spaces.id", ondelete="SET NULL")),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.Column("counts", JSONB, nullable=False, server_default="{}"),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_s", sa.Float),
    )
    op.create_table(
        "index_failures",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("index_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("sku", sa.Text),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        _created_at(),
    )


def downgrade() -> None:
    for table in ("index_failures", "index_runs", "embeddings", "embedding_spaces", "cutouts", "products"):
        op.drop_table(table)
