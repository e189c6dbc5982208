"""Nightly reindex: a reference thumbnail per product for perceptual change checks,
and a per-item event log for every index run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Lossless, <= 256 px: what a new image is compared with when its bytes change.
    op.add_column("products", sa.Column("reference_png", sa.LargeBinary))
    op.create_table(
        "index_events",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("index_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),  # new | changed | reembedded | perceptually_equal | removed
        sa.Column("detail", JSONB, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("index_events_run", "index_events", ["run_id", "kind"])


def downgrade() -> None:
    op.drop_table("index_events")
    op.drop_column("products", "reference_png")
