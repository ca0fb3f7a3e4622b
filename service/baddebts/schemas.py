"""Bad debts on the wire: written-off invoices and whether they qualify for VAT relief."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field

from service.schemas import Money


class BadDebt(BaseModel):
    invoice_number: str
    account_ref: str
    status: str
    invoice_date: date
    due_date: date = Field(description="Invoice date + LEDGERLINK_BAD_DEBT_PAYMENT_TERM_DAYS")
    gross: Money
    net: Money | None = Field(description="From the SI; null when the SI is not held")
    vat: Money | None = Field(description="VAT charged on the invoice (the SI's tax amount)")
    written_off: Money = Field(description="Amount written off in Sage")
    written_off_on: date | None = Field(
        description="Date of the latest write-off credit allocated to the invoice"
    )
    days_since_invoice: int
    days_overdue: int = Field(description="Days past the due date on as_of (negative: not due)")
    relief_from: date = Field(description="Due date + six months: relief may be claimed from")
    qualifies: bool = Field(
        description="Written off in the accounts and more than six months past its due date"
    )
    vat_relief: Money | None = Field(
        description="VAT in the amount written off: written_off x vat / gross"
    )


class BadDebtTotals(BaseModel):
    invoices: int
    written_off: Money
    qualifying_invoices: int
    qualifying_written_off: Money
    qualifying_vat_relief: Money = Field(description="The sum to claim, over every page")


class BadDebtPage(BaseModel):
    as_of: date
    payment_term_days: int
    totals: BadDebtTotals
    items: list[BadDebt]
    next_cursor: str | None
