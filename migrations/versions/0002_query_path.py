"""Query path: queries, detections, candidates, re-ranker models, review decisions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "rerankers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.Text, nullable=False),  # hist_gradient_boosting | formula
        sa.Column("feature_names", JSONB, nullable=False),
        sa.Column("model", sa.LargeBinary),  # joblib bytes; NULL for the fixed formula
        sa.Column("metrics", JSONB, nullable=False, server_default="{}"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        _created_at(),
    )
    op.create_index("rerankers_one_active", "rerankers", ["active"], unique=True, postgresql_where=sa.text("active"))
    op.create_table(
        "queries",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("image_path", sa.Text, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default="cli"),
        sa.Column("space_id", sa.Integer, sa.ForeignKey("embedding_spaces.id", ondelete="SET NULL")),
        sa.Column("reranker_version", sa.Text),
        sa.Column("timings", JSONB, nullable=False, server_default="{}"),
        _created_at(),
    )
    op.create_table(
        "detections",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("query_id", sa.BigInteger, sa.ForeignKey("queries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("box", JSONB, nullable=False),  # [x0, y0, x1, y1]
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("category", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("mask_png", sa.LargeBinary),
        sa.Column("cutout_path", sa.Text),
        sa.Column("mask_path", sa.Text),
        sa.Column("flags", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("fail_reason", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),  # pending | decided | superseded
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),  # optimistic lock for reviews
        _created_at(),
    )
    op.create_index("detections_status", "detections", ["status", "created_at"])
    op.create_table(
        "candidates",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("detection_id", sa.BigInteger, sa.ForeignKey("detections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("product_id", sa.BigInteger, sa.ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("features", JSONB, nullable=False),
        sa.Column("explanation", sa.Text, nullable=False, server_default=""),
        sa.UniqueConstraint("detection_id", "product_id"),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("detection_id", sa.BigInteger, sa.ForeignKey("detections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),  # approve | reject_all | wrong_object
        sa.Column("product_id", sa.BigInteger, sa.ForeignKey("products.id", ondelete="SET NULL")),
        sa.Column("note", sa.Text),
        sa.Column("reranker_version", sa.Text),
        _created_at(),
        sa.Column("undone_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("verdict IN ('approve', 'reject_all', 'wrong_object')", name="decisions_verdict"),
        sa.CheckConstraint("verdict <> 'approve' OR product_id IS NOT NULL", name="decisions_approve_has_product"),
    )
    op.create_index("decisions_detection", "decisions", ["detection_id"])


def downgrade() -> None:
    for table in ("decisions", "candidates", "detections", "queries", "rerankers"):
        op.drop_table(table)
