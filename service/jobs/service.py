"""The Global Update: one status for a selection of invoices, all or nothing, run within the
request or queued as a job for the worker (service/jobs/tasks.py).

Decisions (also in docs/FINANCE.md, "Writing off with the API"):
- The Global Update never changes a protected invoice unless current_status_in names its
  status (outcome `skipped_protected`): a person set that status on purpose.
- Size: the invoices selected by account_ref/invoice_numbers (before the filters). Up to
  settings.bulk_sync_limit run inside the request (one statement, one transaction); more are
  queued (202) and run by the worker in chunks of BULK_CHUNK, still in ONE transaction (all
  or nothing), its progress committed beside it in short transactions of their own.
- A dry run stores only its job record and results (so it can be fetched, paged and replayed
  by Idempotency-Key); invoices, status_history and outbox are not touched, no row is locked.
- Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): scoped by the API key's name,
  kept 24 h. Same key + same body: the stored job (200 when finished, 202 while queued or
  running in the worker); same key + different body: 422; same key while the first request is
  still being processed (not yet committed): 409.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from service import cursor
from service.errors import Conflict, NotFound, ServiceError, Unprocessable
from service.invoices import repository as invoices_repo
from service.invoices.edits import notify
from service.invoices.filters import checked_filter, filter_context, filter_sql
from service.invoices.schemas import BulkStatusRequest, InvoiceFilter, JobOut
from service.jobs import repository as repo
from service.jobs.bulk import BulkPlan, ChunkCounts, run_chunk
from service.ledger import locks
from service.ledger.settings import LedgerSettings
from service.metrics import BULK_JOBS, STATUS_CHANGES
from service.picklist.service import ensure_allowed, ensure_known_statuses
from service.settings import Settings

IDEMPOTENCY_TTL_HOURS = 24
BULK_CHUNK = 10_000
MAX_ATTEMPTS = 3
MAX_KEY_LENGTH = 255

Progress = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Submitted:
    job: JobOut
    finished: bool
    replayed: bool


def idempotency_key(header: str | None) -> str | None:
    """The key from the header: an sf-string per the draft ("..."); a bare token is accepted."""
    if header is None:
        return None
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LENGTH or not all(0x20 <= ord(ch) < 0x7F for ch in key):
        raise ServiceError(
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable ASCII characters, "
            'e.g. Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"'
        )
    return key


def request_digest(body: BulkStatusRequest) -> bytes:
    canonical = json.dumps(
        {"kind": repo.BULK_KIND, "request": body.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).digest()


async def submit_bulk(
    conn: AsyncConnection,
    settings: Settings,
    *,
    actor: str,
    body: BulkStatusRequest,
    key: str | None,
    results_limit: int,
) -> Submitted:
    digest = request_digest(body)
    if key is not None:
        if not await repo.try_lock_key(conn, locks.idempotency_key(actor, key)):
            raise Conflict(
                "a request with this Idempotency-Key is still being processed; "
                "retry in a moment to get its result",
                headers={"Retry-After": "1"},
            )
        stored = await repo.find_job_by_key(conn, actor, key)
        if stored is not None:
            if bytes(stored.request_sha256) != digest:
                raise Unprocessable(
                    "this Idempotency-Key was already used with a different request body; "
                    "use a new key for a different request"
                )
            job = await job_view(conn, stored.id, results_limit=results_limit)
            return Submitted(job=job, finished=_finished(job.status), replayed=True)

    await ensure_allowed(conn, body.status)
    body = await _checked_body(conn, body)
    numbers = _unique(body.invoice_numbers)
    if numbers is not None:
        size = len(numbers)
    else:
        size = await invoices_repo.count_matching(
            conn, _selection(body), filter_context(settings.ledger)
        )
    job_id = uuid.uuid4()
    queued = size > settings.bulk_sync_limit
    await repo.insert_job(
        conn,
        job_id=job_id,
        status="queued" if queued else "running",
        request=body.model_dump(mode="json"),
        request_sha256=digest,
        idempotency_key=key,
        actor=actor,
        dry_run=body.dry_run,
        total=size,
        key_ttl_hours=IDEMPOTENCY_TTL_HOURS,
    )
    if queued:
        await repo.notify_jobs(conn)
        BULK_JOBS.labels("queued", "queued").inc()
    else:
        counts = await execute(
            conn, settings.ledger, job_id=job_id, actor=actor, body=body, chunk=None
        )
        await repo.finish_job(conn, job_id, counts)
        BULK_JOBS.labels("inline", "succeeded").inc()
        if not body.dry_run and counts.updated:
            STATUS_CHANGES.labels("bulk", body.status).inc(counts.updated)
    job = await job_view(conn, job_id, results_limit=results_limit)
    return Submitted(job=job, finished=not queued, replayed=False)


async def _checked_body(conn: AsyncConnection, body: BulkStatusRequest) -> BulkStatusRequest:
    """Every status the selection names must be one an invoice can carry: a mistyped one in
    `current_status_in` would otherwise select nothing, silently."""
    if body.current_status_in:
        await ensure_known_statuses(
            conn, body.current_status_in, loc="body", field="current_status_in"
        )
    if body.filter is None:
        return body
    checked = await checked_filter(conn, body.filter, loc="body.filter")
    return body.model_copy(update={"filter": checked})


def _selection(body: BulkStatusRequest) -> InvoiceFilter:
    """The keyset selection: the filter, narrowed to account_ref when both are given."""
    selection = body.filter or InvoiceFilter()
    if body.account_ref is not None and selection.account_ref is None:
        selection = selection.model_copy(update={"account_ref": body.account_ref})
    return selection


def _unique(numbers: list[str] | None) -> list[str] | None:
    """Each number once, in code-point order (= COLLATE "C"), so rows lock in one order."""
    return None if numbers is None else sorted(set(numbers))


async def execute(
    conn: AsyncConnection,
    ledger: LedgerSettings,
    *,
    job_id: uuid.UUID,
    actor: str | None,
    body: BulkStatusRequest,
    chunk: int | None,
    progress: Progress | None = None,
) -> ChunkCounts:
    """Run the whole selection in the caller's transaction: one statement per chunk (one in
    all when `chunk` is None), then NOTIFY the CRM dispatcher and reconciliation."""
    protected = list(ledger.protected_statuses)
    where, params = "", dict[str, Any]()
    if body.filter is not None:
        where, params = filter_sql(body.filter, filter_context(ledger))
    plan = BulkPlan(
        job_id=job_id,
        to_status=body.status,
        to_protected=body.status in protected,
        protected_statuses=protected,
        actor=actor,
        reason=body.reason,
        account_ref=body.account_ref,
        current_status_in=body.current_status_in,
        only_settled=body.only_settled,
        dry_run=body.dry_run,
        filter_where=where,
        filter_params=params,
    )
    total = ChunkCounts()
    numbers = _unique(body.invoice_numbers)
    if numbers is not None:
        step = chunk or max(len(numbers), 1)
        for start in range(0, len(numbers), step):
            part = await run_chunk(
                conn, plan, offset=total.rows, numbers=numbers[start : start + step]
            )
            total.add(part)
            if progress is not None:
                await progress(total.rows)
    else:
        after: str | None = None
        while True:
            # Keyset over the account's invoices; stop on an empty chunk only (a row that
            # changed account under FOR UPDATE can make a chunk short without being the last).
            part = await run_chunk(
                conn, plan, offset=total.rows, after=after, chunk=chunk or 2**31 - 1
            )
            if part.rows == 0:
                break
            total.add(part)
            after = part.last_key
            if progress is not None:
                await progress(total.rows)
    if not body.dry_run:
        await notify(conn, outbox=total.updated > 0, dirty=total.released > 0)
    return total


def _finished(status: str) -> bool:
    return status in ("succeeded", "failed")


async def job_view(
    conn: AsyncConnection,
    job_id: uuid.UUID,
    *,
    results_limit: int,
    results_cursor: str | None = None,
    outcome: str | None = None,
) -> JobOut:
    job = await repo.get_job(conn, job_id)
    if job is None:
        raise NotFound(f"no job '{job_id}'")
    # A results cursor pages one job's results with one outcome filter, and no other.
    paged = f"{job_id}:{outcome or ''}"
    after_seq = 0
    if results_cursor is not None:
        values = cursor.decode(
            results_cursor, param="results_cursor", fields={"seq": int, "q": str}
        )
        if values["q"] != paged:
            raise cursor.mismatch("results_cursor")
        after_seq = values["seq"]
    rows = await repo.job_results(
        conn, job_id, after_seq=after_seq, limit=results_limit + 1, outcome=outcome
    )
    page = rows[:results_limit]
    next_cursor = None
    if len(rows) > results_limit:
        next_cursor = cursor.encode({"seq": page[-1].seq, "q": paged})
    return JobOut.model_validate(
        {
            **job._mapping,
            "job_id": job.id,
            "progress": job,
            "results": page,
            "next_results_cursor": next_cursor,
        }
    )


async def job_request(conn: AsyncConnection, job_id: uuid.UUID) -> BulkStatusRequest:
    """What a Global Update job was asked to do (to apply what a dry run previewed)."""
    stored = await repo.job_request(conn, job_id)
    if stored is None:
        raise NotFound(f"no Global Update job '{job_id}'")
    return BulkStatusRequest.model_validate(stored)


async def run_queued_job(
    conn: AsyncConnection, ledger: LedgerSettings, job: Row[Any], progress: Progress
) -> ChunkCounts:
    """The worker's half: the whole job in the caller's (one) transaction, chunk by chunk."""
    body = BulkStatusRequest.model_validate(job.request)
    # The target may have left the picklist since the request; hold it until commit.
    await ensure_allowed(conn, body.status)
    body = await _checked_body(conn, body)
    counts = await execute(
        conn,
        ledger,
        job_id=job.id,
        actor=job.actor,
        body=body,
        chunk=BULK_CHUNK,
        progress=progress,
    )
    await repo.finish_job(conn, job.id, counts)
    return counts
