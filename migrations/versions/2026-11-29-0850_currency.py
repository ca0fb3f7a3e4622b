"""currency: postings and allocations in Sage's foreign currencies; invoice figures in the
invoice's currency with the base-currency figures beside them, and exchange adjustments

Every row already stored is in the base currency: its currency stays NULL, and the invoices'
base-currency figures start as copies of the figures they hold.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(14, 2)
POSTING_AMOUNTS = (
    "foreign_net_amount",
    "foreign_tax_amount",
    "foreign_gross_amount",
    "foreign_outstanding",
)
# (new column, the column it starts as a copy of, nullable)
INVOICE_BASE = (
    ("gross_base", "gross", False),
    ("sage_outstanding_base", "sage_outstanding", True),
    ("outstanding_base", "outstanding", False),
    ("computed_outstanding_base", "computed_outstanding", True),
    ("paid_base", "paid", False),
    ("discounted_base", "discounted", False),
    ("written_off_base", "written_off", False),
    ("credited_base", "credited", False),
)


def upgrade() -> None:
    op.add_column("postings", sa.Column("currency", sa.String(length=3), nullable=True))
    op.add_column("postings", sa.Column("exchange_rate", sa.Numeric(20, 10), nullable=True))
    for name in POSTING_AMOUNTS:
        op.add_column("postings", sa.Column(name, MONEY, nullable=True))
    op.add_column("allocations", sa.Column("foreign_amount", MONEY, nullable=True))

    op.add_column("invoices", sa.Column("currency", sa.String(length=3), nullable=True))
    for name, _, nullable in INVOICE_BASE:
        default = None if nullable else sa.text("0")
        op.add_column("invoices", sa.Column(name, MONEY, nullable=nullable, server_default=default))
    op.add_column(
        "invoices",
        sa.Column("exchange_adjustment", MONEY, nullable=False, server_default=sa.text("0")),
    )
    copies = ", ".join(f"{name} = {source}" for name, source, _ in INVOICE_BASE)
    op.execute(f"UPDATE invoices SET {copies}")


def downgrade() -> None:
    op.drop_column("invoices", "exchange_adjustment")
    for name, _, _ in reversed(INVOICE_BASE):
        op.drop_column("invoices", name)
    op.drop_column("invoices", "currency")
    op.drop_column("allocations", "foreign_amount")
    for name in reversed(POSTING_AMOUNTS):
        op.drop_column("postings", name)
    op.drop_column("postings", "exchange_rate")
    op.drop_column("postings", "currency")
