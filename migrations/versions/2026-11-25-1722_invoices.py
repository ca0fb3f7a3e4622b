"""invoices feature: Global Update job counters, idempotency keys scoped by API key

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTERS = ("skipped", "skipped_protected", "attempts")


def upgrade() -> None:
    for name in _COUNTERS:
        op.add_column("jobs", sa.Column(name, sa.Integer(), server_default="0", nullable=False))
    op.drop_index("ix_jobs_idempotency_key", table_name="jobs")
    op.create_index("ix_jobs_idempotency_key", "jobs", ["actor", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_jobs_idempotency_key", table_name="jobs")
    # Keys were unique per API key only; they cannot all stay unique globally.
    op.execute("UPDATE jobs SET idempotency_key = NULL")
    op.create_index("ix_jobs_idempotency_key", "jobs", ["idempotency_key"], unique=True)
    for name in reversed(_COUNTERS):
        op.drop_column("jobs", name)
