"""Leases and checkpoints of unfinished async tasks (proxy.task_keeper): another process takes over a
task whose process stopped renewing its lease, and resumes it from its checkpoint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


# Unfinished tasks of a process that runs the previous version while this one migrates the shared database
# (a rolling deploy): that process cannot renew leases, so it gets this long to finish them before another
# process takes them over (without a checkpoint: failed as interrupted).
GRACE = 600.0


def upgrade() -> None:
    op.add_column("tasks", sa.Column("lease_until", sa.Float(), nullable=False, server_default="0"))  # Unix seconds
    op.add_column("tasks", sa.Column("checkpoint", sa.Text()))  # JSON (proxy.core.task_checkpoint)
    tasks = sa.table("tasks", sa.column("status", sa.Text()), sa.column("lease_until", sa.Float()))
    op.execute(tasks.update().where(tasks.c.status.in_(["pending", "running"])).values(lease_until=time.time() + GRACE))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:  # SQLite drops columns only by copying the table
        batch.drop_column("checkpoint")
        batch.drop_column("lease_until")
