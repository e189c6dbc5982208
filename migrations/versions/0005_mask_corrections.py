"""Reviewed masks: every correction or verification of a detection's mask, kept as versioned training data.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mask_corrections",
        sa.Column("id", sa.BigInteger, primary_key=True),
        # the detection that carries this mask (a corrected mask supersedes the detection it fixed)
        sa.Column("detection_id", sa.BigInteger, sa.ForeignKey("detections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("corrected_detection_id", sa.BigInteger, sa.ForeignKey("detections.id", ondelete="SET NULL")),
        sa.Column("query_id", sa.BigInteger, sa.ForeignKey("queries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("previous_id", sa.BigInteger, sa.ForeignKey("mask_corrections.id", ondelete="SET NULL")),
        sa.Column("version", sa.Integer, nullable=False),  # 1 for the object's first reviewed mask, then +1
        sa.Column("method", sa.Text, nullable=False),  # corrected | verified
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("label", sa.Text),
        sa.Column("hints", JSONB, nullable=False, server_default="{}"),
        sa.Column("segmenter_id", sa.Text, nullable=False),
        sa.Column("flags", sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("mask_png", sa.LargeBinary, nullable=False),  # the mask itself: a data set never changes under you
        sa.Column("mask_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("method in ('corrected', 'verified')", name="mask_corrections_method"),
    )
    op.create_index("mask_corrections_detection", "mask_corrections", ["detection_id"])


def downgrade() -> None:
    op.drop_table("mask_corrections")
