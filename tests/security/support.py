"""Shared by the security tests: postings, signed deliveries, and what the database holds."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.ingest.factories import si as si
from tests.support.webhooks import signed_request

WEBHOOK = "/v1/webhooks/sage/postings"
# Every table a request could write to; "nothing stored" means none of them changed.
TABLES = (
    "postings",
    "allocations",
    "webhook_deliveries",
    "invoices",
    "status_history",
    "outbox",
    "sync_runs",
    "sync_run_changes",
    "jobs",
    "picklist_values",
)

_trans = itertools.count(1)


def next_tran() -> int:
    return next(_trans)


def settling(
    kind: str, tran: int, invoice_tran: int, amount: str, nominal: str = "1200"
) -> dict[str, Any]:
    """An SR/SA/SC/SD/SP posting allocating `amount` to the SI `invoice_tran`."""
    return {
        "tran_number": tran,
        "type": kind,
        "account_ref": "ACME01",
        "reference": "BACS",
        "date": "2026-02-01",
        "details": "Bad debt write off" if kind == "SC" else "Payment",
        "nominal_code": nominal,
        "net_amount": amount,
        "tax_amount": "0.00",
        "gross_amount": amount,
        "allocations": [{"invoice_tran_number": invoice_tran, "amount": amount}],
    }


async def deliver(
    client: httpx.AsyncClient, postings: list[dict[str, Any]], **signing: Any
) -> httpx.Response:
    body, headers = signed_request({"source": "security-tests", "postings": postings}, **signing)
    return await client.post(WEBHOOK, content=body, headers=headers)


async def seed_ledger(client: httpx.AsyncClient, invoices: int = 6) -> list[str]:
    """A few invoices: unpaid, part paid, paid, written off. Returns their numbers."""
    postings: list[dict[str, Any]] = []
    numbers = []
    for i in range(invoices):
        number = f"SEC-{i:04d}"
        numbers.append(number)
        tran = next_tran()
        postings.append(si(tran, number))
        if i % 4 == 1:
            postings.append(settling("SR", next_tran(), tran, "20.00"))
        elif i % 4 == 2:
            postings.append(settling("SR", next_tran(), tran, "120.00"))
        elif i % 4 == 3:
            postings.append(settling("SC", next_tran(), tran, "120.00", nominal="8100"))
    response = await deliver(client, postings)
    assert response.status_code == 202, response.text
    return numbers


async def snapshot(engine: AsyncEngine) -> dict[str, Any]:
    """Row count and an order-independent checksum of every table: equal means untouched."""
    out: dict[str, Any] = {}
    async with engine.connect() as conn:
        for table in TABLES:
            row = (
                await conn.execute(
                    sa.text(
                        f"SELECT count(*), coalesce(sum(hashtext(t::text)::numeric), 0) "
                        f"FROM {table} AS t"
                    )
                )
            ).one()
            out[table] = (int(row[0]), Decimal(row[1]))
    return out


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(sql), params)).scalar()
