"""Sync runs and reconciliation reports on the wire (docs/API.md, "Sync runs", "Reports")."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.schemas import Money, RowModel

RunStatus = Literal["queued", "running", "succeeded", "failed"]
ReportKind = Literal["divergent", "conflicts", "mismatches", "crm_drift"]
InvoiceNumber = Annotated[str, Field(min_length=1, max_length=30)]
MAX_INVOICE_NUMBERS = 10_000


class SyncTrigger(BaseModel):
    """What to reconcile. `scope` picks the base set (the dirty backlog, or every invoice);
    `account_ref` and `invoice_numbers` narrow it."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["dirty", "all"] = "dirty"
    account_ref: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    invoice_numbers: (
        Annotated[list[InvoiceNumber], Field(min_length=1, max_length=MAX_INVOICE_NUMBERS)] | None
    ) = None
    dry_run: StrictBool = False


class SyncTriggered(BaseModel):
    run_id: uuid.UUID
    status: RunStatus


class RunCounts(RowModel):
    examined: int
    changed: int
    unchanged: int
    skipped_protected: int
    conflicts: int


class RunChange(RowModel):
    invoice_number: str
    from_status: str | None
    to_status: str
    from_outstanding: Money | None
    to_outstanding: Money | None


class SyncRunOut(BaseModel):
    run_id: uuid.UUID
    status: RunStatus
    trigger: str = Field(description="worker (automatic) or api (requested)")
    dry_run: bool
    scope: dict[str, object]
    actor: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    counts: RunCounts
    changes: list[RunChange] = Field(description="A page of the changes, by invoice number")
    next_changes_cursor: str | None = Field(
        description="Pass as changes_cursor for the next page; null on the last page"
    )


class ReportItem(BaseModel):
    invoice_number: str
    account_ref: str
    status: str
    derived_state: str | None
    expected_status: str | None = Field(description="The label of derived_state")
    protected: bool
    currency: str = Field(description="The invoice's currency (ISO 4217)", examples=["GBP"])
    gross: Money = Field(description="In the invoice's currency, like every unsuffixed figure")
    outstanding: Money
    computed_outstanding: Money | None = Field(description="From the allocations we hold")
    sage_outstanding: Money | None = Field(
        description="Sage's own outstanding (FOREIGN_OUTSTANDING), when sent"
    )
    paid: Money
    discounted: Money
    written_off: Money
    credited: Money
    gross_base: Money = Field(description="In the base currency, like every *_base figure")
    outstanding_base: Money
    computed_outstanding_base: Money | None
    sage_outstanding_base: Money | None = Field(description="Sage's OUTSTANDING, when sent")
    paid_base: Money
    discounted_base: Money
    written_off_base: Money
    credited_base: Money
    exchange_adjustment: Money = Field(
        description="Sage's automatic exchange revaluations (REVAL) allocated to the invoice, "
        "in the base currency: neither paid, credited nor written off"
    )
    mismatch: bool
    conflict: str | None
    warning: str | None
    duplicate_of: int | None = Field(description="The other SI carrying this invoice number")
    deleted: bool
    crm_status: str | None = Field(
        default=None, description="What OpenCRM showed when last read back or written"
    )
    crm_outstanding: Money | None = Field(
        default=None, description="OpenCRM's outstanding amount, when its field is configured"
    )
    crm_seen_at: datetime | None = Field(
        default=None, description="Since when OpenCRM has shown that, as far as ledgerlink saw"
    )
    reasons: list[str] = Field(
        description="status_differs, overpaid, duplicate, deleted, warning, conflict, mismatch, "
        "crm_drift"
    )


class Report(BaseModel):
    kind: ReportKind
    items: list[ReportItem]
    next_cursor: str | None
