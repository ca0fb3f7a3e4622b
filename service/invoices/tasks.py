"""Worker task: run queued Global Update jobs (registered in service/tasks.py)."""

from __future__ import annotations

from service.context import WorkerContext
from service.errors import ServiceError
from service.invoices import repository as repo
from service.invoices import service
from service.logging import get_logger
from service.metrics import BULK_JOBS, STATUS_CHANGES

log = get_logger(__name__)


async def run_once(ctx: WorkerContext) -> int:
    """Claim one queued job and run it to the end; return 1, or 0 when there was none.

    The whole job is one transaction (all or nothing). Progress is committed on a second,
    autocommit connection so GET /v1/jobs/{id} shows it while the job runs. When the worker
    dies, PostgreSQL rolls the job back and frees its lock; the next claim starts it again.
    """
    async with ctx.engine.connect() as conn:
        trans = await conn.begin()
        job = await repo.claim_job(conn)
        if job is None:
            await trans.rollback()
            return 0
        async with ctx.engine.connect() as side_conn:
            side = await side_conn.execution_options(isolation_level="AUTOCOMMIT")
            if job.attempts >= service.MAX_ATTEMPTS:
                await trans.rollback()
                await repo.mark_failed(
                    side, job.id, f"gave up after {job.attempts} attempts: {job.error}"
                )
                BULK_JOBS.labels("worker", "failed").inc()
                return 1
            await repo.mark_running(side, job.id, job.total)
            log.info("bulk.job.started", job_id=str(job.id), total=job.total)

            async def progress(processed: int) -> None:
                await repo.report_progress(side, job.id, processed)

            try:
                counts = await service.run_queued_job(conn, ctx.settings, job, progress)
                await trans.commit()
            except ServiceError as exc:
                # A rule says no (e.g. the status left the picklist): retrying cannot help.
                await trans.rollback()
                await repo.mark_failed(side, job.id, exc.detail)
                BULK_JOBS.labels("worker", "failed").inc()
                log.warning("bulk.job.failed", job_id=str(job.id), error=exc.detail)
                return 1
            except Exception as exc:
                await trans.rollback()
                error = f"attempt {job.attempts + 1} failed: {type(exc).__name__}: {exc}"
                if job.attempts + 1 >= service.MAX_ATTEMPTS:
                    await repo.mark_failed(side, job.id, error)
                    BULK_JOBS.labels("worker", "failed").inc()
                else:
                    await repo.mark_retry(side, job.id, error)
                log.warning("bulk.job.attempt_failed", job_id=str(job.id), error=error)
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
