"""Reviewer accounts (argon2 password hashes) and a log of sign-in attempts for per-name rate limits.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviewer_accounts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),  # argon2id, salt and parameters included
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    # "Alice" and "alice" are one account: decisions are attributed by name.
    op.create_index("reviewer_accounts_name", "reviewer_accounts", [sa.text("lower(name)")], unique=True)
    op.create_table(
        "sign_in_attempts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),  # as typed (lower-cased), known account or not
        sa.Column("succeeded", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("sign_in_attempts_name_time", "sign_in_attempts", ["name", "created_at"])


def downgrade() -> None:
    op.drop_table("sign_in_attempts")
    op.drop_table("reviewer_accounts")
