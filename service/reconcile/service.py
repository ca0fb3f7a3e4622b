"""Reconciliation: dirty batches for the worker, requested sync runs, reports, readiness.

The rules themselves are one SQL statement (repository.apply_batch); this module decides what
a batch runs and what it counts, in the transaction it is handed. Work of several
transactions (the worker's passes, a requested run's batches) is driven by tasks.py, one
transaction per call. See docs/ARCHITECTURE.md, "Reconciliation".
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.cursor import decode_after, encode_after
from service.ledger.settings import LedgerSettings
from service.metrics import CONFLICTS, POSTING_TO_STATUS, RECONCILE_DURATION, STATUS_CHANGES
from service.reconcile import compute, reports, runs
from service.reconcile.compute import BatchResult
from service.reconcile.runs import ChangeRow, RunRow, RunScope
from service.settings import Settings

WORKER_ACTOR = "worker"
# A requested run whose executor has not finished a batch for this long is taken over.
STALE_RUN_SECONDS = 120.0


# ---------------------------------------------------------------------------------------------
# Batches (one transaction each: the caller's)
# ---------------------------------------------------------------------------------------------


async def reconcile_dirty_batch(
    conn: AsyncConnection, settings: Settings, *, run_id: uuid.UUID, limit: int
) -> BatchResult:
    """Claim up to `limit` dirty invoices and reconcile them, in the caller's transaction.

    The batch is recorded as a finished worker run when it changed something or found a new
    conflict; otherwise it leaves no sync_runs row (the metrics still count it).
    """
    claimed = await compute.claim_dirty(conn, limit)
    if not claimed.numbers:
        return BatchResult()
    return await compute.apply_batch(
        conn,
        claimed.numbers,
        settings.ledger,
        queued_since=claimed.since,
        run_id=run_id,
        actor=WORKER_ACTOR,
        new_run=compute.RunInsert(trigger="worker", scope_json='{"scope": "dirty"}'),
    )


@dataclass(frozen=True)
class RunBatch:
    """One batch of a requested run, and whether it was the run's last."""

    result: BatchResult
    finished: bool
    dry_run: bool


async def execute_run_batch(
    conn: AsyncConnection, settings: Settings, run_id: uuid.UUID
) -> RunBatch | None:
    """The next batch of a running requested run, in the caller's transaction; None when the
    run is no longer running (finished, failed or requeued by another executor meanwhile)."""
    run = await runs.lock_run(conn, run_id)
    if run is None or run.status != "running":
        return None
    scope = RunScope.from_json(run.scope)
    limit = settings.worker_batch_size
    numbers = await compute.claim_for_run(
        conn,
        scope,
        limit=limit,
        after=run.cursor,
        dirty_bound=run.started_at,
        dry_run=run.dry_run,
    )
    finish = len(numbers) < limit
    keyset = run.dry_run or scope.scope != "dirty"
    result = await compute.apply_batch(
        conn,
        numbers,
        settings.ledger,
        run_id=run_id,
        actor=run.actor or "api",
        dry_run=run.dry_run,
        cursor=numbers[-1] if numbers and keyset else None,
        finish=finish,
    )
    return RunBatch(result, finish, run.dry_run)


def batch_committed(
    result: BatchResult, trigger: str, duration: float, commit_delay: float, *, dry_run: bool
) -> None:
    """Count a batch once its transaction committed (`commit_delay`: from its statement to
    the commit, part of each invoice's posting-to-status latency)."""
    RECONCILE_DURATION.observe(duration)
    if dry_run:
        return
    for status, count in Counter(result.new_statuses).items():
        STATUS_CHANGES.labels("sync", status).inc(count)
    if result.new_conflicts:
        CONFLICTS.inc(result.new_conflicts)
    for seconds in result.latencies:
        POSTING_TO_STATUS.observe(max(seconds + commit_delay, 0.0))


# ---------------------------------------------------------------------------------------------
# Requested runs
# ---------------------------------------------------------------------------------------------


async def request_run(
    conn: AsyncConnection, scope: RunScope, *, dry_run: bool, actor: str, running: bool
) -> uuid.UUID:
    """Record a requested run: queued (a worker executes it) or running (the caller does)."""
    run_id = uuid.uuid4()
    await runs.insert_run(
        conn, run_id=run_id, scope=scope, dry_run=dry_run, actor=actor, running=running
    )
    return run_id


async def requeue_run(conn: AsyncConnection, run_id: uuid.UUID) -> None:
    """Hand a run that could not finish within a request to the workers."""
    await runs.requeue_run(conn, run_id)


async def claim_requested_run(conn: AsyncConnection) -> uuid.UUID | None:
    """The oldest queued run, or one whose executor stopped heart-beating, now running."""
    return await runs.claim_requested_run(conn, STALE_RUN_SECONDS)


def run_error(exc: Exception) -> str:
    """What a failed run records of the exception that stopped it: its first line."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]


async def fail_run(conn: AsyncConnection, run_id: uuid.UUID, error: str) -> None:
    await runs.finish_run(conn, run_id, status="failed", error=error)


@dataclass(frozen=True)
class RunView:
    run: RunRow
    changes: list[ChangeRow]
    next_changes_cursor: str | None


async def run_view(
    conn: AsyncConnection, run_id: uuid.UUID, *, changes_limit: int, changes_cursor: str | None
) -> RunView | None:
    run = await runs.get_run(conn, run_id)
    if run is None:
        return None
    after = decode_after(changes_cursor, param="changes_cursor")
    changes = await runs.run_changes(conn, run_id, after=after, limit=changes_limit + 1)
    more = len(changes) > changes_limit
    changes = changes[:changes_limit]
    next_cursor = encode_after(changes[-1].invoice_number) if more and changes else None
    return RunView(run=run, changes=changes, next_changes_cursor=next_cursor)


# ---------------------------------------------------------------------------------------------
# Reports, readiness
# ---------------------------------------------------------------------------------------------


async def report(
    conn: AsyncConnection, kind: str, ledger: LedgerSettings, *, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    after = decode_after(cursor, param="cursor")
    rows = await reports.report(conn, kind, ledger, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        reasons: list[str] = list(row.pop("divergent_reasons") or [])
        if row["conflict"] is not None and row["protected"]:
            reasons.append("conflict")
        if row["mismatch"]:
            reasons.append("mismatch")
        if row.pop("crm_drift"):
            reasons.append("crm_drift")
        row["reasons"] = reasons
    next_cursor = encode_after(rows[-1]["invoice_number"]) if more and rows else None
    return rows, next_cursor


async def report_count(
    conn: AsyncConnection, kind: str, ledger: LedgerSettings, *, cap: int
) -> int:
    """How many invoices `report` would list, up to `cap` (a cap + 1 reads as "more than")."""
    return await reports.report_count(conn, kind, ledger, cap=cap)


async def latest_run(conn: AsyncConnection) -> runs.RunRow | None:
    """The most recently requested sync run (worker batches that changed something included)."""
    return await runs.latest_run(conn)
