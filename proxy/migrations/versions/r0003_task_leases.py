"""Leases and checkpoints of unfinished async tasks (proxy.task_keeper): another process takes over a
task whose process stopped renewing its lease, and resumes it from its checkpoint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Unix seconds; 0 for the records written before leases: their process is gone, so they are orphans.
    op.add_column("tasks", sa.Column("lease_until", sa.Float(), nullable=False, server_default="0"))
    op.add_column("tasks", sa.Column("checkpoint", sa.Text()))  # JSON (proxy.core.task_checkpoint)


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:  # SQLite drops columns only by copying the table
        batch.drop_column("checkpoint")
        batch.drop_column("lease_until")
