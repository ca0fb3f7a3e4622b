"""Worker task: run queued Global Update jobs (registered in service/tasks.py)."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from service.context import WorkerContext
from service.errors import ServiceError
from service.invoices import repository as repo
from service.invoices import service
from service.invoices.repository import ChunkCounts
from service.logging import get_logger
from service.metrics import BULK_JOBS, STATUS_CHANGES
from service.transaction import run_in_transaction

log = get_logger(__name__)


async def run_once(ctx: WorkerContext) -> int:
    """Claim one queued job and run it to the end; return 1, or 0 when there was none.

    The whole job is one transaction (all or nothing). Progress is committed on a second,
    autocommit connection so GET /v1/jobs/{id} shows it while the job runs; a failure is
    recorded there too, after the job's transaction has rolled back. When the worker dies,
    PostgreSQL rolls the job back and frees its lock; the next claim starts it again.
    """
    job: Row[Any] | None = None
    async with contextlib.AsyncExitStack() as stack:
        side: AsyncConnection | None = None

        async def run_job(conn: AsyncConnection) -> ChunkCounts | None:
            nonlocal job, side
            claimed = job = await repo.claim_job(conn)
            if claimed is None:
                return None
            opened = await stack.enter_async_context(ctx.engine.connect())
            autocommit = side = await opened.execution_options(isolation_level="AUTOCOMMIT")
            if claimed.attempts >= service.MAX_ATTEMPTS:
                return None  # given up on: recorded below, once the claim is released
            await repo.mark_running(autocommit, claimed.id, claimed.total)
            log.info("bulk.job.started", job_id=str(claimed.id), total=claimed.total)

            async def progress(processed: int) -> None:
                await repo.report_progress(autocommit, claimed.id, processed)

            return await service.run_queued_job(conn, ctx.settings.ledger, claimed, progress)

        try:
            counts = await run_in_transaction(ctx.engine, run_job)
        except ServiceError as exc:
            if job is None or side is None:
                raise
            # A rule says no (e.g. the status left the picklist): retrying cannot help.
            await repo.mark_failed(side, job.id, exc.detail)
            BULK_JOBS.labels("worker", "failed").inc()
            log.warning("bulk.job.failed", job_id=str(job.id), error=exc.detail)
            return 1
        except Exception as exc:
            if job is None or side is None:
                raise
            error = f"attempt {job.attempts + 1} failed: {type(exc).__name__}: {exc}"
            if job.attempts + 1 >= service.MAX_ATTEMPTS:
                await repo.mark_failed(side, job.id, error)
                BULK_JOBS.labels("worker", "failed").inc()
            else:
                await repo.mark_retry(side, job.id, error)
            log.warning("bulk.job.attempt_failed", job_id=str(job.id), error=error)
            return 1
        if job is None:
            return 0
        if counts is None:
            assert side is not None
            await repo.mark_failed(
                side, job.id, f"gave up after {job.attempts} attempts: {job.error}"
            )
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
