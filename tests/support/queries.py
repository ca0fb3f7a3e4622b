"""Reading back what the database holds (and the odd statement a test runs on it)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.database import INVOICES_WITH_QUEUE


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    """The first column of the first row `sql` returns (None for no row)."""
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(sql), params)).scalar()


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """Run `sql` in a transaction of its own."""
    async with engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def invoice(engine: AsyncEngine, invoice_number: str) -> dict[str, Any]:
    """The invoice's row, with `dirty_since` (None unless it is queued for reconciling)."""
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.text(f"{INVOICES_WITH_QUEUE} WHERE invoice_number = :n"),
                    {"n": invoice_number},
                )
            )
            .mappings()
            .one_or_none()
        )
    assert row is not None, f"no invoice {invoice_number}"
    return dict(row)


async def statuses(engine: AsyncEngine, *invoice_numbers: str) -> dict[str, str]:
    """Invoice number -> status, of those that exist."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT invoice_number, status FROM invoices WHERE invoice_number = ANY(:n)"),
            {"n": list(invoice_numbers)},
        )
        return {r.invoice_number: r.status for r in rows}


async def history(engine: AsyncEngine, invoice_number: str) -> list[dict[str, Any]]:
    """The invoice's status_history rows, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT * FROM status_history WHERE invoice_number = :n ORDER BY id"),
            {"n": invoice_number},
        )
        return [dict(r._mapping) for r in rows]


async def outbox(engine: AsyncEngine, invoice_number: str) -> list[dict[str, Any]]:
    """The invoice's outbox messages, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT * FROM outbox WHERE invoice_number = :n ORDER BY id"),
            {"n": invoice_number},
        )
        return [dict(r._mapping) for r in rows]


async def messages(engine: AsyncEngine) -> dict[int, Any]:
    """Every outbox message by its id."""
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT * FROM outbox ORDER BY id"))
        return {row.id: row for row in rows}


async def dirty(engine: AsyncEngine) -> set[str]:
    """The invoices queued for reconciling."""
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT invoice_number FROM dirty_invoices"))
        return set(rows.scalars())


async def nothing_stored(engine: AsyncEngine) -> bool:
    """Whether no delivery and nothing of one (postings, allocations, invoices) is stored."""
    for table in ("postings", "allocations", "invoices", "webhook_deliveries"):
        if await scalar(engine, f"SELECT count(*) FROM {table}") != 0:
            return False
    return True


async def table_checksums(engine: AsyncEngine, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Row count and md5 of every row of every table (but `exclude`): equal means nothing
    was written."""
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
