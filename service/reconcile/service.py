"""Reconciliation: dirty batches for the worker, requested sync runs, reports, readiness.

The rules themselves are one SQL statement (repository.apply_batch); this module decides
what to run, in which transaction, and what to count. See docs/ARCHITECTURE.md,
"Reconciliation".
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.cursor import decode_after, encode_after
from service.ledger.settings import LedgerSettings
from service.logging import get_logger
from service.metrics import (
    CONFLICTS,
    POSTING_TO_STATUS,
    RECONCILE_DURATION,
    RECONCILE_RUNS,
    STATUS_CHANGES,
)
from service.reconcile import repository as repo
from service.reconcile.repository import BatchResult, ChangeRow, RunRow, RunScope
from service.settings import Settings
from service.transaction import run_in_transaction

log = get_logger(__name__)

T = TypeVar("T")

WORKER_ACTOR = "worker"
# A requested run whose executor has not finished a batch for this long is taken over.
STALE_RUN_SECONDS = 120.0
# Deadlock and serialization failures: the batch is run again (it changed nothing), up to
# this many more times.
_RETRIES = 2


# ---------------------------------------------------------------------------------------------
# Dirty invoices (the worker's automatic runs)
# ---------------------------------------------------------------------------------------------


async def reconcile_dirty(
    engine: AsyncEngine, settings: Settings, *, limit: int | None = None
) -> BatchResult:
    """Claim one batch of dirty invoices and reconcile it, all in one transaction.

    The batch is recorded as a finished worker run when it changed something or found a new
    conflict; otherwise it leaves no sync_runs row (the metrics still count it).
    """
    batch = limit or settings.worker_batch_size
    run_id = uuid.uuid4()
    started = time.perf_counter()

    async def attempt(conn: AsyncConnection) -> tuple[BatchResult, float | None]:
        claimed = await repo.claim_dirty(conn, batch)
        if not claimed.numbers:
            return BatchResult(), None
        result = await repo.apply_batch(
            conn,
            claimed.numbers,
            settings.ledger,
            queued_since=claimed.since,
            run_id=run_id,
            actor=WORKER_ACTOR,
            new_run=repo.RunInsert(trigger="worker", scope_json='{"scope": "dirty"}'),
        )
        return result, time.perf_counter()

    result, applied_at = await _in_transaction(engine, attempt)
    commit_delay = 0.0 if applied_at is None else time.perf_counter() - applied_at
    if result.examined:
        _observe(result, "worker", time.perf_counter() - started, commit_delay, dry_run=False)
        RECONCILE_RUNS.labels("worker", "succeeded").inc()
        log.debug(
            "reconcile.batch",
            run_id=str(run_id) if result.run_recorded else None,
            examined=result.examined,
            changed=result.changed,
            conflicts=result.conflicts,
        )
    return result


async def reconcile_all_dirty(engine: AsyncEngine, settings: Settings) -> int:
    """Drain the dirty backlog (tests, benchmarks, one-off tools); returns invoices examined."""
    total = 0
    while True:
        result = await reconcile_dirty(engine, settings)
        if not result.examined:
            return total
        total += result.examined


# ---------------------------------------------------------------------------------------------
# Requested runs
# ---------------------------------------------------------------------------------------------


async def request_run(
    engine: AsyncEngine, scope: RunScope, *, dry_run: bool, actor: str, running: bool
) -> uuid.UUID:
    """Record a requested run: queued (a worker executes it) or running (the caller does)."""
    run_id = uuid.uuid4()

    async def insert(conn: AsyncConnection) -> None:
        await repo.insert_run(
            conn, run_id=run_id, scope=scope, dry_run=dry_run, actor=actor, running=running
        )

    await run_in_transaction(engine, insert)
    return run_id


async def execute_run_batch(
    engine: AsyncEngine, settings: Settings, run_id: uuid.UUID
) -> tuple[int, bool]:
    """One batch of a running requested run, in its own transaction: (examined, finished)."""
    started = time.perf_counter()

    async def attempt(conn: AsyncConnection) -> tuple[BatchResult, bool, bool, float] | None:
        run = await repo.lock_run(conn, run_id)
        if run is None or run.status != "running":
            return None  # finished, failed or requeued by another executor meanwhile
        scope = RunScope.from_json(run.scope)
        limit = settings.worker_batch_size
        numbers = await repo.claim_for_run(
            conn,
            scope,
            limit=limit,
            after=run.cursor,
            dirty_bound=run.started_at,
            dry_run=run.dry_run,
        )
        finish = len(numbers) < limit
        keyset = run.dry_run or scope.scope != "dirty"
        result = await repo.apply_batch(
            conn,
            numbers,
            settings.ledger,
            run_id=run_id,
            actor=run.actor or "api",
            dry_run=run.dry_run,
            cursor=numbers[-1] if numbers and keyset else None,
            finish=finish,
        )
        return result, finish, run.dry_run, time.perf_counter()

    outcome = await _in_transaction(engine, attempt)
    if outcome is None:
        return 0, True
    result, finished, dry_run, applied_at = outcome
    commit_delay = time.perf_counter() - applied_at
    if result.examined:
        _observe(result, "api", time.perf_counter() - started, commit_delay, dry_run=dry_run)
    if finished:
        RECONCILE_RUNS.labels("api", "succeeded").inc()
        log.info("reconcile.run.finished", run_id=str(run_id), dry_run=dry_run)
    return result.examined, finished


async def execute_run(
    engine: AsyncEngine, settings: Settings, run_id: uuid.UUID, *, deadline: float | None
) -> bool:
    """Execute a running requested run batch by batch until it finishes (True) or the
    monotonic `deadline` passes (False: the run is left running, resumable from its cursor)."""
    while True:
        _, finished = await _batch_or_fail(engine, settings, run_id)
        if finished:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


async def requeue_run(engine: AsyncEngine, run_id: uuid.UUID) -> None:
    """Hand a run that could not finish within a request to the workers."""

    async def requeue(conn: AsyncConnection) -> None:
        await repo.requeue_run(conn, run_id)

    await run_in_transaction(engine, requeue)


@dataclass
class RunInHand:
    """The requested run a worker is part-way through, kept between its passes."""

    run_id: uuid.UUID | None = None


async def advance_requested_run(engine: AsyncEngine, settings: Settings, held: RunInHand) -> int:
    """The worker's share of requested runs: one batch of the run in hand, claiming the oldest
    queued (or abandoned) run when it holds none. Returns work done (0 = nothing to do)."""
    run_id = held.run_id
    if run_id is None:

        async def claim(conn: AsyncConnection) -> uuid.UUID | None:
            return await repo.claim_requested_run(conn, STALE_RUN_SECONDS)

        run_id = await run_in_transaction(engine, claim)
        if run_id is None:
            return 0
        held.run_id = run_id
        log.info("reconcile.run.started", run_id=str(run_id))
    try:
        examined, finished = await _batch_or_fail(engine, settings, run_id)
    except BaseException:
        held.run_id = None
        raise
    if finished:
        held.run_id = None
    return max(examined, 1)


async def _batch_or_fail(
    engine: AsyncEngine, settings: Settings, run_id: uuid.UUID
) -> tuple[int, bool]:
    try:
        return await execute_run_batch(engine, settings, run_id)
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]

        async def fail(conn: AsyncConnection) -> None:
            await repo.finish_run(conn, run_id, status="failed", error=error)

        try:
            await run_in_transaction(engine, fail)
        except Exception:
            # The database itself is away: leave the run running; once its heartbeat is
            # stale a worker resumes it from its cursor.
            raise exc from None
        RECONCILE_RUNS.labels("api", "failed").inc()
        log.warning("reconcile.run.failed", run_id=str(run_id), error=error)
        return 0, True


@dataclass(frozen=True)
class RunView:
    run: RunRow
    changes: list[ChangeRow]
    next_changes_cursor: str | None


async def run_view(
    conn: AsyncConnection, run_id: uuid.UUID, *, changes_limit: int, changes_cursor: str | None
) -> RunView | None:
    run = await repo.get_run(conn, run_id)
    if run is None:
        return None
    after = decode_after(changes_cursor, param="changes_cursor")
    changes = await repo.run_changes(conn, run_id, after=after, limit=changes_limit + 1)
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
    rows = await repo.report(conn, kind, ledger, after=after, limit=limit + 1)
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
    return await repo.report_count(conn, kind, ledger, cap=cap)


async def latest_run(conn: AsyncConnection) -> repo.RunRow | None:
    """The most recently requested sync run (worker batches that changed something included)."""
    return await repo.latest_run(conn)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _observe(
    result: BatchResult, trigger: str, duration: float, commit_delay: float, *, dry_run: bool
) -> None:
    RECONCILE_DURATION.observe(duration)
    if dry_run:
        return
    for status, count in Counter(result.new_statuses).items():
        STATUS_CHANGES.labels("sync", status).inc(count)
    if result.new_conflicts:
        CONFLICTS.inc(result.new_conflicts)
    for seconds in result.latencies:
        POSTING_TO_STATUS.observe(max(seconds + commit_delay, 0.0))


async def _in_transaction(engine: AsyncEngine, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """A batch's transaction: a deadlock or serialization failure runs it again."""
    return await run_in_transaction(engine, fn, retries=_RETRIES, name="reconcile.batch")
