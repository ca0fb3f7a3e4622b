"""Request and response bodies of invoices, the Global Update and its jobs."""

from __future__ import annotations

import datetime as dt
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from service.ledger.vocabulary import AllocationKind, DerivedState, HistorySource
from service.schemas import Money, RowModel

MAX_BULK_NUMBERS = 100_000


def storable(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates: refuse them here (422), not there."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(storable)]


def in_utc(value: datetime) -> datetime:
    """The same instant in UTC (no offset means UTC), refused when UTC has no such year: a
    date at the edge of the calendar with an offset (9999-12-31T23:59:59-12:00) is past it."""
    try:
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError("is outside years 1 to 9999 once converted to UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(in_utc)]
# Lengths first: checked on the string, they are counted (and reported) in characters.
Status = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(storable)]
InvoiceNumber = Annotated[
    str, StringConstraints(min_length=1, max_length=30), AfterValidator(storable)
]
AccountRef = Annotated[
    str, StringConstraints(min_length=1, max_length=32), AfterValidator(storable)
]
Reason = Annotated[str, StringConstraints(max_length=1000), AfterValidator(storable)]
Outcome = Literal["updated", "unchanged", "skipped", "skipped_protected", "not_found"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]


class Amounts(RowModel):
    paid: Money = Field(examples=["0.00"])
    discounted: Money = Field(examples=["0.00"])
    written_off: Money = Field(examples=["120.00"])
    credited: Money = Field(examples=["0.00"])


class BaseCurrencyAmounts(RowModel):
    """The invoice's figures in the company's base currency (what Sage's ledgers hold)."""

    # Read from the invoice row, whose columns for these figures end in _base.

    currency: str = Field(examples=["GBP"])
    gross: Money = Field(validation_alias="gross_base", examples=["1280.00"])
    outstanding: Money = Field(validation_alias="outstanding_base", examples=["0.00"])
    paid: Money = Field(validation_alias="paid_base", examples=["1250.00"])
    discounted: Money = Field(validation_alias="discounted_base", examples=["0.00"])
    written_off: Money = Field(validation_alias="written_off_base", examples=["0.00"])
    credited: Money = Field(validation_alias="credited_base", examples=["0.00"])
    exchange_adjustment: Money = Field(
        examples=["30.00"],
        description="Sage's automatic exchange revaluations (REVAL) allocated to the invoice: "
        "neither paid, credited nor written off",
    )


class InvoiceOut(RowModel):
    invoice_number: str
    account_ref: str
    invoice_date: date
    currency: str = Field(
        examples=["GBP"],
        description="ISO 4217; gross, outstanding and amounts are in this currency",
    )
    gross: Money = Field(examples=["120.00"])
    outstanding: Money = Field(examples=["0.00"])
    status: str
    derived_state: DerivedState | None = Field(description="NULL until first reconciled")
    protected: bool = Field(description="The status is one a sync never changes")
    amounts: Amounts
    base: BaseCurrencyAmounts
    sage_tran_number: int
    conflict: str | None = Field(description="Why Sage disagrees with a protected status")
    mismatch: bool = Field(description="Sage's OUTSTANDING disagrees with the allocations")
    warning: str | None
    deleted: bool = Field(description="The SI was deleted in Sage")
    updated_at: datetime


class HistoryEntry(RowModel):
    at: datetime
    from_status: str | None
    to_status: str
    from_outstanding: Money | None
    to_outstanding: Money | None
    source: HistorySource
    actor: str | None
    reason: str | None
    run_id: uuid.UUID | None
    job_id: uuid.UUID | None


class PostingOut(RowModel):
    """The Sage sales invoice (SI) this invoice mirrors."""

    tran_number: int
    date: dt.date
    reference: str
    details: str
    nominal_code: str
    net: Money
    tax: Money = Field(description="VAT")
    gross: Money
    sage_outstanding: Money | None = Field(description="Sage's own OUTSTANDING, when sent")
    deleted: bool


class AllocationOut(RowModel):
    """One allocation against the invoice, with the posting that settled it."""

    posting_tran_number: int
    type: str | None = Field(description="SR, SA, SD, SC, SP; null when not received yet")
    date: dt.date | None = Field(description="Date of the settling posting")
    reference: str | None
    details: str | None
    nominal_code: str | None
    amount: Money
    kind: AllocationKind = Field(
        description="How it counts: paid (SR, SA), refund (SP), discounted (SD), "
        "exchange_adjustment (an SC that is one of Sage's exchange revaluations), written_off "
        "(an SC the write-off rule classifies so), credited (any other SC)"
    )
    deleted: bool = Field(description="The allocation or its posting was deleted: not counted")


class InvoiceDetail(InvoiceOut):
    posting: PostingOut | None = Field(description="The SI in Sage")
    allocations: list[AllocationOut] = Field(description="What settled it, oldest first")
    history: list[HistoryEntry] = Field(description="Every status change, oldest first")


class InvoicePage(BaseModel):
    items: list[InvoiceOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


class InvoiceFilter(BaseModel):
    """Which invoices: the list's query parameters, and the Global Update's `filter`. Every
    criterion given must hold (AND); several values of one criterion are alternatives (OR).

    An empty list and an unknown key are refused, not dropped: a criterion dropped widens the
    selection, and a Global Update of a wider selection changes invoices nobody meant."""

    model_config = ConfigDict(extra="forbid")

    status: Annotated[list[Status] | None, Field(min_length=1, max_length=100)] = Field(
        default=None, description="Current status, one or more (any of); must be a known status"
    )
    account_ref: AccountRef | None = Field(default=None, description="Sage account")
    protected: bool | None = Field(default=None, description="Only (un)protected invoices")
    derived_state: Annotated[list[DerivedState] | None, Field(min_length=1, max_length=5)] = Field(
        default=None, description="What Sage says, one or more (any of)"
    )
    written_off: bool | None = Field(
        default=None, description="true: something written off (> 0); false: nothing"
    )
    conflict: bool | None = Field(
        default=None, description="true: Sage disagrees with the invoice's protected status"
    )
    divergent: bool | None = Field(
        default=None,
        description="true: unprotected, and the status differs from the label of what Sage "
        "says (e.g. written off in Sage, Paid in the CRM)",
    )
    mismatch: bool | None = Field(
        default=None, description="true: Sage's own outstanding disagrees with the allocations"
    )
    updated_since: UtcDatetime | None = Field(
        default=None, description="Changed at or after (ISO 8601; UTC if no offset)"
    )

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())


class InvoiceListQuery(InvoiceFilter):
    """The filter as GET /v1/invoices reads it from the query string, which carries the page's
    own parameters (limit, cursor, format) beside it: those are not the filter's to refuse.
    A name no parameter of the operation has is refused by service.query_parameters."""

    model_config = ConfigDict(extra="ignore")


class StatusEdit(BaseModel):
    """A person's edit of one invoice's status."""

    model_config = ConfigDict(extra="forbid")

    status: Status = Field(description="A value of the invoice status picklist")
    reason: Reason | None = None


class BulkStatusRequest(BaseModel):
    """The Global Update: set one status on a selection of invoices."""

    model_config = ConfigDict(extra="forbid")

    status: Status = Field(description="The new status; must be in the picklist")
    account_ref: AccountRef | None = Field(
        default=None, description="Select the invoices of this Sage account"
    )
    filter: InvoiceFilter | None = Field(
        default=None,
        description="Select the invoices matching this filter (the list's filters; AND "
        "account_ref when both); not together with invoice_numbers",
    )
    invoice_numbers: Annotated[
        list[InvoiceNumber] | None, Field(min_length=1, max_length=MAX_BULK_NUMBERS)
    ] = Field(default=None, description="Select these invoices (AND account_ref when both)")
    current_status_in: Annotated[list[Status] | None, Field(min_length=1, max_length=100)] = Field(
        default=None,
        description="Only invoices whose current status is one of these; naming a protected "
        "status here is the only way a Global Update changes a protected invoice",
    )
    only_settled: bool = Field(
        default=False, description="Only invoices with nothing outstanding (outstanding <= 0)"
    )
    dry_run: bool = Field(default=False, description="Report what would change; change nothing")
    reason: Reason | None = None

    @model_validator(mode="after")
    def _needs_a_selector(self) -> BulkStatusRequest:
        has_filter = self.filter is not None and not self.filter.is_empty()
        if self.account_ref is None and self.invoice_numbers is None and not has_filter:
            raise ValueError(
                "name the invoices to update: give account_ref and/or invoice_numbers, or a "
                "filter with at least one criterion (there is no update-everything)"
            )
        if self.filter is not None and self.invoice_numbers is not None:
            raise ValueError(
                "give either invoice_numbers or a filter, not both (add account_ref to narrow "
                "a filter)"
            )
        if (
            self.filter is not None
            and self.filter.account_ref is not None
            and self.account_ref is not None
            and self.filter.account_ref != self.account_ref
        ):
            # An invoice has one account: both together would select nothing, and which one
            # was meant cannot be told.
            raise ValueError(
                f"account_ref '{self.account_ref}' and filter.account_ref "
                f"'{self.filter.account_ref}' differ: give the account once"
            )
        return self


class JobProgress(RowModel):
    processed: int
    total: int


class JobResultOut(RowModel):
    invoice_number: str
    from_status: str | None
    to_status: str | None
    outcome: Outcome = Field(
        description="updated (or would be, in a dry run) | unchanged (already that status) | "
        "skipped (filtered out by account_ref, current_status_in or only_settled) | "
        "skipped_protected (protected and not named in current_status_in) | not_found"
    )


class JobOut(BaseModel):
    job_id: uuid.UUID
    kind: str
    status: JobStatus
    dry_run: bool
    to_status: str | None
    matched: int = Field(description="Selected and passing the filters")
    updated: int
    unchanged: int
    skipped: int
    skipped_protected: int
    not_found: int
    progress: JobProgress
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[JobResultOut]
    next_results_cursor: str | None = Field(
        description="Pass as `results_cursor` to GET /v1/jobs/{job_id} for the next results"
    )
