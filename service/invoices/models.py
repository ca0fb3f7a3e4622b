"""The invoice mirror (what the CRM should show) and its status history."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.columns import defaults_to_false, defaults_to_now, identity_key, money
from service.ledger.vocabulary import HISTORY_SOURCES, sql_in

# The figures reconciliation derives start at zero, before the first pass.
ZERO = sa.text("0")


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
        sa.Index("ix_invoices_updated_at", "updated_at", "invoice_number"),
    )

    invoice_number: str = Field(primary_key=True, max_length=30)
    account_ref: str = Field(max_length=32)
    # The SI posting the invoice is mirrored from; with duplicates, the later one wins.
    sage_tran_number: int = Field(sa_type=sa.BigInteger)
    invoice_date: date
    gross: Decimal = money(server_default=ZERO)
    sage_outstanding: Decimal | None = money(None)
    # NULL = the base currency. gross, sage_outstanding and the figures below are in this
    # currency; the *_base columns are the same figures in the base currency.
    currency: str | None = Field(default=None, max_length=3)
    gross_base: Decimal = money(server_default=ZERO)
    sage_outstanding_base: Decimal | None = money(None)
    # Set by reconciliation.
    status: str = Field(max_length=64, sa_column_kwargs={"server_default": "Unpaid"})
    derived_state: str | None = Field(default=None, max_length=20)
    outstanding: Decimal = money(server_default=ZERO)
    computed_outstanding: Decimal | None = money(None)
    paid: Decimal = money(server_default=ZERO)
    discounted: Decimal = money(server_default=ZERO)
    written_off: Decimal = money(server_default=ZERO)
    credited: Decimal = money(server_default=ZERO)
    outstanding_base: Decimal = money(server_default=ZERO)
    computed_outstanding_base: Decimal | None = money(None)
    paid_base: Decimal = money(server_default=ZERO)
    discounted_base: Decimal = money(server_default=ZERO)
    written_off_base: Decimal = money(server_default=ZERO)
    credited_base: Decimal = money(server_default=ZERO)
    # Sage's automatic revaluations (REVAL) allocated to the invoice, in the base currency:
    # neither paid, credited nor written off.
    exchange_adjustment: Decimal = money(server_default=ZERO)
    # A protected invoice whose postings disagree with its status: listed for a human.
    conflict: str | None = Field(default=None, sa_type=sa.Text)
    # Sage's OUTSTANDING disagrees with the allocations we hold.
    mismatch: bool = defaults_to_false()
    # Another SI carries the same reference (invoice number).
    duplicate_of: int | None = Field(default=None, sa_type=sa.BigInteger)
    # The derived label is missing from the picklist; the SageLink label was written instead.
    warning: str | None = Field(default=None, sa_type=sa.Text)
    deleted: bool = defaults_to_false()
    crm_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = defaults_to_now()
    updated_at: datetime = defaults_to_now()


class DirtyInvoice(SQLModel, table=True):
    """The reconcile queue: an invoice whose figures may have changed, and since when.

    Kept apart from the invoice row: marking an invoice dirty inserts one narrow row here
    instead of writing a new version of the invoice row and every one of its indexes, and a
    reconcile deletes it instead of rewriting the invoice when nothing else changed. The
    invoice row's lock stays the mutex between ingest and the worker (docs/ARCHITECTURE.md,
    contract 1); this row only says that work is waiting.
    """

    __tablename__ = "dirty_invoices"
    __table_args__ = (sa.Index("ix_dirty_invoices_since", "since"),)

    # No foreign key: rows are inserted only for invoices the inserting statement has locked
    # or written, and invoices are never deleted (only marked).
    invoice_number: str = Field(primary_key=True, max_length=30)
    since: datetime = defaults_to_now()


class StatusHistory(SQLModel, table=True):
    __tablename__ = "status_history"
    __table_args__ = (
        sa.CheckConstraint(sql_in("source", HISTORY_SOURCES), name="ck_status_history_source"),
        sa.Index("ix_status_history_invoice", "invoice_number", "id"),
    )

    id: int | None = identity_key()
    # No foreign key: history is written only in the statement that updates the invoice, and
    # invoices are never deleted (only marked), so a per-row check would guard nothing, at a
    # cost to every Global Update.
    invoice_number: str = Field(max_length=30)
    at: datetime = defaults_to_now()
    from_status: str | None = Field(default=None, max_length=64)
    to_status: str = Field(max_length=64)
    from_outstanding: Decimal | None = money(None)
    to_outstanding: Decimal | None = money(None)
    source: str = Field(max_length=10)
    actor: str | None = Field(default=None, max_length=100)
    reason: str | None = Field(default=None, sa_type=sa.Text)
    run_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
