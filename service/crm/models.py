"""The transactional outbox towards the CRM, and statuses seen in the CRM."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

from service.columns import counter, defaults_to_now, identity_key, money

# What a CRM record's fields may hold to be stored (read-back skips a record that exceeds them).
INVOICE_NUMBER_LENGTH = 30
CRM_ID_LENGTH = 64
STATUS_LENGTH = 64
MODIFIED_LENGTH = 32


def _single_row_id() -> Any:
    """smallint PRIMARY KEY DEFAULT 1 (never a sequence): the table's CHECK keeps it the one row."""
    return Field(
        default=1,
        primary_key=True,
        sa_type=sa.SmallInteger,
        sa_column_kwargs={"autoincrement": False, "server_default": sa.text("1")},
    )


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        sa.CheckConstraint(
            "state IN ('pending','delivered','superseded','skipped','dead')",
            name="ck_outbox_state",
        ),
        sa.Index(
            "ix_outbox_pending",
            "next_attempt_at",
            "id",
            postgresql_where=sa.text("state = 'pending'"),
        ),
        sa.Index("ix_outbox_invoice", "invoice_number", "id"),
        # Dead letters are few among many delivered rows: listed and counted through this.
        sa.Index("ix_outbox_dead", "id", postgresql_where=sa.text("state = 'dead'")),
    )

    id: int | None = identity_key()
    invoice_number: str = Field(max_length=30)
    # {"status", "outstanding", "history_id"}: what the CRM should show after this change.
    payload: dict[str, Any] = Field(sa_type=pg.JSONB)
    source: str = Field(max_length=10)
    state: str = Field(max_length=12, sa_column_kwargs={"server_default": "pending"})
    # Attempts begun (one is counted when a dispatcher claims the message).
    attempts: int = counter()
    # When the message is due; while a dispatcher holds it (lease_token set), its lease's end.
    next_attempt_at: datetime = defaults_to_now()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = defaults_to_now()
    delivered_at: datetime | None = None
    # The claim of the dispatcher calling the CRM for it; an outcome is recorded only while
    # it is still there (docs/ARCHITECTURE.md, contract 5).
    lease_token: uuid.UUID | None = None


class CrmObservedStatus(SQLModel, table=True):
    __tablename__ = "crm_observed_statuses"

    value: str = Field(primary_key=True, max_length=STATUS_LENGTH)
    first_seen: datetime = defaults_to_now()
    last_seen: datetime = defaults_to_now()
    times_seen: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class CrmDispatcherState(SQLModel, table=True):
    """One row: what the dispatchers last learnt about the CRM, shared by every process.

    The API (readiness) and the workers run in different processes; this row is how a
    worker's "the CRM rejects our credentials" reaches /readyz.
    """

    __tablename__ = "crm_dispatcher_state"
    __table_args__ = (sa.CheckConstraint("id = 1", name="ck_crm_dispatcher_state_single_row"),)

    id: int = _single_row_id()
    # Set while deliveries are halted because the CRM refused our credentials.
    halted_reason: str | None = Field(default=None, sa_type=sa.Text)
    halted_at: datetime | None = None
    # The last failed call (network, 5xx, 429, rejected) and the last successful delivery.
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    updated_at: datetime = defaults_to_now()
    # Set while lookups find that the CRM ignores paging (a page answered twice), or that a
    # list does not end; cleared by a lookup that pages on normally.
    paging_problem: str | None = Field(default=None, sa_type=sa.Text)
    paging_problem_at: datetime | None = None


class CrmInvoiceView(SQLModel, table=True):
    """What the CRM last showed for an invoice: read back, or known from a delivery.

    Compared with `invoices` for the `crm_drift` report; kept apart from the mirror so that
    reading the CRM never touches what reconciliation owns.
    """

    __tablename__ = "crm_invoices"

    invoice_number: str = Field(primary_key=True, max_length=INVOICE_NUMBER_LENGTH)
    crm_id: str | None = Field(default=None, max_length=CRM_ID_LENGTH)
    status: str | None = Field(default=None, max_length=STATUS_LENGTH)
    # NULL when LEDGERLINK_OPENCRM_OUTSTANDING_FIELD is unset or the CRM's value is unreadable.
    outstanding: Decimal | None = money(None)
    # The CRM's modification time, as the CRM writes it.
    modified: str | None = Field(default=None, max_length=MODIFIED_LENGTH)
    # Since when the CRM has shown this (the row is rewritten only when something changes).
    seen_at: datetime = defaults_to_now()


class CrmReadbackState(SQLModel, table=True):
    """One row: where the periodic read-back of the CRM stands (its cursor and its health).

    Leased by the worker reading a page (lease_token, next_run_at = the lease's end), so one
    worker reads at a time and no transaction stays open while the CRM answers; the cursor
    moves in the same transaction as what the page taught us, while the lease is still ours.
    """

    __tablename__ = "crm_readback_state"
    __table_args__ = (sa.CheckConstraint("id = 1", name="ck_crm_readback_state_single_row"),)

    id: int = _single_row_id()
    next_run_at: datetime = defaults_to_now()
    # Set while a scan is under way; the scan resumes at (scan_day, page_start).
    scan_started_at: datetime | None = None
    # The modification day the scan filters on; NULL: every invoice.
    scan_day: date | None = None
    page_start: int = counter()
    # The latest modification time seen (the CRM's text), where the next scan starts from.
    last_modified: str | None = Field(default=None, max_length=MODIFIED_LENGTH)
    failures: int = counter()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    last_error_at: datetime | None = None
    last_completed_at: datetime | None = None
    lease_token: uuid.UUID | None = None
    # A digest of the record ids of the scan's last page: the same page again means the CRM
    # ignores limit_start.
    page_digest: str | None = Field(default=None, max_length=64)
    # Pages read by the scan under way (capped by LEDGERLINK_OPENCRM_MAX_PAGES).
    pages: int = counter()
    # Records that could not be stored (skipped): in the scan under way, in the last finished
    # one, and the last one's reason.
    scan_skipped: int = counter()
    skipped: int = counter()
    last_skipped: str | None = Field(default=None, sa_type=sa.Text)
    last_skipped_at: datetime | None = None
