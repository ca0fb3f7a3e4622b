"""Invoices straight into the table (this feature's own), a worker context, table checksums."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.settings import Settings

_INSERT = sa.text(
    """
    INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date, gross,
                          outstanding, paid, written_off, status, derived_state, conflict)
    VALUES (:invoice_number, :account_ref, :sage_tran_number, :invoice_date, :gross,
            :outstanding, :paid, :written_off, :status, :derived_state, :conflict)
    """
)
_next_tran = [1_000_000]


async def add_invoice(
    engine: AsyncEngine,
    invoice_number: str,
    *,
    account_ref: str = "ACME01",
    status: str = "Unpaid",
    gross: str = "120.00",
    outstanding: str | None = None,
    paid: str = "0.00",
    written_off: str = "0.00",
    derived_state: str | None = None,
    conflict: str | None = None,
) -> None:
    _next_tran[0] += 1
    values: dict[str, Any] = {
        "invoice_number": invoice_number,
        "account_ref": account_ref,
        "sage_tran_number": _next_tran[0],
        "invoice_date": date(2026, 1, 15),
        "gross": Decimal(gross),
        "outstanding": Decimal(gross if outstanding is None else outstanding),
        "paid": Decimal(paid),
        "written_off": Decimal(written_off),
        "status": status,
        "derived_state": derived_state,
        "conflict": conflict,
    }
    async with engine.begin() as conn:
        await conn.execute(_INSERT, values)


async def add_many(
    engine: AsyncEngine,
    count: int,
    *,
    account_ref: str = "BIG01",
    prefix: str = "B",
    status: str = "Paid",
    outstanding: str = "0.00",
) -> None:
    """`count` invoices in one generate_series statement: B0000001, B0000002, ..."""
    base = _next_tran[0]
    _next_tran[0] += count
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                """
                INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date,
                                      gross, outstanding, paid, status, derived_state)
                SELECT :prefix || lpad(g::text, 7, '0'), :acct, :base + g, DATE '2026-01-15',
                       100.00, CAST(:out AS numeric), 100.00 - CAST(:out AS numeric), :status,
                       'paid'
                  FROM generate_series(1, :n) AS g
                """
            ),
            {
                "prefix": prefix,
                "acct": account_ref,
                "base": base,
                "n": count,
                "status": status,
                "out": outstanding,
            },
        )


async def statuses(engine: AsyncEngine, *numbers: str) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT invoice_number, status FROM invoices WHERE invoice_number = ANY(:n)"),
            {"n": list(numbers)},
        )
        return {r.invoice_number: r.status for r in rows}


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(sql), params)).scalar()


async def table_checksums(engine: AsyncEngine, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """md5 of every row of every table (but `exclude`), to prove nothing was written."""
    async with engine.connect() as conn:
        tables = (
            await conn.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version' ORDER BY tablename"
                )
            )
        ).scalars()
        sums = {}
        for table in tables:
            if table in exclude:
                continue
            sums[table] = (
                await conn.execute(
                    sa.text(
                        f"SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' "
                        f"ORDER BY t::text)), '') FROM \"{table}\" t"
                    )
                )
            ).scalar_one()
        return sums


@pytest.fixture
async def worker_ctx(
    engine: AsyncEngine, settings: Settings, database_url: str
) -> AsyncIterator[WorkerContext]:
    async with httpx.AsyncClient() as http:
        yield WorkerContext(settings=settings, engine=engine, http=http)


@pytest.fixture
async def small_limit_app(engine: AsyncEngine, database_url: str) -> AsyncIterator[Any]:
    """The app with an inline limit of 5 invoices, so the queued path needs only a few."""
    from asgi_lifespan import LifespanManager

    from service.main import create_app
    from tests.conftest import make_settings

    application = create_app(make_settings(database_url, bulk_sync_limit=5))
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def small_client(small_limit_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small_limit_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
