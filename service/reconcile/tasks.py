"""Reconciliation's work of several transactions, each begun through
`service.transaction.run_in_transaction`: the worker task (requested sync runs first, one batch
each pass, then a batch of dirty invoices) and a requested run executed batch by batch, by the
worker or within a request (POST /v1/sync/trigger?wait=true).

Every claim uses FOR UPDATE SKIP LOCKED, so any number of workers share the work.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.context import WorkerContext
from service.logging import get_logger
from service.metrics import RECONCILE_RUNS
from service.reconcile import service
from service.reconcile.compute import BatchResult
from service.reconcile.runs import RunScope
from service.settings import Settings
from service.transaction import run_in_transaction

log = get_logger(__name__)

T = TypeVar("T")

# Deadlock and serialization failures: the batch is run again (it changed nothing), up to
# this many more times.
_RETRIES = 2


class Reconcile:
    """One per worker: it holds the requested run it is executing between passes."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.executing = RunBeingExecuted()

    async def run_once(self) -> int:
        """Do one batch of pending work; return how many items were processed (0 = idle)."""
        done = await advance_requested_run(self.ctx.engine, self.ctx.settings, self.executing)
        result = await reconcile_dirty(self.ctx.engine, self.ctx.settings)
        return done + result.examined


# ---------------------------------------------------------------------------------------------
# Dirty invoices (the worker's automatic runs)
# ---------------------------------------------------------------------------------------------


async def reconcile_dirty(
    engine: AsyncEngine, settings: Settings, *, limit: int | None = None
) -> BatchResult:
    """Claim one batch of dirty invoices and reconcile it, all in one transaction."""
    run_id = uuid.uuid4()
    started = time.perf_counter()

    async def batch(conn: AsyncConnection) -> tuple[BatchResult, float]:
        result = await service.reconcile_dirty_batch(
            conn, settings, run_id=run_id, limit=limit or settings.worker_batch_size
        )
        return result, time.perf_counter()

    result, applied_at = await _batch_transaction(engine, batch)
    if result.examined:
        committed = time.perf_counter()
        service.batch_committed(
            result, "worker", committed - started, committed - applied_at, dry_run=False
        )
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
    """Record a requested run, committed before any of its batches starts."""

    async def insert(conn: AsyncConnection) -> uuid.UUID:
        return await service.request_run(conn, scope, dry_run=dry_run, actor=actor, running=running)

    return await run_in_transaction(engine, insert)


async def requeue_run(engine: AsyncEngine, run_id: uuid.UUID) -> None:
    """Hand a run that could not finish within a request to the workers."""

    async def requeue(conn: AsyncConnection) -> None:
        await service.requeue_run(conn, run_id)

    await run_in_transaction(engine, requeue)


async def execute_run(
    engine: AsyncEngine, settings: Settings, run_id: uuid.UUID, *, deadline: float | None
) -> bool:
    """Execute a running requested run batch by batch, a transaction each, until it finishes
    (True) or the monotonic `deadline` passes (False: the run is left running, resumable from
    its cursor)."""
    while True:
        _, finished = await _batch_or_fail(engine, settings, run_id)
        if finished:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


@dataclass
class RunBeingExecuted:
    """The requested run a worker is part-way through, kept between its passes."""

    run_id: uuid.UUID | None = None


async def advance_requested_run(
    engine: AsyncEngine, settings: Settings, executing: RunBeingExecuted
) -> int:
    """The worker's share of requested runs: one batch of the run it is executing, claiming
    the oldest queued (or abandoned) run when it has none. Returns work done (0 = nothing)."""
    run_id = executing.run_id
    if run_id is None:
        run_id = await run_in_transaction(engine, service.claim_requested_run)
        if run_id is None:
            return 0
        executing.run_id = run_id
        log.info("reconcile.run.started", run_id=str(run_id))
    try:
        examined, finished = await _batch_or_fail(engine, settings, run_id)
    except BaseException:
        executing.run_id = None
        raise
    if finished:
        executing.run_id = None
    return max(examined, 1)


async def _execute_run_batch(
    engine: AsyncEngine, settings: Settings, run_id: uuid.UUID
) -> tuple[int, bool]:
    """One batch of a running requested run, in its own transaction: (examined, finished)."""
    started = time.perf_counter()

    async def batch(conn: AsyncConnection) -> tuple[service.RunBatch | None, float]:
        return await service.execute_run_batch(conn, settings, run_id), time.perf_counter()

    done, applied_at = await _batch_transaction(engine, batch)
    if done is None:
        return 0, True
    if done.result.examined:
        committed = time.perf_counter()
        service.batch_committed(
            done.result, "api", committed - started, committed - applied_at, dry_run=done.dry_run
        )
    if done.finished:
        RECONCILE_RUNS.labels("api", "succeeded").inc()
        log.info("reconcile.run.finished", run_id=str(run_id), dry_run=done.dry_run)
    return done.result.examined, done.finished


async def _batch_or_fail(
    engine: AsyncEngine, settings: Settings, run_id: uuid.UUID
) -> tuple[int, bool]:
    try:
        return await _execute_run_batch(engine, settings, run_id)
    except Exception as exc:
        error = service.run_error(exc)

        async def fail(conn: AsyncConnection) -> None:
            await service.fail_run(conn, run_id, error)

        try:
            await run_in_transaction(engine, fail)
        except Exception:
            # The database itself is away: leave the run running; once its heartbeat is
            # stale a worker resumes it from its cursor.
            raise exc from None
        RECONCILE_RUNS.labels("api", "failed").inc()
        log.warning("reconcile.run.failed", run_id=str(run_id), error=error)
        return 0, True


async def _batch_transaction(
    engine: AsyncEngine, fn: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """A batch's transaction: a deadlock or serialization failure runs it again."""
    return await run_in_transaction(engine, fn, retries=_RETRIES, name="reconcile.batch")
