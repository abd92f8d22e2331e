"""The ledger's first table: one row per image request.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "generations",
        # SQLite autoincrements only an INTEGER primary key; PostgreSQL gets a BIGINT identity.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("key_name", sa.Text(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.Column("upstream_ms", sa.Float(), nullable=False),
        sa.Column("model", sa.Text()),
        sa.Column("rule", sa.Text()),
        sa.Column("upstream_model", sa.Text()),
        sa.Column("channel", sa.Text()),
        sa.Column("attempts", sa.Integer()),
        sa.Column("n", sa.Integer()),
        sa.Column("size", sa.Text()),
        sa.Column("quality", sa.Text()),
        sa.Column("output_format", sa.Text()),
        sa.Column("error_type", sa.Text()),
        sa.Column("error_code", sa.Text()),
        sa.Column("input_tokens", sa.BigInteger()),
        sa.Column("output_tokens", sa.BigInteger()),
        sa.Column("total_tokens", sa.BigInteger()),
        sa.Column("cost_micro_usd", sa.BigInteger()),
        sa.Column("task_id", sa.Text()),
        sa.Column("idempotency_key", sa.Text()),
        sa.Column("prompt", sa.Text()),
        sa.Column("prompt_sha256", sa.Text()),
    )
    op.create_index("ix_generations_at", "generations", ["at"])
    op.create_index("ix_generations_key_name_at", "generations", ["key_name", "at"])


def downgrade() -> None:
    op.drop_index("ix_generations_key_name_at", "generations")
    op.drop_index("ix_generations_at", "generations")
    op.drop_table("generations")
