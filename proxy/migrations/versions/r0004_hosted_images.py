"""The images the proxy hosts for a request (`response_format: url`), by name, and when they expire: the
ledger says where a generation's images can still be fetched.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("generations", sa.Column("image_ids", sa.Text()))  # space-separated names under /images/
    op.add_column("generations", sa.Column("images_expire_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:  # SQLite drops columns only by copying the table
        batch.drop_column("images_expire_at")
        batch.drop_column("image_ids")
