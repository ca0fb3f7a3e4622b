"""Gauges read from the database when /metrics is scraped (backlogs live in PostgreSQL)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.metrics import (
    CRM_HALTED,
    DEAD_LETTERS,
    DIRTY_AGE,
    DIRTY_BACKLOG,
    OUTBOX_AGE,
    OUTBOX_DEPTH,
)
from service.transaction import read

_QUERY = sa.text(
    """
    SELECT
      (SELECT count(*) FROM dirty_invoices),
      (SELECT coalesce(extract(epoch FROM now() - min(since)), 0) FROM dirty_invoices),
      (SELECT count(*) FROM outbox WHERE state = 'pending'),
      (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
         FROM outbox WHERE state = 'pending'),
      (SELECT count(*) FROM outbox WHERE state = 'dead'),
      (SELECT count(*) FROM crm_dispatcher_state WHERE halted_reason IS NOT NULL)
    """
)


@dataclass(frozen=True)
class Backlog:
    dirty: int
    dirty_age_seconds: float
    pending: int
    pending_age_seconds: float
    dead: int
    crm_halted: int


async def backlog(conn: AsyncConnection) -> Backlog:
    """Invoices waiting for reconciliation, CRM messages waiting, dead letters."""
    row = (await conn.execute(_QUERY)).one()
    return Backlog(int(row[0]), float(row[1]), int(row[2]), float(row[3]), int(row[4]), int(row[5]))


async def refresh_gauges(engine: AsyncEngine) -> None:
    # A scrape during a database outage still returns the process metrics.
    with contextlib.suppress(Exception):
        now = await read(engine, backlog)
        DIRTY_BACKLOG.set(now.dirty)
        DIRTY_AGE.set(now.dirty_age_seconds)
        OUTBOX_DEPTH.set(now.pending)
        OUTBOX_AGE.set(now.pending_age_seconds)
        DEAD_LETTERS.set(now.dead)
        CRM_HALTED.set(now.crm_halted)
