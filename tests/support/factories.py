"""Test data, one definition of each kind, made the way the service makes it.

Sage postings are built in the wire form the exporter sends (`Posting`, JSON-ready), and go in
through the service's own paths: `deliver` signs them and POSTs them to the webhook, `load`
stores them with `ingest.repository.store` in one transaction, as the webhook does. Rows the
service writes only after a history of its own (an invoice already reconciled to some status,
an outbox message in some state) are written by `add_invoice`, `add_many` and `add_message`
with the columns the service would write. `reconcile` runs the worker's pass; `bulk_update`
and `set_status` are a person's Global Update and edit. Reading back is tests/support/queries.py.

Invoice and outbox rows are written by one statement each here, and postings go in through
`deliver` or `load`; tests/support/queries.py reads them back the same way. So a tenant (the
next issue's companies) is one keyword argument of each of these functions, defaulting to the
tests' company, and a test that does not care which company it is in does not change.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ingest.repository import store
from service.ingest.schemas import PostingIn
from service.reconcile import tasks
from service.settings import Settings
from tests.support.keys import WRITE_KEY, auth
from tests.support.webhooks import signed_request

WEBHOOK = "/v1/webhooks/sage/postings"
BULK_STATUS = "/v1/invoices/bulk-status"

# A posting as the exporter sends it (one element of the webhook's `postings`).
Posting = dict[str, Any]
# An allocation to the SI with that tran_number, of that amount: a pair, or `allocation(...)`
# for a deleted or foreign-currency one.
Allocation = tuple[int, str] | dict[str, Any]

ACCOUNT = "ACME01"
DAY = "2026-10-01"
SALES_NOMINAL = "4000"
BANK_NOMINAL = "1200"
# What the write-off wizard puts on its credit notes (docs/EXPORTER.md, "What Sage keeps"):
# `settle(..., "SC", ..., **WRITE_OFF)`.
WRITE_OFF: dict[str, str] = {"nominal": "8100", "details": "Bad Debt Write Off"}


def allocation(
    invoice_tran: int, amount: str, *, deleted: bool = False, foreign_amount: str | None = None
) -> dict[str, Any]:
    """One AUDIT_USAGE row seen from the settling side: `amount` of the SI `invoice_tran`
    (`foreign_amount` in the invoice's currency, for a foreign-currency one)."""
    out: dict[str, Any] = {"invoice_tran_number": invoice_tran, "amount": amount}
    if deleted:
        out["deleted"] = True
    if foreign_amount is not None:
        out["foreign_amount"] = foreign_amount
    return out


def _allocations(allocations: Sequence[Allocation]) -> list[dict[str, Any]]:
    return [a if isinstance(a, dict) else allocation(*a) for a in allocations]


def posting(
    tran: int,
    type_: str,
    gross: str,
    *,
    reference: str = "",
    account: str = ACCOUNT,
    day: str = DAY,
    details: str = "",
    nominal: str = BANK_NOMINAL,
    tax: str = "0.00",
    outstanding: str | None = None,
    deleted: bool = False,
    allocations: Sequence[Allocation] = (),
    **fields: Any,
) -> Posting:
    """One Sage transaction of `type_` for `gross` (of which `tax` is VAT). `fields` are
    further wire fields as the exporter names them (`currency`, `foreign_gross_amount`, ...;
    see `in_currency`), or a field to leave out as `name=None`."""
    out: Posting = {
        "tran_number": tran,
        "type": type_,
        "account_ref": account,
        "reference": reference,
        "date": day,
        "details": details,
        "nominal_code": nominal,
        "net_amount": str(Decimal(gross) - Decimal(tax)),
        "tax_amount": tax,
        "gross_amount": gross,
    }
    if outstanding is not None:
        out["outstanding"] = outstanding
    if deleted:
        out["deleted"] = True
    if allocations:
        out["allocations"] = _allocations(allocations)
    out.update(fields)
    return {name: value for name, value in out.items() if value is not None}


def si(
    tran: int,
    reference: str,
    gross: str = "120.00",
    *,
    details: str = "Consulting",
    nominal: str = SALES_NOMINAL,
    **rest: Any,
) -> Posting:
    """A sales invoice: `reference` is the invoice number, `gross` what is owed."""
    return posting(tran, "SI", gross, reference=reference, details=details, nominal=nominal, **rest)


def settle(
    tran: int,
    type_: str,
    allocations: Sequence[Allocation],
    *,
    gross: str | None = None,
    **rest: Any,
) -> Posting:
    """A settling posting (SR/SA/SD/SC/SP) allocated to invoices by their SI tran_number; its
    gross is what it allocates unless given."""
    total = sum((Decimal(a["amount"]) for a in _allocations(allocations)), Decimal("0.00"))
    return posting(
        tran, type_, str(total) if gross is None else gross, allocations=allocations, **rest
    )


def in_currency(
    amount: str,
    *,
    currency: str = "USD",
    rate: str | None = None,
    outstanding: str | None = None,
    tax: str = "0.00",
) -> dict[str, Any]:
    """The `fields` of a posting in a foreign currency: `amount` gross in `currency` (at
    `rate` of it to the pound, when Sage's FOREIGN_RATE is sent); `outstanding` Sage's
    FOREIGN_OUTSTANDING."""
    out: dict[str, Any] = {"currency": currency}
    if rate is not None:
        out["exchange_rate"] = rate
    out |= {
        "foreign_net_amount": str(Decimal(amount) - Decimal(tax)),
        "foreign_tax_amount": tax,
        "foreign_gross_amount": amount,
    }
    if outstanding is not None:
        out["foreign_outstanding"] = outstanding
    return out


def parsed(*postings: Posting | PostingIn) -> list[PostingIn]:
    """The postings as the webhook hands them to `ingest.repository.store`."""
    return [p if isinstance(p, PostingIn) else PostingIn.model_validate(p) for p in postings]


async def deliver(
    client: httpx.AsyncClient, *postings: Posting, source: str = "tests", **signing: Any
) -> httpx.Response:
    """The postings as one signed delivery to the webhook (`signing`: `signed_request`'s)."""
    body, headers = signed_request({"source": source, "postings": list(postings)}, **signing)
    return await client.post(WEBHOOK, content=body, headers=headers)


async def load(engine: AsyncEngine, settings: Settings, *postings: Posting | PostingIn) -> None:
    """Store the postings as one accepted delivery does, in one transaction (PostingIn as the
    property test draws them)."""
    async with engine.begin() as conn:
        await store(conn, parsed(*postings), event_id=f"test-{uuid.uuid4().hex}", settings=settings)


async def reconcile(engine: AsyncEngine, settings: Settings) -> int:
    """Reconcile every dirty invoice, as the worker does; how many were examined."""
    return await tasks.reconcile_all_dirty(engine, settings)


INVOICE_DAY = date(2026, 1, 15)


class _SageTranNumbers:
    """sage_tran_number of the invoices written as rows: unique, and clear of the postings
    tests send."""

    def __init__(self, first: int) -> None:
        self._next = first

    def take(self, count: int = 1) -> int:
        """The first of `count` consecutive numbers no invoice has had."""
        first, self._next = self._next, self._next + count
        return first


_sage_trans = _SageTranNumbers(1_000_001)


async def add_invoice(
    engine: AsyncEngine,
    invoice_number: str,
    *,
    account_ref: str = ACCOUNT,
    status: str = "Unpaid",
    gross: str = "120.00",
    outstanding: str | None = None,
    paid: str = "0.00",
    written_off: str = "0.00",
    derived_state: str | None = None,
    conflict: str | None = None,
    crm_id: str | None = None,
) -> None:
    """An invoice row as reconciliation leaves it (`outstanding` defaults to `gross`)."""
    values: dict[str, Any] = {
        "invoice_number": invoice_number,
        "account_ref": account_ref,
        "sage_tran_number": _sage_trans.take(),
        "invoice_date": INVOICE_DAY,
        "gross": Decimal(gross),
        "outstanding": Decimal(gross if outstanding is None else outstanding),
        "paid": Decimal(paid),
        "written_off": Decimal(written_off),
        "status": status,
        "derived_state": derived_state,
        "conflict": conflict,
        "crm_id": crm_id,
    }
    columns = ", ".join(values)
    placeholders = ", ".join(f":{c}" for c in values)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(f"INSERT INTO invoices ({columns}) VALUES ({placeholders})"), values
        )


async def add_many(
    engine: AsyncEngine,
    count: int,
    *,
    account_ref: str = "BIG01",
    prefix: str = "B",
    status: str = "Paid",
    outstanding: str = "0.00",
) -> None:
    """`count` invoices of 100.00, derived paid, in one statement: B0000001, B0000002, ..."""
    first = _sage_trans.take(count)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                """
                INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date,
                                      gross, outstanding, paid, status, derived_state)
                SELECT :prefix || lpad(g::text, 7, '0'), :account_ref, :first + g - 1, :day,
                       100.00, CAST(:outstanding AS numeric),
                       100.00 - CAST(:outstanding AS numeric), :status, 'paid'
                  FROM generate_series(1, :count) AS g
                """
            ),
            {
                "prefix": prefix,
                "account_ref": account_ref,
                "first": first,
                "day": INVOICE_DAY,
                "count": count,
                "status": status,
                "outstanding": outstanding,
            },
        )


async def add_message(
    engine: AsyncEngine,
    invoice_number: str,
    status: str | None,
    outstanding: str | None = "0.00",
    *,
    source: str = "sync",
    state: str = "pending",
    attempts: int = 0,
    history_id: int | None = None,
) -> int:
    """An outbox message for the CRM (contract 3's payload); its id."""
    payload: dict[str, Any] = {"status": status, "outstanding": outstanding}
    if history_id is not None:
        payload["history_id"] = history_id
    async with engine.begin() as conn:
        new_id: int = (
            await conn.execute(
                sa.text(
                    """
                    INSERT INTO outbox (invoice_number, payload, source, state, attempts)
                    VALUES (:n, CAST(:p AS jsonb), :src, :state, :a) RETURNING id
                    """
                ),
                {
                    "n": invoice_number,
                    "p": json.dumps(payload),
                    "src": source,
                    "state": state,
                    "a": attempts,
                },
            )
        ).scalar_one()
    return new_id


async def set_status(engine: AsyncEngine, invoice_number: str, status: str) -> None:
    """A person's edit (what PATCH /v1/invoices does), marking the invoice dirty."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE invoices SET status = :s WHERE invoice_number = :n"),
            {"s": status, "n": invoice_number},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO dirty_invoices (invoice_number) VALUES (:n) "
                "ON CONFLICT (invoice_number) DO NOTHING"
            ),
            {"n": invoice_number},
        )


async def bulk_update(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    key: str = WRITE_KEY,
    idempotency_key: str | None = None,
) -> httpx.Response:
    """A Global Update (POST /v1/invoices/bulk-status) sent with `key`."""
    headers = auth(key)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return await client.post(BULK_STATUS, json=body, headers=headers)
