"""Invoice rules: reading invoices, and a person's edit of one invoice's status (the Global
Update is service/jobs/).

Protected = status in the ledger settings' protected_statuses (docs/FINANCE.md, "Writing off
with the API"). Moving an invoice from a protected to an unprotected status releases it: it
is marked dirty, so reconciliation recomputes it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service import cursor, db_errors
from service.errors import NotFound, ServiceUnavailable
from service.invoices import edits
from service.invoices import repository as repo
from service.invoices.filters import checked_filter, filter_context
from service.invoices.schemas import (
    InvoiceDetail,
    InvoiceFilter,
    InvoiceOut,
    InvoicePage,
    StatusEdit,
)
from service.ledger.settings import LedgerSettings
from service.metrics import STATUS_CHANGES
from service.picklist.service import ensure_allowed


@contextlib.asynccontextmanager
async def retryable_conflicts() -> AsyncIterator[None]:
    """A deadlock with a concurrent sync is nobody's fault: 503 + Retry-After, nothing stored."""
    try:
        yield
    except DBAPIError as exc:
        if db_errors.is_concurrent_change(exc):
            raise ServiceUnavailable(
                "the invoices were being changed concurrently; nothing was stored, retry",
                retry_after=1,
            ) from exc
        raise


# --- reads -----------------------------------------------------------------------------------


def invoice_out(row: Row[Any], ledger: LedgerSettings) -> InvoiceOut:
    return InvoiceOut.model_validate(_invoice_fields(row, ledger))


def _invoice_fields(row: Row[Any], ledger: LedgerSettings) -> dict[str, Any]:
    """The invoice row's columns, grouped as the response nests them, and what the settings
    decide: the currency of a base-currency invoice (NULL in the row), whether it is protected."""
    columns = row._mapping
    return {
        **columns,
        "currency": row.currency or ledger.base_currency,
        "protected": row.status in ledger.protected_statuses,
        "amounts": columns,
        "base": {**columns, "currency": ledger.base_currency},
    }


INVOICE_CSV_FIELDS = (
    "invoice_number",
    "account_ref",
    "invoice_date",
    "status",
    "derived_state",
    "protected",
    "gross",
    "paid",
    "discounted",
    "written_off",
    "credited",
    "outstanding",
    "conflict",
    "mismatch",
    "warning",
    "deleted",
    "sage_tran_number",
    "updated_at",
)


def invoice_csv_rows(items: list[InvoiceOut]) -> Iterator[list[object]]:
    for item in items:
        flat = {**item.model_dump(exclude={"amounts"}), **item.amounts.model_dump()}
        yield [flat[name] for name in INVOICE_CSV_FIELDS]


def _filters_fingerprint(f: InvoiceFilter) -> str:
    raw = f.model_dump_json(exclude_none=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def list_invoices(
    conn: AsyncConnection,
    ledger: LedgerSettings,
    filters: InvoiceFilter,
    *,
    limit: int,
    cursor_token: str | None,
) -> InvoicePage:
    filters = await checked_filter(conn, filters, loc="query")
    fingerprint = _filters_fingerprint(filters)
    after: str | None = None
    if cursor_token is not None:
        values = cursor.decode(cursor_token, param="cursor", fields={"after": str, "q": str})
        if values["q"] != fingerprint:
            raise cursor.mismatch("cursor")
        after = values["after"]
    rows = await repo.list_invoices(
        conn, filters, filter_context(ledger), after=after, limit=limit + 1
    )
    items = [invoice_out(row, ledger) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = cursor.encode({"after": items[-1].invoice_number, "q": fingerprint})
    return InvoicePage(items=items, next_cursor=next_cursor)


async def count_invoices(
    conn: AsyncConnection, ledger: LedgerSettings, filters: list[InvoiceFilter]
) -> list[int]:
    """How many invoices each filter selects (what the list would show, over all pages)."""
    checked = [await checked_filter(conn, f, loc="query") for f in filters]
    return await repo.count_each(conn, checked, filter_context(ledger))


async def status_counts(conn: AsyncConnection) -> list[tuple[str, int]]:
    """How many invoices carry each status."""
    return await repo.status_counts(conn)


async def invoice_detail(
    conn: AsyncConnection, ledger: LedgerSettings, invoice_number: str
) -> InvoiceDetail:
    row = await repo.get_invoice(conn, invoice_number)
    if row is None:
        raise NotFound(f"no invoice '{invoice_number}'")
    return InvoiceDetail.model_validate(
        {
            **_invoice_fields(row, ledger),
            "posting": await repo.si_posting(conn, row.sage_tran_number),
            "allocations": await repo.allocations(conn, row.sage_tran_number, ledger),
            "history": await repo.history(conn, invoice_number),
        }
    )


# --- a person's edit -------------------------------------------------------------------------


async def edit_status(
    conn: AsyncConnection,
    ledger: LedgerSettings,
    *,
    actor: str,
    invoice_number: str,
    edit: StatusEdit,
) -> InvoiceDetail:
    """Set one invoice's status by hand. Setting the current status again records nothing."""
    # The value first: from here a PUT that would remove it waits for this transaction.
    await ensure_allowed(conn, edit.status)
    current = await edits.lock_invoice(conn, invoice_number)
    if current is None:
        raise NotFound(f"no invoice '{invoice_number}'")
    if current.status != edit.status:
        protected = ledger.protected_statuses
        release = current.status in protected and edit.status not in protected
        await edits.write_manual_change(
            conn,
            invoice_number=invoice_number,
            from_status=current.status,
            to_status=edit.status,
            actor=actor,
            reason=edit.reason,
            release=release,
        )
        STATUS_CHANGES.labels("manual", edit.status).inc()
    return await invoice_detail(conn, ledger, invoice_number)
