"""All SQL of invoices, a person's edit, and the Global Update (jobs and their results)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.invoices.models import Invoice
from service.invoices.schemas import InvoiceFilter
from service.ledger import locks
from service.ledger.classify import allocation_kind_sql
from service.ledger.dirty import mark_dirty
from service.ledger.settings import LedgerSettings

INVOICES: sa.Table = Invoice.metadata.tables["invoices"]
BULK_KIND = "bulk_status"


# --- reads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterContext:
    """What a filter needs from the settings: which statuses are protected, and the label of
    each derived state (to tell a divergent status)."""

    protected_statuses: list[str]
    labels: dict[str, str]


def filter_sql(
    f: InvoiceFilter, ctx: FilterContext, *, prefix: str = "f_"
) -> tuple[str, dict[str, Any]]:
    """The filter as `AND ...` conditions over `invoices AS i`, with their bind parameters.

    The one definition of every list filter: the list, its counts and the Global Update's
    selection all use it, so a dry run selects exactly what the list showed."""
    clauses: list[str] = []
    params: dict[str, Any] = {f"{prefix}protected": ctx.protected_statuses}
    is_protected = f"i.status = ANY(CAST(:{prefix}protected AS text[]))"
    # `is not None`, never truthiness: an empty list (refused by the schema) must select
    # nothing here rather than drop the criterion and select everything.
    if f.status is not None:
        clauses.append(f"i.status = ANY(CAST(:{prefix}statuses AS text[]))")
        params[f"{prefix}statuses"] = list(f.status)
    if f.account_ref is not None:
        clauses.append(f"i.account_ref = CAST(:{prefix}account AS text)")
        params[f"{prefix}account"] = f.account_ref
    if f.protected is not None:
        clauses.append(is_protected if f.protected else f"NOT ({is_protected})")
    if f.derived_state is not None:
        clauses.append(f"i.derived_state = ANY(CAST(:{prefix}states AS text[]))")
        params[f"{prefix}states"] = list(f.derived_state)
    _flag(clauses, f.written_off, "i.written_off > 0")
    _flag(clauses, f.conflict, "i.conflict IS NOT NULL")
    _flag(clauses, f.mismatch, "i.mismatch")
    if f.divergent is not None:
        # The reconciliation report's `status_differs`, in the same terms.
        states = list(ctx.labels)
        whens = " ".join(
            f"WHEN :{prefix}state_{n} THEN :{prefix}label_{n}" for n in range(len(states))
        )
        for n, state in enumerate(states):
            params[f"{prefix}state_{n}"] = state
            params[f"{prefix}label_{n}"] = ctx.labels[state]
        expected = f"(CASE i.derived_state {whens} END)"
        _flag(
            clauses,
            f.divergent,
            f"(NOT ({is_protected}) AND {expected} IS NOT NULL AND i.status <> {expected})",
        )
    if f.updated_since is not None:
        clauses.append(f"i.updated_at >= CAST(:{prefix}updated_since AS timestamptz)")
        params[f"{prefix}updated_since"] = f.updated_since
    return "".join(f" AND {c}" for c in clauses), params


def _flag(clauses: list[str], wanted: bool | None, condition: str) -> None:
    if wanted is not None:
        clauses.append(condition if wanted else f"NOT coalesce({condition}, false)")


async def list_invoices(
    conn: AsyncConnection,
    f: InvoiceFilter,
    ctx: FilterContext,
    *,
    after: str | None,
    limit: int,
) -> list[Row[Any]]:
    """One page in invoice-number order, keyset after `after` (the key never changes, so
    paging under concurrent writes neither repeats nor skips an invoice)."""
    where, params = filter_sql(f, ctx)
    keyset = ""
    if after is not None:
        keyset = " AND i.invoice_number > CAST(:after AS text)"
        params["after"] = after
    params["limit"] = limit
    rows = await conn.execute(
        sa.text(
            f"SELECT i.* FROM invoices AS i WHERE true{where}{keyset} "
            "ORDER BY i.invoice_number LIMIT :limit"
        ),
        params,
    )
    return list(rows)


async def count_matching(conn: AsyncConnection, f: InvoiceFilter, ctx: FilterContext) -> int:
    # A WHERE, not count_each's FILTER: an account's invoices are counted from its index.
    where, params = filter_sql(f, ctx)
    row = await conn.execute(
        sa.text(f"SELECT count(*) FROM invoices AS i WHERE true{where}"), params
    )
    return int(row.scalar_one())


async def count_each(
    conn: AsyncConnection, filters: list[InvoiceFilter], ctx: FilterContext
) -> list[int]:
    """How many invoices each filter selects, in one pass over the table."""
    if len(filters) == 1:
        return [await count_matching(conn, filters[0], ctx)]
    columns: list[str] = []
    params: dict[str, Any] = {}
    for n, f in enumerate(filters):
        where, own = filter_sql(f, ctx, prefix=f"f{n}_")
        columns.append(f"count(*) FILTER (WHERE true{where})")
        params.update(own)
    row = await conn.execute(sa.text(f"SELECT {', '.join(columns)} FROM invoices AS i"), params)
    return [int(value) for value in row.one()]


async def status_counts(conn: AsyncConnection) -> list[tuple[str, int]]:
    rows = await conn.execute(
        sa.text("SELECT status, count(*) FROM invoices GROUP BY status ORDER BY status")
    )
    return [(row[0], int(row[1])) for row in rows]


async def get_invoice(conn: AsyncConnection, invoice_number: str) -> Row[Any] | None:
    t = INVOICES
    row = await conn.execute(sa.select(t).where(t.c.invoice_number == invoice_number))
    return row.first()


async def history(conn: AsyncConnection, invoice_number: str) -> list[Row[Any]]:
    rows = await conn.execute(
        sa.text(
            "SELECT at, from_status, to_status, from_outstanding, to_outstanding, source, actor, "
            "reason, run_id, job_id FROM status_history WHERE invoice_number = :n ORDER BY id"
        ),
        {"n": invoice_number},
    )
    return list(rows)


async def si_posting(conn: AsyncConnection, tran_number: int) -> Row[Any] | None:
    row = await conn.execute(
        sa.text(
            "SELECT tran_number, date, reference, details, nominal_code, net_amount AS net, "
            "tax_amount AS tax, gross_amount AS gross, outstanding AS sage_outstanding, deleted "
            "FROM postings WHERE tran_number = :t"
        ),
        {"t": tran_number},
    )
    return row.first()


async def allocations(
    conn: AsyncConnection, tran_number: int, ledger: LedgerSettings
) -> list[Row[Any]]:
    """Every allocation against the SI with its settling posting, and what it counts as:
    the reconcile's own classification (service.ledger.classify.allocation_kind_sql)."""
    kind, params = allocation_kind_sql("p.type", "p", ledger)
    rows = await conn.execute(
        sa.text(
            f"""
            SELECT a.posting_tran_number, p.type, p.date, p.reference, p.details,
                   p.nominal_code, a.amount, a.deleted OR coalesce(p.deleted, false) AS deleted,
                   {kind} AS kind
              FROM allocations AS a
              LEFT JOIN postings AS p ON p.tran_number = a.posting_tran_number
             WHERE a.invoice_tran_number = :t
             ORDER BY p.date NULLS LAST, a.posting_tran_number, a.seq
            """
        ),
        {**params, "t": tran_number},
    )
    return list(rows)


# --- a person's edit -------------------------------------------------------------------------


async def lock_invoice(conn: AsyncConnection, invoice_number: str) -> Row[Any] | None:
    row = await conn.execute(
        sa.text(
            "SELECT invoice_number, status, outstanding FROM invoices "
            "WHERE invoice_number = :n FOR UPDATE"
        ),
        {"n": invoice_number},
    )
    return row.first()


_MANUAL_CHANGE = sa.text(
    """
    WITH upd AS (
        UPDATE invoices
           SET status = CAST(:to AS text),
               updated_at = now(),
               conflict = CASE WHEN :release THEN NULL ELSE conflict END
         WHERE invoice_number = :n
     RETURNING invoice_number, outstanding
    ), released AS (
        {released}
    ), hist AS ({history}
    )
    {outbox}
    """.format(
        released=mark_dirty(from_="upd", where=":release"),
        history=contracts.insert_history(
            source="manual",
            invoice_number="invoice_number",
            from_status="CAST(:from AS text)",
            to_status="CAST(:to AS text)",
            from_outstanding="outstanding",
            to_outstanding="outstanding",
            actor=":actor",
            reason=":reason",
            from_="upd",
            returning="id, invoice_number, to_outstanding",
        ),
        outbox=contracts.insert_outbox(
            source="manual",
            invoice_number="invoice_number",
            status="CAST(:to AS text)",
            outstanding="to_outstanding",
            history_id="id",
            from_="hist",
        ),
    )
).bindparams(sa.bindparam("release", type_=sa.Boolean))


async def write_manual_change(
    conn: AsyncConnection,
    *,
    invoice_number: str,
    from_status: str,
    to_status: str,
    actor: str,
    reason: str | None,
    release: bool,
) -> None:
    """Invoice row, status_history and outbox in one statement; the caller holds the row lock."""
    await conn.execute(
        _MANUAL_CHANGE,
        {
            "n": invoice_number,
            "from": from_status,
            "to": to_status,
            "actor": actor,
            "reason": reason,
            "release": release,
        },
    )
    await notify(conn, outbox=True, dirty=release)


async def notify(conn: AsyncConnection, *, outbox: bool, dirty: bool) -> None:
    """Wake the CRM dispatcher / reconciliation (delivered when the transaction commits)."""
    if outbox:
        await contracts.notify(conn, contracts.OUTBOX_CHANNEL)
    if dirty:
        await contracts.notify(conn, contracts.DIRTY_CHANNEL)


# --- the Global Update -----------------------------------------------------------------------


@dataclass(frozen=True)
class BulkPlan:
    """Everything one chunk statement needs; the SQL text depends only on the flags, never on
    values, which always travel as bind parameters."""

    job_id: uuid.UUID
    to_status: str
    to_protected: bool
    protected_statuses: list[str]
    actor: str | None
    reason: str | None
    account_ref: str | None
    current_status_in: list[str] | None
    only_settled: bool
    dry_run: bool
    # filter_sql() of the request's filter: an addition to the keyset selection.
    filter_where: str = ""
    filter_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChunkCounts:
    rows: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    skipped_protected: int = 0
    not_found: int = 0
    released: int = 0
    last_key: str | None = None

    @property
    def matched(self) -> int:
        return self.updated + self.unchanged + self.skipped_protected

    def add(self, other: ChunkCounts) -> None:
        for name in (
            "rows",
            "updated",
            "unchanged",
            "skipped",
            "skipped_protected",
            "not_found",
            "released",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_key = other.last_key


# A protected invoice moved to an unprotected status is recomputed (contract 1).
_BULK_RELEASED = mark_dirty(from_="upd", where="released", order_by="invoice_number")
_BULK_HISTORY = contracts.insert_history(
    source="bulk",
    invoice_number="invoice_number",
    from_status="from_status",
    to_status="CAST(:to AS text)",
    from_outstanding="outstanding",
    to_outstanding="outstanding",
    actor="CAST(:actor AS text)",
    reason="CAST(:reason AS text)",
    job_id="CAST(:job_id AS uuid)",
    from_="upd",
    returning="id, invoice_number, to_outstanding",
)
_BULK_OUTBOX = contracts.insert_outbox(
    source="bulk",
    invoice_number="invoice_number",
    status="CAST(:to AS text)",
    outstanding="to_outstanding",
    history_id="id",
    from_="hist",
)


def _chunk_sql(plan: BulkPlan, *, by_numbers: bool, keyset: bool) -> str:
    lock = "" if plan.dry_run else "FOR UPDATE OF i"
    if by_numbers:
        selection = f"""
        req AS (
            SELECT r.n AS invoice_number, r.ord
              FROM unnest(CAST(:numbers AS text[])) WITH ORDINALITY AS r(n, ord)
        ),
        cand AS (
            SELECT i.invoice_number, i.account_ref, i.status, i.outstanding
              FROM invoices i
             WHERE i.invoice_number = ANY(CAST(:numbers AS text[]))
             ORDER BY i.invoice_number COLLATE "C"
             {lock}
        ),"""
        source = "req LEFT JOIN cand c ON c.invoice_number = req.invoice_number"
        number, ordinal = "req.invoice_number", "req.ord"
    else:
        after = "AND i.invoice_number > CAST(:after AS text)" if keyset else ""
        account = "AND i.account_ref = CAST(:account_ref AS text)" if plan.account_ref else ""
        selection = f"""
        cand AS (
            SELECT i.invoice_number, i.account_ref, i.status, i.outstanding
              FROM invoices i
             WHERE true {account}{plan.filter_where} {after}
             ORDER BY i.invoice_number
             LIMIT :chunk
             {lock}
        ),"""
        source = "cand c"
        number, ordinal = "c.invoice_number", "row_number() OVER (ORDER BY c.invoice_number)"
    whens: list[str] = []
    if by_numbers:
        whens.append("WHEN c.invoice_number IS NULL THEN 'not_found'")
        if plan.account_ref is not None:
            whens.append("WHEN c.account_ref <> CAST(:account_ref AS text) THEN 'skipped'")
    if plan.current_status_in is not None:
        whens.append("WHEN NOT (c.status = ANY(CAST(:current_in AS text[]))) THEN 'skipped'")
    if plan.only_settled:
        whens.append("WHEN c.outstanding > 0 THEN 'skipped'")
    whens.append("WHEN c.status = CAST(:to AS text) THEN 'unchanged'")
    if plan.current_status_in is None:
        # A protected status was set by a person on purpose: only a Global Update that names
        # it in current_status_in may change it.
        whens.append("WHEN c.status = ANY(CAST(:protected AS text[])) THEN 'skipped_protected'")
    outcome = "CASE " + " ".join(whens) + " ELSE 'updated' END"
    writes = ""
    if not plan.dry_run:
        writes = f"""
        upd AS (
            UPDATE invoices i
               SET status = CAST(:to AS text),
                   updated_at = now(),
                   conflict = CASE WHEN p.released THEN NULL ELSE i.conflict END
              FROM plan p
             WHERE p.outcome = 'updated' AND i.invoice_number = p.invoice_number
         RETURNING i.invoice_number, p.from_status, i.outstanding, p.released
        ),
        requeued AS (
            {_BULK_RELEASED}
        ),
        hist AS ({_BULK_HISTORY}
        ),
        ob AS ({_BULK_OUTBOX}
        ),"""
    return f"""
    WITH {selection}
    plan AS (
        SELECT {number} AS invoice_number, {ordinal} AS ord, c.status AS from_status,
               {outcome} AS outcome,
               coalesce(c.status = ANY(CAST(:protected AS text[])), false)
                 AND NOT CAST(:to_protected AS boolean) AS released
          FROM {source}
    ),{writes}
    res AS (
        INSERT INTO job_results (job_id, seq, invoice_number, from_status, to_status, outcome)
        SELECT CAST(:job_id AS uuid), CAST(:offset AS integer) + p.ord, p.invoice_number,
               p.from_status,
               CASE WHEN p.outcome IN ('updated', 'unchanged') THEN CAST(:to AS text) END,
               p.outcome
          FROM plan p
    )
    SELECT count(*) AS rows,
           count(*) FILTER (WHERE outcome = 'updated') AS updated,
           count(*) FILTER (WHERE outcome = 'unchanged') AS unchanged,
           count(*) FILTER (WHERE outcome = 'skipped') AS skipped,
           count(*) FILTER (WHERE outcome = 'skipped_protected') AS skipped_protected,
           count(*) FILTER (WHERE outcome = 'not_found') AS not_found,
           count(*) FILTER (WHERE outcome = 'updated' AND released) AS released,
           max(invoice_number) AS last_key
      FROM plan
    """


async def run_chunk(
    conn: AsyncConnection,
    plan: BulkPlan,
    *,
    offset: int,
    numbers: list[str] | None = None,
    after: str | None = None,
    chunk: int = 0,
) -> ChunkCounts:
    """One set-based statement: classify the chunk, write statuses, status_history, outbox and
    job_results for all of it. Rows to change are locked first, in key order."""
    by_numbers = numbers is not None
    sql = _chunk_sql(plan, by_numbers=by_numbers, keyset=after is not None)
    params: dict[str, Any] = {
        "job_id": plan.job_id,
        "to": plan.to_status,
        "to_protected": plan.to_protected,
        "protected": plan.protected_statuses,
        "offset": offset,
    }
    if not plan.dry_run:
        params.update(actor=plan.actor, reason=plan.reason)
    if by_numbers:
        params["numbers"] = numbers
    else:
        params.update(chunk=chunk)
        if after is not None:
            params["after"] = after
    if plan.account_ref is not None:
        params["account_ref"] = plan.account_ref
    if plan.current_status_in is not None:
        params["current_in"] = plan.current_status_in
    if not by_numbers:
        params.update(plan.filter_params)
    row = (await conn.execute(sa.text(sql), params)).one()
    return ChunkCounts(
        rows=row.rows,
        updated=row.updated,
        unchanged=row.unchanged,
        skipped=row.skipped,
        skipped_protected=row.skipped_protected,
        not_found=row.not_found,
        released=row.released,
        last_key=row.last_key,
    )


# --- jobs ------------------------------------------------------------------------------------


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


# --- the worker's side of jobs ---------------------------------------------------------------


async def claim_job(conn: AsyncConnection) -> Row[Any] | None:
    """The oldest queued job, or a running one whose worker died (its lock is free).

    The claim is a transaction-level advisory lock, the SKIP LOCKED of this queue: unlike a
    row lock it leaves the job row free, so progress can be committed on another connection
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
