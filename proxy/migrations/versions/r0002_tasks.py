"""Async task records (proxy.task_table), so a task outlives the process that ran it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),  # Unix seconds, as TaskRecord keeps it
        sa.Column("body", sa.Text()),  # JSON
        sa.Column("error", sa.Text()),  # JSON
        sa.Column("error_status", sa.Integer()),
    )
    # The sweep deletes by expiry; a restart looks for unfinished tasks by status.
    op.create_index("ix_tasks_expires_at", "tasks", ["expires_at"])
    op.create_index("ix_tasks_status", "tasks", ["status"])


def downgrade() -> None:
    op.drop_index("ix_tasks_status", "tasks")
    op.drop_index("ix_tasks_expires_at", "tasks")
    op.drop_table("tasks")
