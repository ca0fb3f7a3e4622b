"""CRM work is leased, not held in an open transaction; read-back reports what it skips

The dispatcher and the read-back used to keep a transaction open (rows locked FOR UPDATE)
while they waited on OpenCRM, however long it took. They now lease what they claim: a short
transaction stamps the outbox messages (or the read-back cursor) with a lease token and makes
them due again only when the lease runs out (`next_attempt_at`, `next_run_at`), then commits;
the outcome is recorded in a second short transaction, only while the token is still there.
A killed worker's lease simply runs out.

The read-back cursor also remembers the last page it read (a digest of its record ids: a CRM
answering the same page again ignores paging), how many pages the scan has read, and the
records it skipped; the dispatcher state remembers a CRM that ignores paging.

Every column is new and nullable or defaulted: existing rows keep their meaning (no lease,
nothing skipped). Downgrading drops them; a message leased at that moment keeps the lease's
end as its next attempt, and is delivered then.

Revision ID: 0005_crm_leases
Revises: 0004_console_sessions
Create Date: 2026-12-08 11:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_crm_leases"
down_revision: str | None = "0004_console_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), server_default="0", nullable=False)


def upgrade() -> None:
    op.add_column("outbox", sa.Column("lease_token", sa.UUID(), nullable=True))
    op.add_column("crm_readback_state", sa.Column("lease_token", sa.UUID(), nullable=True))
    op.add_column(
        "crm_readback_state", sa.Column("page_digest", sa.String(length=64), nullable=True)
    )
    op.add_column("crm_readback_state", _count("pages"))
    op.add_column("crm_readback_state", _count("scan_skipped"))
    op.add_column("crm_readback_state", _count("skipped"))
    op.add_column("crm_readback_state", sa.Column("last_skipped", sa.Text(), nullable=True))
    op.add_column(
        "crm_readback_state",
        sa.Column("last_skipped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("crm_dispatcher_state", sa.Column("paging_problem", sa.Text(), nullable=True))
    op.add_column(
        "crm_dispatcher_state",
        sa.Column("paging_problem_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("crm_dispatcher_state", "paging_problem_at")
    op.drop_column("crm_dispatcher_state", "paging_problem")
    for column in (
        "last_skipped_at",
        "last_skipped",
        "skipped",
        "scan_skipped",
        "pages",
        "page_digest",
        "lease_token",
    ):
        op.drop_column("crm_readback_state", column)
    op.drop_column("outbox", "lease_token")
