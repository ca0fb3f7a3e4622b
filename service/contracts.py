"""The contracts between features, written once (docs/ARCHITECTURE.md, "Contracts between
features"): the NOTIFY channels that wake the worker, the status_history row every status change
writes, the outbox row (and its payload) that tells the CRM, and when a status the CRM shows is
the same as ours.

The writes are SQL fragments, not functions that take rows: each caller puts them inside its
own set-based statement (a CTE chain), so a change, its history and its outbox row stay one
statement in the caller's transaction. Only trusted SQL expressions and the literal sources
below are spliced in; values travel as bind parameters of the caller's statement.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger.vocabulary import (
    HISTORY_SOURCES,
    OUTBOX_SOURCES,
    HistorySource,
    OutboxSource,
)

# --- NOTIFY channels (delivered at commit, so a listener never wakes to rows it cannot see) ---

# Invoices marked dirty (contract 1), or a sync run queued: wakes reconciliation.
DIRTY_CHANNEL = "ledgerlink_dirty"
# A Global Update job queued for the worker (contract 4).
JOBS_CHANNEL = "ledgerlink_jobs"
# Outbox rows written (contract 3): wakes the CRM dispatcher.
OUTBOX_CHANNEL = "ledgerlink_outbox"
CHANNELS = (DIRTY_CHANNEL, JOBS_CHANNEL, OUTBOX_CHANNEL)


async def notify(conn: AsyncConnection, *channels: str) -> None:
    """Wake the listeners of `channels` when the caller's transaction commits."""
    for channel in channels:
        await conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": channel})


# --- status_history (contract 3) --------------------------------------------------------------


def insert_history(
    *,
    source: HistorySource,
    invoice_number: str,
    from_status: str,
    to_status: str,
    from_outstanding: str,
    to_outstanding: str,
    actor: str,
    reason: str,
    run_id: str = "NULL",
    job_id: str = "NULL",
    from_: str | None = None,
    where: str | None = None,
    order_by: str | None = None,
    returning: str | None = None,
) -> str:
    """`INSERT INTO status_history ... SELECT ...`: one history row per row of `from_` (one row
    when it is None). The keyword arguments are SQL expressions over `from_`."""
    sql = f"""
    INSERT INTO status_history (invoice_number, from_status, to_status, from_outstanding,
                                to_outstanding, source, actor, reason, run_id, job_id)
    SELECT {invoice_number}, {from_status}, {to_status}, {from_outstanding}, {to_outstanding},
           '{_checked(source, HISTORY_SOURCES)}', {actor}, {reason}, {run_id}, {job_id}"""
    return sql + _tail(from_, where, order_by, returning)


# --- outbox (contract 3) ----------------------------------------------------------------------


def insert_outbox(
    *,
    source: OutboxSource,
    invoice_number: str,
    status: str,
    outstanding: str,
    history_id: str,
    from_: str,
    where: str | None = None,
    order_by: str | None = None,
    returning: str | None = None,
) -> str:
    """`INSERT INTO outbox ... SELECT ...`: one message per row of `from_`. The payload is the
    same for every source: {"status", "outstanding" (text, two places), "history_id" (null for
    a balance change without a status change), "source"}. The keyword arguments are SQL
    expressions over `from_`. The caller also notifies OUTBOX_CHANNEL."""
    checked = _checked(source, OUTBOX_SOURCES)
    sql = f"""
    INSERT INTO outbox (invoice_number, source, payload)
    SELECT {invoice_number}, '{checked}',
           jsonb_build_object('status', {status},
                              'outstanding', CAST({outstanding} AS text),
                              'history_id', {history_id},
                              'source', '{checked}')"""
    return sql + _tail(from_, where, order_by, returning)


def _checked(source: str, allowed: tuple[str, ...]) -> str:
    if source not in allowed:
        raise ValueError(f"unknown source {source!r}")
    return source


def _tail(from_: str | None, where: str | None, order_by: str | None, returning: str | None) -> str:
    parts = [
        f"FROM {from_}" if from_ else "",
        f"WHERE {where}" if where else "",
        f"ORDER BY {order_by}" if order_by else "",
        f"RETURNING {returning}" if returning else "",
    ]
    return "".join(f"\n    {part}" for part in parts if part)


# --- a status the CRM shows against ours ------------------------------------------------------

# OpenCRM's screens let a person type "WRITTEN OFF" for "Written Off": the same status. What
# read-back adopts, what a delivery keeps and what the crm_drift report lists all compare
# statuses this way, in Python (`status_key`) or in SQL (`status_key_sql`); both lower-case
# (they agree on every ASCII status; a database in the C locale lower-cases only ASCII).


def status_key(status: str) -> str:
    return status.strip().lower()


def status_key_sql(expression: str) -> str:
    return f"lower(btrim({expression}))"
