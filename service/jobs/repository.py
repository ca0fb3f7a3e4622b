"""The SQL of Global Update jobs: recorded (with their Idempotency-Key), read with their
paged results, claimed by a worker, and what a worker records of one it runs."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Row
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.jobs.bulk import ChunkCounts
from service.ledger import locks

BULK_KIND = "bulk_status"


async def try_lock_key(conn: AsyncConnection, lock_id: int) -> bool:
    """Held until the transaction ends: a second request with the same Idempotency-Key while
    the first is in flight does not get it."""
    row = await conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_id})
    return bool(row.scalar_one())


async def find_job_by_key(conn: AsyncConnection, actor: str, key: str) -> Row[Any] | None:
    """The live job stored under this key; an expired key is released for reuse first."""
    await conn.execute(
        sa.text(
            "UPDATE jobs SET idempotency_key = NULL "
            "WHERE actor = :a AND idempotency_key = :k AND expires_at <= now()"
        ),
        {"a": actor, "k": key},
    )
    row = await conn.execute(
        sa.text("SELECT * FROM jobs WHERE actor = :a AND idempotency_key = :k"),
        {"a": actor, "k": key},
    )
    return row.first()


async def insert_job(
    conn: AsyncConnection,
    *,
    job_id: uuid.UUID,
    status: str,
    request: dict[str, Any],
    request_sha256: bytes,
    idempotency_key: str | None,
    actor: str,
    dry_run: bool,
    total: int,
    key_ttl_hours: int,
) -> None:
    await conn.execute(
        sa.text(
            """
            INSERT INTO jobs (id, kind, status, request, request_sha256, idempotency_key, actor,
                              dry_run, total, started_at, expires_at)
            VALUES (:id, :kind, :status, :request, :sha, :key, :actor, :dry_run, :total,
                    CASE WHEN :started THEN clock_timestamp() END,
                    now() + make_interval(hours => :ttl))
            """
        ).bindparams(
            sa.bindparam("request", type_=pg.JSONB), sa.bindparam("started", type_=sa.Boolean)
        ),
        {
            "id": job_id,
            "started": status == "running",
            "kind": BULK_KIND,
            "status": status,
            "request": request,
            "sha": request_sha256,
            "key": idempotency_key,
            "actor": actor,
            "dry_run": dry_run,
            "total": total,
            "ttl": key_ttl_hours,
        },
    )


async def finish_job(conn: AsyncConnection, job_id: uuid.UUID, counts: ChunkCounts) -> None:
    await conn.execute(
        sa.text(
            """
            UPDATE jobs
               SET status = 'succeeded', finished_at = clock_timestamp(), error = NULL,
                   total = :rows, processed = :rows, matched = :matched, updated = :updated,
                   unchanged = :unchanged, skipped = :skipped,
                   skipped_protected = :skipped_protected, not_found = :not_found
             WHERE id = :id
            """
        ),
        {
            "id": job_id,
            "rows": counts.rows,
            "matched": counts.matched,
            "updated": counts.updated,
            "unchanged": counts.unchanged,
            "skipped": counts.skipped,
            "skipped_protected": counts.skipped_protected,
            "not_found": counts.not_found,
        },
    )


async def get_job(conn: AsyncConnection, job_id: uuid.UUID) -> Row[Any] | None:
    row = await conn.execute(
        sa.text(
            "SELECT id, kind, status, dry_run, request ->> 'status' AS to_status, total, "
            "processed, matched, updated, unchanged, skipped, skipped_protected, not_found, "
            "error, created_at, started_at, finished_at FROM jobs WHERE id = :id"
        ),
        {"id": job_id},
    )
    return row.first()


async def job_request(conn: AsyncConnection, job_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.execute(
        sa.text("SELECT request FROM jobs WHERE id = :id AND kind = :kind"),
        {"id": job_id, "kind": BULK_KIND},
    )
    value = row.scalar_one_or_none()
    return value if isinstance(value, dict) else None


async def job_results(
    conn: AsyncConnection,
    job_id: uuid.UUID,
    *,
    after_seq: int,
    limit: int,
    outcome: str | None,
) -> list[Row[Any]]:
    where = "AND outcome = :outcome" if outcome is not None else ""
    params: dict[str, Any] = {"id": job_id, "after": after_seq, "limit": limit}
    if outcome is not None:
        params["outcome"] = outcome
    rows = await conn.execute(
        sa.text(
            "SELECT seq, invoice_number, from_status, to_status, outcome FROM job_results "
            f"WHERE job_id = :id AND seq > :after {where} ORDER BY seq LIMIT :limit"
        ),
        params,
    )
    return list(rows)


async def notify_jobs(conn: AsyncConnection) -> None:
    await contracts.notify(conn, contracts.JOBS_CHANNEL)


# --- a worker running a job ------------------------------------------------------------------


async def claim_job(conn: AsyncConnection) -> Row[Any] | None:
    """The oldest queued job, or a running one whose worker died (its lock is free).

    The claim is a transaction-level advisory lock, the SKIP LOCKED of this queue: unlike a
    row lock it leaves the job row free, so progress can be committed in transactions of its own
    while the whole job stays one transaction.
    """
    candidates = await conn.execute(
        sa.text(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND kind = :kind "
            "ORDER BY created_at LIMIT 20"
        ),
        {"kind": BULK_KIND},
    )
    for (job_id,) in list(candidates):
        locked = await conn.execute(
            sa.text("SELECT pg_try_advisory_xact_lock(:c, hashtext(CAST(:id AS text)))"),
            {"c": locks.JOBS, "id": str(job_id)},
        )
        if not locked.scalar_one():
            continue
        # Re-read under the lock: another worker may have finished it meanwhile.
        row = await conn.execute(
            sa.text("SELECT * FROM jobs WHERE id = :id AND status IN ('queued', 'running')"),
            {"id": job_id},
        )
        job = row.first()
        if job is not None:
            return job
    return None


async def mark_running(conn: AsyncConnection, job_id: uuid.UUID, total: int) -> None:
    await conn.execute(
        sa.text(
            "UPDATE jobs SET status = 'running', started_at = coalesce(started_at, now()), "
            "attempts = attempts + 1, processed = 0, total = :total WHERE id = :id"
        ),
        {"id": job_id, "total": total},
    )


async def report_progress(conn: AsyncConnection, job_id: uuid.UUID, processed: int) -> None:
    await conn.execute(
        sa.text("UPDATE jobs SET processed = :p, total = greatest(total, :p) WHERE id = :id"),
        {"id": job_id, "p": processed},
    )


async def mark_failed(conn: AsyncConnection, job_id: uuid.UUID, error: str) -> None:
    await conn.execute(
        sa.text(
            "UPDATE jobs SET status = 'failed', error = :e, finished_at = clock_timestamp(), "
            "processed = 0 "
            "WHERE id = :id AND status IN ('queued', 'running')"
        ),
        {"id": job_id, "e": error},
    )


async def mark_retry(conn: AsyncConnection, job_id: uuid.UUID, error: str) -> None:
    await conn.execute(
        sa.text(
            "UPDATE jobs SET status = 'queued', error = :e, processed = 0 "
            "WHERE id = :id AND status = 'running'"
        ),
        {"id": job_id, "e": error},
    )
