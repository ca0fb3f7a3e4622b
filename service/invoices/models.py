"""The invoice mirror (what the CRM should show) and its status history."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

MONEY = sa.Numeric(14, 2)
ZERO = sa.text("0")


def _money(nullable: bool = False) -> sa.Column[Decimal]:
    return sa.Column(MONEY, nullable=nullable, server_default=None if nullable else ZERO)


class Invoice(SQLModel, table=True):
    __tablename__ = "invoices"
    __table_args__ = (
        sa.Index("ix_invoices_account_ref", "account_ref", "invoice_number"),
        sa.Index("ix_invoices_status", "status", "invoice_number"),
        # Live invoices only: ingest lets a deleted invoice keep the SI it came from while
        # that SI (its reference edited) now feeds another invoice number.
        sa.Index(
            "ix_invoices_sage_tran_number",
            "sage_tran_number",
            unique=True,
            postgresql_where=sa.text("NOT deleted"),
        ),
        sa.Index(
            "ix_invoices_dirty",
            "dirty_since",
            postgresql_where=sa.text("dirty_since IS NOT NULL"),
        ),
        sa.Index("ix_invoices_updated_at", "updated_at", "invoice_number"),
    )

    invoice_number: str = Field(sa_column=sa.Column(sa.String(30), primary_key=True))
    account_ref: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    # The SI posting the invoice is mirrored from; with duplicates, the later one wins.
    sage_tran_number: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    invoice_date: date = Field(sa_column=sa.Column(sa.Date, nullable=False))
    gross: Decimal = Field(sa_column=_money())
    sage_outstanding: Decimal | None = Field(default=None, sa_column=_money(nullable=True))
    # NULL = the base currency. gross, sage_outstanding and the figures below are in this
    # currency; the *_base columns are the same figures in the base currency.
    currency: str | None = Field(default=None, sa_column=sa.Column(sa.String(3)))
    gross_base: Decimal = Field(sa_column=_money())
    sage_outstanding_base: Decimal | None = Field(default=None, sa_column=_money(nullable=True))
    # Set by reconciliation.
    status: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, server_default="Unpaid"))
    derived_state: str | None = Field(default=None, sa_column=sa.Column(sa.String(20)))
    outstanding: Decimal = Field(sa_column=_money())
    computed_outstanding: Decimal | None = Field(default=None, sa_column=_money(nullable=True))
    paid: Decimal = Field(sa_column=_money())
    discounted: Decimal = Field(sa_column=_money())
    written_off: Decimal = Field(sa_column=_money())
    credited: Decimal = Field(sa_column=_money())
    outstanding_base: Decimal = Field(sa_column=_money())
    computed_outstanding_base: Decimal | None = Field(default=None, sa_column=_money(nullable=True))
    paid_base: Decimal = Field(sa_column=_money())
    discounted_base: Decimal = Field(sa_column=_money())
    written_off_base: Decimal = Field(sa_column=_money())
    credited_base: Decimal = Field(sa_column=_money())
    # Sage's automatic revaluations (REVAL) allocated to the invoice, in the base currency:
    # neither paid, credited nor written off.
    exchange_adjustment: Decimal = Field(sa_column=_money())
    # A protected invoice whose postings disagree with its status: listed for a human.
    conflict: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    # Sage's OUTSTANDING disagrees with the allocations we hold.
    mismatch: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false"))
    # Another SI carries the same reference (invoice number).
    duplicate_of: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    # The derived label is missing from the picklist; the SageLink label was written instead.
    warning: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    deleted: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false"))
    crm_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    dirty_since: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    reconciled_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    created_at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    updated_at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )


class StatusHistory(SQLModel, table=True):
    __tablename__ = "status_history"
    __table_args__ = (
        sa.CheckConstraint(
            "source IN ('sync','manual','bulk','crm')", name="ck_status_history_source"
        ),
        sa.Index("ix_status_history_invoice", "invoice_number", "id"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    # No foreign key: history is written only in the statement that updates the invoice, and
    # invoices are never deleted (only marked); the per-row check was a tenth of a Global Update.
    invoice_number: str = Field(
        sa_column=sa.Column(
            sa.String(30),
            nullable=False,
        )
    )
    at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    from_status: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    to_status: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    from_outstanding: Decimal | None = Field(default=None, sa_column=_money(nullable=True))
    to_outstanding: Decimal | None = Field(default=None, sa_column=_money(nullable=True))
    source: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    actor: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    run_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(pg.UUID(as_uuid=True)))
    job_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(pg.UUID(as_uuid=True)))
