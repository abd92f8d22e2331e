"""An index on the tasks' creation time: the admin console lists the newest tasks of every owner.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_created", "tasks", ["created"])


def downgrade() -> None:
    op.drop_index("ix_tasks_created", "tasks")
