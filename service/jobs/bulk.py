"""The Global Update's statement: one per chunk of the selection, classifying each invoice
(updated, unchanged, skipped, protected, not found) and writing statuses, status_history,
outbox and the job's results for the whole chunk, set-based."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.ledger.dirty import mark_dirty


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
