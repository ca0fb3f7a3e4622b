"""Helpers for reconciliation tests: realistic Sage postings, loading them through ingestion,
reconciling, and reading back what the CRM would see."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ingest.repository import store
from service.ingest.schemas import AllocationIn, PostingIn
from service.reconcile import tasks
from service.settings import Settings
from tests.support.database import INVOICES_WITH_QUEUE

DAY = dt.date(2026, 10, 1)
# What the write-off wizard puts on its credit notes (docs/EXPORTER.md, "What Sage
# keeps").
WO: dict[str, Any] = {"nominal": "8100", "details": "Bad Debt Write Off"}


def si(
    tran: int,
    ref: str,
    gross: str,
    *,
    account: str = "ACME01",
    outstanding: str | None = None,
    deleted: bool = False,
    nominal: str = "4000",
    details: str = "Consulting",
) -> PostingIn:
    """A sales invoice (net + 20% VAT split is irrelevant here: gross is what is owed)."""
    return PostingIn(
        tran_number=tran,
        type="SI",
        account_ref=account,
        reference=ref,
        date=DAY,
        details=details,
        nominal_code=nominal,
        net_amount=Decimal(gross),
        tax_amount=Decimal("0.00"),
        gross_amount=Decimal(gross),
        outstanding=None if outstanding is None else Decimal(outstanding),
        deleted=deleted,
    )


def settle(
    tran: int,
    type_: str,
    allocations: list[tuple[int, str]] | list[tuple[int, str, bool]],
    *,
    account: str = "ACME01",
    reference: str = "",
    details: str = "",
    nominal: str = "1200",
    deleted: bool = False,
    gross: str | None = None,
) -> PostingIn:
    """A settling posting (SR/SA/SD/SC/SP) allocated to invoices by their SI tran_number."""
    allocs = [
        AllocationIn(
            invoice_tran_number=a[0],
            amount=Decimal(a[1]),
            deleted=bool(a[2]) if len(a) > 2 else False,
        )
        for a in allocations
    ]
    total = (
        gross if gross is not None else str(sum((Decimal(a[1]) for a in allocations), Decimal()))
    )
    return PostingIn(
        tran_number=tran,
        type=type_,
        account_ref=account,
        reference=reference,
        date=DAY,
        details=details,
        nominal_code=nominal,
        net_amount=Decimal(total),
        tax_amount=Decimal("0.00"),
        gross_amount=Decimal(total),
        deleted=deleted,
        allocations=allocs,
    )


async def load(engine: AsyncEngine, settings: Settings, *postings: PostingIn) -> None:
    async with engine.begin() as conn:
        await store(conn, list(postings), event_id=f"test-{uuid.uuid4().hex}", settings=settings)


async def reconcile(engine: AsyncEngine, settings: Settings) -> int:
    return await tasks.reconcile_all_dirty(engine, settings)


async def invoice(engine: AsyncEngine, number: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text(f"{INVOICES_WITH_QUEUE} WHERE invoice_number = :n"),
                {"n": number},
            )
        ).one()
    return dict(row._mapping)


async def history(engine: AsyncEngine, number: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT * FROM status_history WHERE invoice_number = :n ORDER BY id"),
            {"n": number},
        )
        return [dict(r._mapping) for r in rows]


async def outbox(engine: AsyncEngine, number: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT * FROM outbox WHERE invoice_number = :n ORDER BY id"), {"n": number}
        )
        return [dict(r._mapping) for r in rows]


async def set_status(engine: AsyncEngine, number: str, status: str) -> None:
    """A person's edit (what PATCH /v1/invoices does), marking the invoice dirty."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE invoices SET status = :s WHERE invoice_number = :n"),
            {"s": status, "n": number},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO dirty_invoices (invoice_number) VALUES (:n) "
                "ON CONFLICT (invoice_number) DO NOTHING"
            ),
            {"n": number},
        )


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text(sql), params)
