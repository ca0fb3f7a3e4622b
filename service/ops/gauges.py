"""Gauges read from the database when /metrics is scraped (backlogs live in PostgreSQL)."""

from __future__ import annotations

import contextlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ops.metrics import (
    CRM_HALTED,
    DEAD_LETTERS,
    DIRTY_AGE,
    DIRTY_BACKLOG,
    OUTBOX_AGE,
    OUTBOX_DEPTH,
)

_QUERY = sa.text(
    """
    SELECT
      (SELECT count(*) FROM invoices WHERE dirty_since IS NOT NULL),
      (SELECT coalesce(extract(epoch FROM now() - min(dirty_since)), 0)
         FROM invoices WHERE dirty_since IS NOT NULL),
      (SELECT count(*) FROM outbox WHERE state = 'pending'),
      (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
         FROM outbox WHERE state = 'pending'),
      (SELECT count(*) FROM outbox WHERE state = 'dead'),
      (SELECT count(*) FROM crm_dispatcher_state WHERE halted_reason IS NOT NULL)
    """
)


async def refresh_gauges(engine: AsyncEngine) -> None:
    # A scrape during a database outage still returns the process metrics.
    with contextlib.suppress(Exception):
        async with engine.connect() as conn:
            row = (await conn.execute(_QUERY)).one()
        DIRTY_BACKLOG.set(row[0])
        DIRTY_AGE.set(float(row[1]))
        OUTBOX_DEPTH.set(row[2])
        OUTBOX_AGE.set(float(row[3]))
        DEAD_LETTERS.set(row[4])
        CRM_HALTED.set(row[5])
