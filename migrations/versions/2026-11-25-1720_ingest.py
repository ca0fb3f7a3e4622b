"""ingest: one live invoice per SI (unique sage_tran_number among live invoices only)

An SI whose reference is edited moves to another invoice number; the invoice it leaves is kept,
deleted, with its history. The unique index therefore covers live invoices only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_invoices_sage_tran_number", table_name="invoices")
    op.create_index(
        "ix_invoices_sage_tran_number",
        "invoices",
        ["sage_tran_number"],
        unique=True,
        postgresql_where=sa.text("NOT deleted"),
    )


def downgrade() -> None:
    # Fails, as it should, if two deleted invoices share an SI: resolve those by hand first.
    op.drop_index(
        "ix_invoices_sage_tran_number",
        table_name="invoices",
        postgresql_where=sa.text("NOT deleted"),
    )
    op.create_index("ix_invoices_sage_tran_number", "invoices", ["sage_tran_number"], unique=True)
