"""The overview's figures, each computed by the function the API uses for the same data, and
each with the console list that shows the invoices behind it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from service.console.forms import filter_query
from service.invoices import service as invoices
from service.invoices.schemas import InvoiceFilter
from service.ops.gauges import Backlog, backlog
from service.ops.readiness import ReadinessSources, readiness
from service.ops.schemas import Readiness
from service.reconcile import service as reconcile
from service.reconcile.runs import RunRow
from service.settings import Settings

# What needs a person, as list filters (the overview links to exactly these lists).
ATTENTION: tuple[tuple[str, str, InvoiceFilter], ...] = (
    (
        "unmarked_write_offs",
        "Written off in Sage, not marked written off",
        InvoiceFilter(written_off=True, protected=False),
    ),
    ("divergent", "Status differs from what Sage says", InvoiceFilter(divergent=True)),
    (
        "conflicts",
        "Conflicts on protected invoices",
        InvoiceFilter(conflict=True, protected=True),
    ),
    ("mismatches", "Sage's outstanding differs from the allocations", InvoiceFilter(mismatch=True)),
)
CRM_DRIFT_KIND = "crm_drift"
# The overview counts drift up to this many (shown as "1000+" past it).
CRM_DRIFT_COUNT_CAP = 1000


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    count: int
    # The invoice list's query string that shows the invoices counted.
    query: str


@dataclass(frozen=True)
class Overview:
    by_status: list[Figure]
    attention: list[Figure]
    backlog: Backlog
    crm_drift: int
    last_run: RunRow | None
    readiness: Readiness


async def overview(
    conn: AsyncConnection, settings: Settings, sources: ReadinessSources
) -> Overview:
    by_status = [
        Figure(status, status, count, filter_query(InvoiceFilter(status=[status])))
        for status, count in await invoices.status_counts(conn)
    ]
    counts = await invoices.count_invoices(conn, settings.ledger, [f for _, _, f in ATTENTION])
    attention = [
        Figure(key, label, count, filter_query(f))
        for (key, label, f), count in zip(ATTENTION, counts, strict=True)
    ]
    return Overview(
        by_status=by_status,
        attention=attention,
        backlog=await backlog(conn),
        crm_drift=await crm_drift_count(conn, settings),
        last_run=await reconcile.latest_run(conn),
        readiness=await readiness(sources),
    )


async def crm_drift_count(conn: AsyncConnection, settings: Settings) -> int:
    """How many invoices the crm_drift report lists, up to the cap (and one more past it)."""
    return await reconcile.report_count(
        conn, CRM_DRIFT_KIND, settings.ledger, cap=CRM_DRIFT_COUNT_CAP + 1
    )
