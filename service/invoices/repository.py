"""The SQL of reading invoices: pages and counts of the list, one invoice with its SI, its
allocations and its status history."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from service.invoices.filters import FilterContext, filter_sql
from service.invoices.models import Invoice
from service.invoices.schemas import InvoiceFilter
from service.ledger.classify import allocation_kind_sql
from service.ledger.settings import LedgerSettings

INVOICES: sa.Table = Invoice.metadata.tables["invoices"]


async def list_invoices(
    conn: AsyncConnection,
    criteria: InvoiceFilter,
    context: FilterContext,
    *,
    after: str | None,
    limit: int,
) -> list[Row[Any]]:
    """One page in invoice-number order, keyset after `after` (the key never changes, so
    paging under concurrent writes neither repeats nor skips an invoice)."""
    where, params = filter_sql(criteria, context)
    keyset = ""
    if after is not None:
        keyset = " AND i.invoice_number > CAST(:after AS text)"
        params["after"] = after
    params["limit"] = limit
    rows = await conn.execute(
        sa.text(
            f"SELECT i.* FROM invoices AS i WHERE true{where}{keyset} "
            "ORDER BY i.invoice_number LIMIT :limit"
        ),
        params,
    )
    return list(rows)


async def count_matching(
    conn: AsyncConnection, criteria: InvoiceFilter, context: FilterContext
) -> int:
    # A WHERE, not count_each's FILTER: an account's invoices are counted from its index.
    where, params = filter_sql(criteria, context)
    row = await conn.execute(
        sa.text(f"SELECT count(*) FROM invoices AS i WHERE true{where}"), params
    )
    return int(row.scalar_one())


async def count_each(
    conn: AsyncConnection, filters: list[InvoiceFilter], context: FilterContext
) -> list[int]:
    """How many invoices each filter selects, in one pass over the table."""
    if len(filters) == 1:
        return [await count_matching(conn, filters[0], context)]
    columns: list[str] = []
    params: dict[str, Any] = {}
    for n, criteria in enumerate(filters):
        where, own = filter_sql(criteria, context, prefix=f"f{n}_")
        columns.append(f"count(*) FILTER (WHERE true{where})")
        params.update(own)
    row = await conn.execute(sa.text(f"SELECT {', '.join(columns)} FROM invoices AS i"), params)
    return [int(value) for value in row.one()]


async def status_counts(conn: AsyncConnection) -> list[tuple[str, int]]:
    rows = await conn.execute(
        sa.text("SELECT status, count(*) FROM invoices GROUP BY status ORDER BY status")
    )
    return [(row[0], int(row[1])) for row in rows]


async def get_invoice(conn: AsyncConnection, invoice_number: str) -> Row[Any] | None:
    row = await conn.execute(sa.select(INVOICES).where(INVOICES.c.invoice_number == invoice_number))
    return row.first()


async def history(conn: AsyncConnection, invoice_number: str) -> list[Row[Any]]:
    rows = await conn.execute(
        sa.text(
            "SELECT at, from_status, to_status, from_outstanding, to_outstanding, source, actor, "
            "reason, run_id, job_id FROM status_history WHERE invoice_number = :n ORDER BY id"
        ),
        {"n": invoice_number},
    )
    return list(rows)


async def si_posting(conn: AsyncConnection, tran_number: int) -> Row[Any] | None:
    row = await conn.execute(
        sa.text(
            "SELECT tran_number, date, reference, details, nominal_code, net_amount AS net, "
            "tax_amount AS tax, gross_amount AS gross, outstanding AS sage_outstanding, deleted "
            "FROM postings WHERE tran_number = :t"
        ),
        {"t": tran_number},
    )
    return row.first()


async def allocations(
    conn: AsyncConnection, tran_number: int, ledger: LedgerSettings
) -> list[Row[Any]]:
    """Every allocation against the SI with its settling posting, and what it counts as:
    the reconcile's own classification (service.ledger.classify.allocation_kind_sql)."""
    kind, params = allocation_kind_sql("p.type", "p", ledger)
    rows = await conn.execute(
        sa.text(
            f"""
            SELECT a.posting_tran_number, p.type, p.date, p.reference, p.details,
                   p.nominal_code, a.amount, a.deleted OR coalesce(p.deleted, false) AS deleted,
                   {kind} AS kind
              FROM allocations AS a
              LEFT JOIN postings AS p ON p.tran_number = a.posting_tran_number
             WHERE a.invoice_tran_number = :t
             ORDER BY p.date NULLS LAST, a.posting_tran_number, a.seq
            """
        ),
        {**params, "t": tran_number},
    )
    return list(rows)
