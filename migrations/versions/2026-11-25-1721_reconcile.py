"""reconcile: resumable requested sync runs (cursor, heartbeat)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sync_runs", sa.Column("cursor", sa.String(length=30), nullable=True))
    op.add_column("sync_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_sync_runs_running",
        "sync_runs",
        ["heartbeat_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_sync_runs_running",
        table_name="sync_runs",
        postgresql_where=sa.text("status = 'running'"),
    )
    op.drop_column("sync_runs", "heartbeat_at")
    op.drop_column("sync_runs", "cursor")
