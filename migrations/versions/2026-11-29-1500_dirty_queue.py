"""dirty queue: the invoices waiting for reconciliation move from a column to a table

`invoices.dirty_since` (with its partial index) made every mark a new version of the invoice
row and of all its indexes, and every reconcile another; `dirty_invoices` holds one narrow row
per waiting invoice instead. `invoices.reconciled_at` goes too: nothing read it, and keeping it
current would rewrite every reconciled invoice even when nothing about it changed.

Invoices dirty at the upgrade keep their place in the queue (and their age); a downgrade
puts them back on the invoice row.

Revision ID: 0002_dirty_queue
Revises: 0001_initial
Create Date: 2026-11-29 15:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_dirty_queue"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dirty_invoices",
        sa.Column("invoice_number", sa.String(length=30), nullable=False),
        sa.Column(
            "since", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("invoice_number"),
    )
    op.create_index("ix_dirty_invoices_since", "dirty_invoices", ["since"], unique=False)
    op.execute(
        "INSERT INTO dirty_invoices (invoice_number, since) "
        "SELECT invoice_number, dirty_since FROM invoices WHERE dirty_since IS NOT NULL"
    )
    op.drop_index("ix_invoices_dirty", table_name="invoices")
    op.drop_column("invoices", "dirty_since")
    op.drop_column("invoices", "reconciled_at")


def downgrade() -> None:
    op.add_column("invoices", sa.Column("reconciled_at", sa.DateTime(timezone=True)))
    op.add_column("invoices", sa.Column("dirty_since", sa.DateTime(timezone=True)))
    op.execute(
        "UPDATE invoices AS i SET dirty_since = d.since "
        "FROM dirty_invoices AS d WHERE d.invoice_number = i.invoice_number"
    )
    op.create_index(
        "ix_invoices_dirty",
        "invoices",
        ["dirty_since"],
        unique=False,
        postgresql_where=sa.text("dirty_since IS NOT NULL"),
    )
    op.drop_table("dirty_invoices")
