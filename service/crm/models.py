"""The transactional outbox towards the CRM, and statuses seen in the CRM."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

from service.columns import counter, defaults_to_now, identity_key, money


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
    attempts: int = counter()
    next_attempt_at: datetime = defaults_to_now()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = defaults_to_now()
    delivered_at: datetime | None = None


class CrmObservedStatus(SQLModel, table=True):
    __tablename__ = "crm_observed_statuses"

    value: str = Field(primary_key=True, max_length=64)
    first_seen: datetime = defaults_to_now()
    last_seen: datetime = defaults_to_now()
    times_seen: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class CrmDispatcherState(SQLModel, table=True):
    """One row: what the dispatchers last learnt about OpenCRM, shared by every process.

    The API (readiness) and the workers run in different processes; this row is how a
    worker's "OpenCRM rejects our credentials" reaches /readyz.
    """

    __tablename__ = "crm_dispatcher_state"
    __table_args__ = (sa.CheckConstraint("id = 1", name="ck_crm_dispatcher_state_single_row"),)

    id: int = _single_row_id()
    # Set while deliveries are halted because OpenCRM refused our credentials.
    halted_reason: str | None = Field(default=None, sa_type=sa.Text)
    halted_at: datetime | None = None
    # The last failed call (network, 5xx, 429, rejected) and the last successful delivery.
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    updated_at: datetime = defaults_to_now()


class CrmInvoiceView(SQLModel, table=True):
    """What OpenCRM last showed for an invoice: read back, or known from a delivery.

    Compared with `invoices` for the `crm_drift` report; kept apart from the mirror so that
    reading the CRM never touches what reconciliation owns.
    """

    __tablename__ = "crm_invoices"

    invoice_number: str = Field(primary_key=True, max_length=30)
    crm_id: str | None = Field(default=None, max_length=64)
    status: str | None = Field(default=None, max_length=64)
    # NULL when LEDGERLINK_OPENCRM_OUTSTANDING_FIELD is unset or the CRM's value is unreadable.
    outstanding: Decimal | None = money(None)
    # The CRM's modification time, as the CRM writes it.
    modified: str | None = Field(default=None, max_length=32)
    # Since when the CRM has shown this (the row is rewritten only when something changes).
    seen_at: datetime = defaults_to_now()


class CrmReadbackState(SQLModel, table=True):
    """One row: where the periodic read-back of OpenCRM stands (its cursor and its health).

    Locked with FOR UPDATE SKIP LOCKED by the worker reading a page, so one worker reads at a
    time; the cursor moves in the same transaction as what the page taught us.
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
    last_modified: str | None = Field(default=None, max_length=32)
    failures: int = counter()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    last_error_at: datetime | None = None
    last_completed_at: datetime | None = None
