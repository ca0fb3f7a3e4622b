"""A scratch PostgreSQL database for tests.

By default an embedded PostgreSQL (the same wheel `make run` uses) in a temporary directory;
with LEDGERLINK_TEST_DATABASE_URL, a fresh database created on that server beside the one
named (so runs never share state), dropped afterwards. `reset_database` returns one to the
state every test starts from.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import asyncpg_url, libpq_url
from service.embedded import throwaway_postgres

ENV = "LEDGERLINK_TEST_DATABASE_URL"

# What the initial migration seeds (an OpenCRM-like list holding both write-off values), and
# what every test starts from (tests/picklist checks the two agree).
DEFAULT_PICKLIST: tuple[str, ...] = (
    "Created",
    "Approved",
    "Sent",
    "Unpaid",
    "Part Paid",
    "Paid",
    "Credit Invoice",
    "Written Off",
    "Paid/Written Off",
    "Cancelled",
)

# Every invoice with its place in the reconcile queue: `dirty_since` is NULL when it is not
# queued. Add a WHERE on `invoice_number` for one.
INVOICES_WITH_QUEUE = (
    "SELECT i.*, d.since AS dirty_since FROM invoices AS i "
    "LEFT JOIN dirty_invoices AS d USING (invoice_number)"
)


async def reset_database(engine: AsyncEngine) -> None:
    """Every table empty but the picklist, which holds its default values (truncation, not
    rollback: the concurrency tests need several real connections and committed
    transactions)."""
    async with engine.begin() as conn:
        tables = (
            await conn.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
        ).scalars()
        names = ", ".join(f'"{t}"' for t in tables)
        await conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        await conn.execute(
            sa.text("INSERT INTO picklist_values (value, position) VALUES (:v, :p)"),
            [{"v": v, "p": i} for i, v in enumerate(DEFAULT_PICKLIST)],
        )


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """Yield an asyncpg SQLAlchemy URL of an empty database that is gone afterwards."""
    server_url = os.environ.get(ENV)
    if server_url:
        async with database_beside(server_url) as url:
            yield url
        return
    with throwaway_postgres("ledgerlink-test-") as server:
        postmaster = server.postmaster_pid()
        yield server.database_url
    # A server still running here outlives pytest (a full run once left this one behind).
    assert postmaster is None or not running(postmaster), (
        f"the scratch database's postgres {postmaster} still runs"
    )


def running(pid: int) -> bool:
    """Whether the process runs (one that exited and waits to be reaped does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@asynccontextmanager
async def database_beside(server_url: str) -> AsyncIterator[str]:
    """Yield an asyncpg SQLAlchemy URL of an empty database on the server `server_url` names
    (any database of it), dropped afterwards."""
    name = f"ledgerlink_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(libpq_url(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield asyncpg_url(make_url(server_url).set(database=name).render_as_string(False))
    finally:
        admin = await asyncpg.connect(libpq_url(server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
