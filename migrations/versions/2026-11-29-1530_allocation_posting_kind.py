"""allocations carry their posting's type and deleted flag

Reconciliation read the settling posting of every allocation (an index lookup each) for its
type and deleted flag; the allocation now carries both, copied by the statement that stores
the posting, and only a credit's posting is still read (to classify it). Existing allocations
are filled in from their postings.

Revision ID: 0003_allocation_posting_kind
Revises: 0002_dirty_queue
Create Date: 2026-11-29 15:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_allocation_posting_kind"
down_revision: str | None = "0002_dirty_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("allocations", sa.Column("posting_type", sa.String(length=2), nullable=True))
    op.add_column(
        "allocations",
        sa.Column("posting_deleted", sa.Boolean(), server_default="false", nullable=False),
    )
    op.execute(
        "UPDATE allocations AS a SET posting_type = p.type, posting_deleted = p.deleted "
        "FROM postings AS p WHERE p.tran_number = a.posting_tran_number"
    )
    # An allocation whose posting is missing never counted (the reconcile joined postings);
    # marked deleted with its posting, it still does not.
    op.execute(
        "UPDATE allocations SET posting_type = 'SI', posting_deleted = true "
        "WHERE posting_type IS NULL"
    )
    op.alter_column("allocations", "posting_type", nullable=False)


def downgrade() -> None:
    op.drop_column("allocations", "posting_deleted")
    op.drop_column("allocations", "posting_type")
