"""Worker task: run queued Global Update jobs (registered in service/tasks.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.context import WorkerContext
from service.errors import ServiceError
from service.jobs import repository as repo
from service.jobs import service
from service.jobs.bulk import ChunkCounts
from service.logging import get_logger
from service.metrics import BULK_JOBS, STATUS_CHANGES
from service.transaction import run_in_transaction

log = get_logger(__name__)


async def run_once(ctx: WorkerContext) -> int:
    """Claim one queued job and run it to the end; return 1, or 0 when there was none.

    The whole job is one transaction (all or nothing). What GET /v1/jobs/{id} shows meanwhile
    (the job running, its progress) is committed in short transactions of their own beside
    it, and so is a failure, once the job's transaction has rolled back. When the worker dies,
    PostgreSQL rolls the job back and frees its lock; the next claim starts it again.
    """
    engine = ctx.engine
    job: Row[Any] | None = None

    async def run_job(conn: AsyncConnection) -> ChunkCounts | None:
        nonlocal job
        claimed = job = await repo.claim_job(conn)
        if claimed is None or claimed.attempts >= service.MAX_ATTEMPTS:
            return None  # none, or given up on: recorded below, once the claim is released
        await _record_now(engine, repo.mark_running, claimed.id, claimed.total)
        log.info("bulk.job.started", job_id=str(claimed.id), total=claimed.total)

        async def progress(processed: int) -> None:
            await commit_progress(engine, claimed.id, processed)

        return await service.run_queued_job(conn, ctx.settings.ledger, claimed, progress)

    try:
        counts = await run_in_transaction(engine, run_job)
    except ServiceError as exc:
        if job is None:
            raise
        # A rule says no (e.g. the status left the picklist): retrying cannot help.
        await _record_now(engine, repo.mark_failed, job.id, exc.detail)
        BULK_JOBS.labels("worker", "failed").inc()
        log.warning("bulk.job.failed", job_id=str(job.id), error=exc.detail)
        return 1
    except Exception as exc:
        if job is None:
            raise
        error = f"attempt {job.attempts + 1} failed: {type(exc).__name__}: {exc}"
        if job.attempts + 1 >= service.MAX_ATTEMPTS:
            await _record_now(engine, repo.mark_failed, job.id, error)
            BULK_JOBS.labels("worker", "failed").inc()
        else:
            await _record_now(engine, repo.mark_retry, job.id, error)
        log.warning("bulk.job.attempt_failed", job_id=str(job.id), error=error)
        return 1
    if job is None:
        return 0
    if counts is None:
        gave_up = f"gave up after {job.attempts} attempts: {job.error}"
        await _record_now(engine, repo.mark_failed, job.id, gave_up)
        BULK_JOBS.labels("worker", "failed").inc()
        return 1
    BULK_JOBS.labels("worker", "succeeded").inc()
    if not job.dry_run and counts.updated:
        STATUS_CHANGES.labels("bulk", job.request["status"]).inc(counts.updated)
    log.info(
        "bulk.job.finished",
        job_id=str(job.id),
        processed=counts.rows,
        updated=counts.updated,
        dry_run=job.dry_run,
    )
    return 1


async def commit_progress(engine: AsyncEngine, job_id: uuid.UUID, processed: int) -> None:
    """How far the job is, committed at once: GET /v1/jobs/{id} shows it while the job runs."""
    await _record_now(engine, repo.report_progress, job_id, processed)


async def _record_now(
    engine: AsyncEngine, write: Callable[..., Awaitable[None]], job_id: uuid.UUID, *args: Any
) -> None:
    """What the job shows (running, its progress, its failure), committed at once in a short
    transaction of its own: the job's own transaction commits only at its end, and may
    already have rolled back."""

    async def record(conn: AsyncConnection) -> None:
        await write(conn, job_id, *args)

    await run_in_transaction(engine, record)
