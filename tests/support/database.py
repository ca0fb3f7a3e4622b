"""A scratch PostgreSQL database for tests.

By default an embedded PostgreSQL (the same wheel `make run` uses) in a temporary directory;
with LEDGERLINK_TEST_DATABASE_URL, a fresh database created on that server beside the one
named (so runs never share state), dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import psutil
from sqlalchemy.engine import make_url

from service.db import asyncpg_url, libpq_url
from service.embedded import throwaway_postgres

ENV = "LEDGERLINK_TEST_DATABASE_URL"

# Every invoice with its place in the reconcile queue: `dirty_since` is NULL when it is not
# queued. Add a WHERE on `invoice_number` for one.
INVOICES_WITH_QUEUE = (
    "SELECT i.*, d.since AS dirty_since FROM invoices AS i "
    "LEFT JOIN dirty_invoices AS d USING (invoice_number)"
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
