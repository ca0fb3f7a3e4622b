"""The reconcile statement: one per batch, in the caller's transaction.

It aggregates the live allocations of the batch's invoices, classifies them
(service.ledger.classify), derives the state and the label to write, and writes invoice +
status_history + outbox + sync_run_changes + the run's counts, set-based. The claim is a
separate, earlier statement of the same transaction, so the compute statement's snapshot is
taken while the rows are already locked: anything committed before it is seen, anything not
yet committed (an ingest waiting on our row lock) marks the invoice dirty again after we
commit. Nothing is lost and nothing is done twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.db import driver_connection
from service.ledger.classify import allocation_kind_sql
from service.ledger.settings import LedgerSettings, WriteOffMode
from service.ledger.vocabulary import (
    ALLOCATION_KINDS,
    DERIVED_STATES,
    SAGELINK_FALLBACK,
    sql_literal,
)
from service.reconcile.runs import RunScope

# The kinds the sums below name, as SQL literals (a kind the vocabulary lacks is a KeyError).
_KIND_LITERALS = {kind: sql_literal(kind) for kind in ALLOCATION_KINDS}

# The state shown in the `sagelink` write-off mode: what SageLink would show.
_SAGELINK_STATE = (
    "CASE figures.true_state "
    + " ".join(
        f"WHEN {sql_literal(state)} THEN {sql_literal(shown)}"
        for state, shown in SAGELINK_FALLBACK.items()
        if shown != state
    )
    + " ELSE figures.true_state END"
)

_BIG_BATCH = 1000
_HUGE_BATCH = 10_000
_BIG_BATCH_WORK_MEM = "64MB"

# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------

# The invoice row is locked and the queue row deleted, in one statement. The invoice row
# orders ingest and the worker (contract 1 in docs/ARCHITECTURE.md): ingest holds it FOR KEY
# SHARE while it stores postings that concern it, so an invoice with uncommitted postings is
# skipped here, and an ingest arriving now waits for this transaction and queues the invoice
# again after it. Deleting the queue row is the claim's second half: a worker whose snapshot
# still shows a row another batch has deleted since finds it gone, and leaves the invoice to
# that batch (it holds the invoice's lock, harmlessly, until it commits). The rows are
# deleted by the tuple ids the claim read (a TID scan), never joined back by number (the
# planner then reads the whole queue). Sent on the asyncpg connection itself, skipping
# SQLAlchemy's handling of each of the batch's rows.
_CLAIM_DIRTY = """
WITH picked AS (
    SELECT d.ctid AS tid
    FROM dirty_invoices AS d
    JOIN invoices AS i ON i.invoice_number = d.invoice_number
    ORDER BY d.since
    LIMIT $1
    FOR UPDATE OF i SKIP LOCKED
)
DELETE FROM dirty_invoices AS d
WHERE d.ctid = ANY (ARRAY(SELECT tid FROM picked))
RETURNING d.invoice_number, d.since
"""


@dataclass(frozen=True)
class DirtyBatch:
    """Invoices a worker batch took off the queue, each with the time of its oldest mark."""

    numbers: list[str]
    since: list[datetime]


async def claim_dirty(conn: AsyncConnection, limit: int) -> DirtyBatch:
    """Lock up to `limit` dirty invoices, oldest first, skipping those another worker holds,
    and take them off the queue (undone if the transaction rolls back)."""
    rows = await (await driver_connection(conn)).fetch(_CLAIM_DIRTY, limit)
    return DirtyBatch([r[0] for r in rows], [r[1] for r in rows])


async def claim_for_run(
    conn: AsyncConnection,
    scope: RunScope,
    *,
    limit: int,
    after: str | None,
    dirty_bound: datetime | None,
    dry_run: bool,
) -> list[str]:
    """The next batch of a requested run.

    Scope `all` (and any account / invoice-list narrowing) walks invoice numbers in order
    (keyset on `after`) and waits for row locks in that order, so a worker's batch in hand is
    finished first and recomputed after it. Scope `dirty` takes what was dirty when the run
    started, skipping rows another worker is reconciling right now. A dry run locks nothing.
    """
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if scope.account_ref is not None:
        where.append("i.account_ref = :account_ref")
        params["account_ref"] = scope.account_ref
    if scope.invoice_numbers is not None:
        where.append("i.invoice_number = ANY(CAST(:numbers AS text[]))")
        params["numbers"] = scope.invoice_numbers
    source = "invoices AS i"
    if scope.scope == "dirty":
        source += " JOIN dirty_invoices AS d ON d.invoice_number = i.invoice_number"
    if scope.scope == "dirty" and not dry_run:
        where.append("d.since <= :bound")
        params["bound"] = dirty_bound
        order, lock = "d.since", "FOR UPDATE OF d, i SKIP LOCKED"
    else:
        if after is not None:
            where.append("i.invoice_number > :after")
            params["after"] = after
        order, lock = "i.invoice_number", "" if dry_run else "FOR UPDATE OF i"
    sql = (
        f"SELECT i.invoice_number FROM {source} "
        f"WHERE {' AND '.join(where) or 'true'} ORDER BY {order} LIMIT :limit {lock}"
    )
    rows = await conn.execute(sa.text(sql), params)
    return list(rows.scalars())


# ---------------------------------------------------------------------------------------------
# The statement
# ---------------------------------------------------------------------------------------------

# `labels`: each derived state's label and SageLink fallback, and whether the picklist holds
# them. `batch`: the batch's invoices, as locked. `sums`: their live allocations (allocation
# and settling posting not deleted), each `counted` with its kind
# (service.ledger.classify.allocation_kind_sql, the only definition): paid, refund,
# discounted, an exchange adjustment, written off, credited, or other, which counts for
# nothing. Each figure is summed twice: in the invoice's currency (`n_*`: the allocation's
# foreign amount; the amount itself for base-currency postings) and in the base currency
# (`b_*`). A revaluation moves base-currency money only: it is the exchange adjustment, in
# the base figures alone. `figures`: the figures and the state they show (`true_state`, from
# the invoice-currency figures). `outcome`: what to write, decided in steps: the state
# `shown` in the write-off mode (`n_state`), its label and the true state's
# (`labelled`), then every new value (`decided`). The writes follow (`*_writes`).
_COMPUTE = """
WITH
labels AS MATERIALIZED (
    SELECT given.state, given.label, given.fallback,
           given.label IN (SELECT value FROM picklist_values) AS label_ok,
           given.fallback IN (SELECT value FROM picklist_values) AS fallback_ok
    FROM unnest(
        CAST(:states AS text[]), CAST(:labels AS text[]), CAST(:fallbacks AS text[])
    ) AS given(state, label, fallback)
),
batch AS MATERIALIZED (
    SELECT i.ctid AS tid, i.invoice_number, i.sage_tran_number, i.gross, i.sage_outstanding,
           i.status, i.derived_state, i.outstanding, i.computed_outstanding, i.paid,
           i.discounted, i.written_off, i.credited, i.conflict, i.mismatch, i.warning,
           i.deleted, i.currency, i.gross_base, i.sage_outstanding_base,
           i.outstanding_base, i.computed_outstanding_base, i.paid_base, i.discounted_base,
           i.written_off_base, i.credited_base, i.exchange_adjustment,
           i.status = ANY(CAST(:protected AS text[])) AS protected
    FROM unnest(CAST(:numbers AS text[])) AS wanted(invoice_number)
    JOIN invoices AS i ON i.invoice_number = wanted.invoice_number
),
{queue}
sums AS (
    SELECT sage_tran_number,
           sum(CASE kind WHEN {kinds[paid]} THEN fx WHEN {kinds[refund]} THEN -fx END)
               AS paid,
           sum(CASE kind WHEN {kinds[discounted]} THEN fx END) AS discounted,
           sum(CASE kind WHEN {kinds[written_off]} THEN fx END) AS written_off,
           sum(CASE kind WHEN {kinds[credited]} THEN fx END) AS credited,
           sum(CASE kind WHEN {kinds[paid]} THEN amount
                           WHEN {kinds[refund]} THEN -amount END) AS b_paid,
           sum(CASE kind WHEN {kinds[discounted]} THEN amount END) AS b_discounted,
           sum(CASE kind WHEN {kinds[written_off]} THEN amount END) AS b_written_off,
           sum(CASE kind WHEN {kinds[credited]} THEN amount END) AS b_credited,
           sum(CASE kind WHEN {kinds[exchange_adjustment]} THEN amount END) AS b_exchange
    FROM (
        SELECT batch.sage_tran_number, a.amount, coalesce(a.foreign_amount, a.amount) AS fx,
               {allocation_kind} AS kind
        FROM batch
        JOIN allocations AS a ON a.invoice_tran_number = batch.sage_tran_number
                               AND NOT a.deleted AND NOT a.posting_deleted
        -- Only a credit's posting is read (its nominal code, details and reference classify
        -- it); the type and deleted flag of the others travel on the allocation. OFFSET 0
        -- keeps the subquery apart, so the type test gates the lookup (a one-time filter);
        -- pulled up into a join, the lookup ran for every allocation and the test after it.
        LEFT JOIN LATERAL (
            SELECT posting.nominal_code, posting.details, posting.reference
            FROM postings AS posting
            WHERE posting.tran_number = a.posting_tran_number AND a.posting_type = 'SC'
            OFFSET 0
        ) AS credit ON true
        WHERE NOT batch.deleted
        -- Not pulled up into the aggregate: there, each of the ten sums would repeat the
        -- classification (three regular expressions) for every allocation.
        OFFSET 0
    ) AS counted
    GROUP BY sage_tran_number
),
-- The figures and the state, computed once per invoice (materialized: inlined, the planner
-- would repeat the numeric arithmetic wherever a later expression names a figure).
figures AS MATERIALIZED (
    SELECT balanced.*,
           CASE
               WHEN n_balance <= 0 THEN
                   CASE
                       WHEN n_written_off <= 0 THEN 'paid'
                       WHEN n_paid > 0 OR n_discounted > 0 OR n_credited > 0
                           THEN 'paid_written_off'
                       ELSE 'written_off'
                   END
               WHEN n_balance < gross THEN 'part_paid'
               ELSE 'unpaid'
           END AS true_state,
           -- Sums no numeric(14,2) column can hold (a corrupt export): never written, never
           -- allowed to wedge the batch; the invoice is left as it is, with a warning.
           greatest(abs(n_paid), abs(n_discounted), abs(n_written_off),
                    abs(n_credited), abs(n_computed), abs(b_paid), abs(b_discounted),
                    abs(b_written_off), abs(b_credited), abs(b_exchange),
                    abs(b_computed)) >= 1000000000000 AS out_of_range
    FROM (
        SELECT computed.*, coalesce(sage_outstanding, n_computed) AS n_balance,
               coalesce(sage_outstanding_base, b_computed) AS b_balance
        FROM (
            SELECT batch.*, totals.*,
                   batch.gross - totals.n_paid - totals.n_discounted - totals.n_written_off
                       - totals.n_credited AS n_computed,
                   batch.gross_base - totals.b_paid - totals.b_discounted
                       - totals.b_written_off - totals.b_credited - totals.b_exchange
                       AS b_computed
            FROM batch
            LEFT JOIN sums ON sums.sage_tran_number = batch.sage_tran_number AND NOT batch.deleted
            CROSS JOIN LATERAL (
                SELECT coalesce(sums.paid, 0.00) AS n_paid,
                       coalesce(sums.discounted, 0.00) AS n_discounted,
                       coalesce(sums.written_off, 0.00) AS n_written_off,
                       coalesce(sums.credited, 0.00) AS n_credited,
                       coalesce(sums.b_paid, 0.00) AS b_paid,
                       coalesce(sums.b_discounted, 0.00) AS b_discounted,
                       coalesce(sums.b_written_off, 0.00) AS b_written_off,
                       coalesce(sums.b_credited, 0.00) AS b_credited,
                       coalesce(sums.b_exchange, 0.00) AS b_exchange
                OFFSET 0
            ) AS totals
        ) AS computed
        OFFSET 0
    ) AS balanced
),
outcome AS MATERIALIZED (
    SELECT decided.*,
           new_status IS DISTINCT FROM status AS status_changed,
           -- Never reconciled: the balance the row holds is ingestion's placeholder, so the
           -- first reconcile always tells the CRM the figures (outbox), even when unchanged.
           CASE WHEN derived_state IS NULL THEN NULL ELSE outstanding END
               AS from_outstanding,
           (new_status IS DISTINCT FROM status OR new_outstanding <> outstanding
            OR (derived_state IS NULL AND NOT frozen)) AS changed,
           CASE WHEN new_status IS DISTINCT FROM status THEN format(
               'derived %s%s from postings: paid %s, discounted %s, written off %s, '
               'credited %s, outstanding %s%s%s',
               n_state,
               CASE WHEN n_state <> true_state
                    THEN format(' (%s, shown as in SageLink)', true_state) ELSE '' END,
               n_paid, n_discounted, n_written_off, n_credited, n_balance,
               CASE WHEN currency IS NOT NULL AND currency <> CAST(:base_currency AS text)
                    THEN format(' %s (exchange adjustment %s %s)', currency,
                                b_exchange, CAST(:base_currency AS text))
                    ELSE '' END,
               CASE WHEN new_warning IS NOT NULL THEN '; ' || new_warning ELSE '' END
           ) END AS reason,
           (new_status IS DISTINCT FROM status
            OR new_outstanding <> outstanding
            OR new_state IS DISTINCT FROM derived_state
            OR new_computed IS DISTINCT FROM computed_outstanding
            OR new_paid <> paid OR new_discounted <> discounted
            OR new_written_off <> written_off OR new_credited <> credited
            OR new_outstanding_base <> outstanding_base
            OR new_computed_base IS DISTINCT FROM computed_outstanding_base
            OR new_paid_base <> paid_base OR new_discounted_base <> discounted_base
            OR new_written_off_base <> written_off_base
            OR new_credited_base <> credited_base
            OR new_exchange <> exchange_adjustment
            OR new_conflict IS DISTINCT FROM conflict
            OR new_mismatch <> mismatch
            OR new_warning IS DISTINCT FROM warning) AS needs_write
    FROM (
        SELECT labelled.*,
               CASE WHEN frozen THEN status
                    WHEN label_ok THEN want
                    WHEN fallback_ok THEN fallback
                    ELSE status END AS new_status,
               CASE WHEN frozen THEN outstanding ELSE n_balance END AS new_outstanding,
               CASE WHEN frozen THEN paid ELSE n_paid END AS new_paid,
               CASE WHEN frozen THEN discounted ELSE n_discounted END AS new_discounted,
               CASE WHEN frozen THEN written_off ELSE n_written_off END
                   AS new_written_off,
               CASE WHEN frozen THEN credited ELSE n_credited END AS new_credited,
               CASE WHEN frozen THEN outstanding_base ELSE b_balance END
                   AS new_outstanding_base,
               CASE WHEN frozen THEN paid_base ELSE b_paid END AS new_paid_base,
               CASE WHEN frozen THEN discounted_base ELSE b_discounted END
                   AS new_discounted_base,
               CASE WHEN frozen THEN written_off_base ELSE b_written_off END
                   AS new_written_off_base,
               CASE WHEN frozen THEN credited_base ELSE b_credited END
                   AS new_credited_base,
               CASE WHEN frozen THEN exchange_adjustment ELSE b_exchange END
                   AS new_exchange,
               CASE WHEN deleted OR out_of_range THEN derived_state ELSE n_state END
                   AS new_state,
               CASE WHEN deleted OR out_of_range THEN computed_outstanding
                    ELSE n_computed END AS new_computed,
               CASE WHEN deleted OR out_of_range THEN computed_outstanding_base
                    ELSE b_computed END AS new_computed_base,
               -- Sage's own balance against ours, in the invoice's currency and in pounds.
               CASE WHEN deleted OR out_of_range THEN mismatch
                    ELSE (sage_outstanding IS NOT NULL AND sage_outstanding <> n_computed)
                         OR (sage_outstanding_base IS NOT NULL
                             AND sage_outstanding_base <> b_computed)
               END AS new_mismatch,
               CASE
                   WHEN NOT frozen_protected THEN NULL
                   WHEN status NOT IN (SELECT label FROM labels) THEN NULL
                   WHEN true_label <> status THEN format(
                       'postings now say %s (outstanding %s); the status %s is protected',
                       true_label, n_balance, status)
                   WHEN n_balance < 0 AND true_state IN ('written_off', 'paid_written_off')
                       THEN format(
                       'postings show %s received on top of the write-off (outstanding %s); '
                       'the status %s is protected', -n_balance, n_balance, status)
               END AS new_conflict,
               CASE
                   WHEN deleted THEN format(
                       'the Sage invoice (SI %s) is deleted; status and balance left as they '
                       'were', sage_tran_number)
                   WHEN out_of_range THEN
                       'the allocations add up to more than an amount can hold; left as it was'
                   WHEN protected OR label_ok THEN NULL
                   WHEN fallback_ok THEN format(
                       '%s is not in the status picklist; wrote the SageLink status %s instead',
                       want, fallback)
                   ELSE format(
                       'neither %s nor the SageLink status %s is in the status picklist; '
                       'status left as %s', want, fallback, status)
               END AS new_warning
        FROM (
            SELECT shown.*, shown_labels.label AS want, shown_labels.fallback AS fallback,
                   shown_labels.label_ok, shown_labels.fallback_ok,
                   true_labels.label AS true_label,
                   (shown.protected AND NOT shown.deleted) AS frozen_protected,
                   (shown.protected OR shown.deleted OR shown.out_of_range) AS frozen
            FROM (
                SELECT figures.*,
                       CASE WHEN :sagelink THEN {sagelink_state}
                            ELSE figures.true_state END AS n_state
                FROM figures
            ) AS shown
            JOIN labels AS shown_labels ON shown_labels.state = shown.n_state
            JOIN labels AS true_labels ON true_labels.state = shown.true_state
            OFFSET 0
        ) AS labelled
        OFFSET 0
    ) AS decided
),
counts AS (
    SELECT count(*) AS examined,
           count(*) FILTER (WHERE changed) AS changed,
           count(*) FILTER (WHERE frozen_protected) AS skipped_protected,
           count(*) FILTER (WHERE new_conflict IS NOT NULL) AS conflicts,
           count(*) FILTER (WHERE new_conflict IS NOT NULL
                            AND new_conflict IS DISTINCT FROM conflict) AS new_conflicts
    FROM outcome
),
change_writes AS (
    INSERT INTO sync_run_changes (
        run_id, invoice_number, from_status, to_status, from_outstanding, to_outstanding
    )
    SELECT CAST(:run_id AS uuid), outcome.invoice_number, outcome.status, outcome.new_status,
           outcome.from_outstanding, outcome.new_outstanding
    FROM outcome
    WHERE outcome.changed
    ORDER BY outcome.invoice_number
    {on_conflict}
    RETURNING 1
),
{writes}
{run}
SELECT counts.examined, counts.changed, counts.skipped_protected, counts.conflicts,
       counts.new_conflicts,
       (SELECT count(*) FROM change_writes) AS recorded_changes,
       {write_counts},
       (SELECT count(*) FROM run_row) AS run_rows,
       ARRAY(SELECT new_status FROM outcome WHERE status_changed) AS new_statuses
FROM counts
"""

# Invoice + status_history + outbox (contract 3 in docs/ARCHITECTURE.md); pg_notify is
# delivered at commit, so the dispatcher never wakes to rows it cannot see.
_WRITES = f"""
invoice_writes AS (
    UPDATE invoices AS i SET
        status = todo.new_status,
        outstanding = todo.new_outstanding,
        paid = todo.new_paid,
        discounted = todo.new_discounted,
        written_off = todo.new_written_off,
        credited = todo.new_credited,
        outstanding_base = todo.new_outstanding_base,
        computed_outstanding_base = todo.new_computed_base,
        paid_base = todo.new_paid_base,
        discounted_base = todo.new_discounted_base,
        written_off_base = todo.new_written_off_base,
        credited_base = todo.new_credited_base,
        exchange_adjustment = todo.new_exchange,
        derived_state = todo.new_state,
        computed_outstanding = todo.new_computed,
        conflict = todo.new_conflict,
        mismatch = todo.new_mismatch,
        warning = todo.new_warning,
        updated_at = CASE WHEN todo.changed OR todo.new_state IS DISTINCT FROM todo.derived_state
                          THEN now() ELSE i.updated_at END
    -- By tuple id, in physical order: the rows are locked by this transaction, so their
    -- tids are stable, and a large batch then walks the heap instead of jumping about.
    FROM (SELECT * FROM outcome WHERE needs_write ORDER BY tid) AS todo
    WHERE i.ctid = todo.tid
    RETURNING i.invoice_number
),
history_writes AS ({
    contracts.insert_history(
        source="sync",
        invoice_number="outcome.invoice_number",
        from_status="outcome.status",
        to_status="outcome.new_status",
        from_outstanding="outcome.from_outstanding",
        to_outstanding="outcome.new_outstanding",
        actor=":actor",
        reason="outcome.reason",
        run_id="CAST(:run_id AS uuid)",
        from_="outcome",
        where="outcome.status_changed",
        order_by="outcome.invoice_number",
        returning="id, invoice_number",
    )
}
),
outbox_writes AS ({
    contracts.insert_outbox(
        source="sync",
        invoice_number="outcome.invoice_number",
        status="outcome.new_status",
        outstanding="outcome.new_outstanding",
        history_id="history.id",
        from_="outcome LEFT JOIN history_writes AS history"
        " ON history.invoice_number = outcome.invoice_number",
        where="outcome.changed",
        order_by="outcome.invoice_number",
        returning="1",
    )
}
),
notified AS (
    SELECT pg_notify(:outbox_channel, '') WHERE EXISTS (SELECT 1 FROM outbox_writes)
),
"""

# `dequeued`: the batch's invoices that were queued, and since when. A worker batch took them
# off the queue when it claimed them (their times come as a parameter); a requested run takes
# off any of its invoices that are queued: it holds them locked, so no mark can arrive in
# between, and one made after our commit queues the invoice again.
_CLAIMED_QUEUE = """
dequeued AS (
    SELECT claimed.invoice_number, claimed.since
    FROM unnest(CAST(:numbers AS text[]), CAST(:since AS timestamptz[]))
        AS claimed(invoice_number, since)
),
"""
_RUN_QUEUE = """
dequeued AS (
    DELETE FROM dirty_invoices AS queued
    WHERE queued.invoice_number = ANY(CAST(:numbers AS text[]))
    RETURNING queued.invoice_number, queued.since
),
"""

# latencies: from the oldest mark to this write, for each changed invoice that was queued.
_WRITE_COUNTS = """(SELECT count(*) FROM invoice_writes) AS written,
       (SELECT count(*) FROM history_writes) AS history_rows,
       (SELECT count(*) FROM outbox_writes) AS outbox_rows,
       (SELECT count(*) FROM notified) AS notified,
       ARRAY(
           SELECT extract(epoch FROM clock_timestamp() - dequeued.since)::float8
           FROM dequeued JOIN outcome ON outcome.invoice_number = dequeued.invoice_number
           WHERE outcome.changed AND dequeued.since IS NOT NULL
       ) AS latencies"""

_DRY_COUNTS = """0 AS written, 0 AS history_rows, 0 AS outbox_rows, 0 AS notified,
       CAST(ARRAY[] AS float8[]) AS latencies"""

# A worker batch records itself as a finished run, but only when it changed something or
# raised a new conflict: an idle or no-op pass leaves no row (metrics still count it).
_RUN_INSERT = """
run_row AS (
    INSERT INTO sync_runs (
        id, status, trigger, scope, dry_run, actor, requested_at, started_at, finished_at,
        examined, changed, unchanged, skipped_protected, conflicts
    )
    SELECT CAST(:run_id AS uuid), 'succeeded', :trigger, CAST(:scope AS jsonb), false, :actor,
           now(), now(), clock_timestamp(), counts.examined, counts.changed,
           counts.examined - counts.changed - counts.skipped_protected,
           counts.skipped_protected, counts.conflicts
    FROM counts
    WHERE counts.changed > 0 OR counts.new_conflicts > 0
    RETURNING 1
)
"""

# A batch of a requested run adds its counts to the run, moves its cursor, and on its last
# batch finishes it, in the same transaction as the batch.
_RUN_UPDATE = """
run_row AS (
    UPDATE sync_runs AS run SET
        examined = run.examined + counts.examined,
        changed = run.changed + counts.changed,
        unchanged = run.unchanged + (counts.examined - counts.changed - counts.skipped_protected),
        skipped_protected = run.skipped_protected + counts.skipped_protected,
        conflicts = run.conflicts + counts.conflicts,
        cursor = coalesce(:cursor, run.cursor),
        heartbeat_at = now(),
        status = CASE WHEN :finish THEN 'succeeded' ELSE run.status END,
        finished_at = CASE WHEN :finish THEN clock_timestamp() ELSE run.finished_at END
    FROM counts
    WHERE run.id = CAST(:run_id AS uuid)
    RETURNING 1
)
"""


@lru_cache(maxsize=64)
def _apply_sql(allocation_kind: str, dry_run: bool, new_run: bool) -> sa.TextClause:
    sql = _COMPUTE.format(
        allocation_kind=allocation_kind,
        kinds=_KIND_LITERALS,
        sagelink_state=_SAGELINK_STATE,
        # A worker batch is a run of its own: no invoice can be in it twice, and a plain
        # insert is cheaper than a speculative one. A requested run of the dirty scope can
        # meet an invoice again (re-dirtied meanwhile): its last change wins.
        on_conflict=""
        if new_run
        else "ON CONFLICT (run_id, invoice_number) DO UPDATE SET "
        "to_status = EXCLUDED.to_status, to_outstanding = EXCLUDED.to_outstanding",
        writes="" if dry_run else _WRITES,
        queue="" if dry_run else _CLAIMED_QUEUE if new_run else _RUN_QUEUE,
        run=_RUN_INSERT if new_run else _RUN_UPDATE,
        write_counts=_DRY_COUNTS if dry_run else _WRITE_COUNTS,
    )
    return sa.text(sql)


@dataclass
class BatchResult:
    examined: int = 0
    changed: int = 0
    skipped_protected: int = 0
    conflicts: int = 0
    new_conflicts: int = 0
    history_rows: int = 0
    outbox_rows: int = 0
    run_recorded: bool = False
    latencies: list[float] = field(default_factory=list)
    new_statuses: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        return self.examined - self.changed - self.skipped_protected


def label_params(ledger: LedgerSettings) -> dict[str, Any]:
    states = list(DERIVED_STATES)
    return {
        "states": states,
        "labels": [ledger.status_labels[s] for s in states],
        "fallbacks": [ledger.fallback_label_for(s) for s in states],
        "protected": list(ledger.protected_statuses),
        "sagelink": ledger.write_off_mode is WriteOffMode.sagelink,
    }


async def apply_batch(
    conn: AsyncConnection,
    numbers: list[str],
    ledger: LedgerSettings,
    *,
    run_id: uuid.UUID,
    actor: str,
    dry_run: bool = False,
    new_run: RunInsert | None = None,
    queued_since: list[datetime] | None = None,
    cursor: str | None = None,
    finish: bool = False,
) -> BatchResult:
    """Reconcile the invoices `numbers` (already locked by the caller, unless dry_run).

    With `new_run`, the batch is a worker's: `claim_dirty` took the invoices off the queue
    (`queued_since` gives their times, for the latency metric) and the batch records itself
    as a finished run. Otherwise it takes its invoices off the queue itself and adds its
    counts to the existing run `run_id` (requested runs).
    """
    allocation_kind, kind_params = allocation_kind_sql("a.posting_type", "credit", ledger)
    params: dict[str, Any] = {
        **kind_params,
        **label_params(ledger),
        "base_currency": ledger.base_currency,
        "numbers": numbers,
        "since": queued_since,
        "run_id": str(run_id),
        "actor": actor,
        "outbox_channel": contracts.OUTBOX_CHANNEL,
    }
    if new_run is not None:
        params.update(trigger=new_run.trigger, scope=new_run.scope_json)
    else:
        params.update(cursor=cursor, finish=finish)
    # For this transaction only. Up to a very large batch, allocations are looked up by index
    # whatever the statistics say: right after a bulk load they can claim the table is empty,
    # and a hash join over every allocation and posting per batch turns milliseconds into
    # seconds (and a backlog into a spiral). A huge batch (a backlog catching up) may scan,
    # with the memory to hash and aggregate without spilling to temporary files.
    settings_sql = []
    if len(numbers) < _HUGE_BATCH:
        settings_sql.append("set_config('enable_seqscan', 'off', true)")
    if len(numbers) >= _BIG_BATCH:
        settings_sql.append(f"set_config('work_mem', '{_BIG_BATCH_WORK_MEM}', true)")
    await conn.execute(sa.text(f"SELECT {', '.join(settings_sql)}"))
    row = (
        (await conn.execute(_apply_sql(allocation_kind, dry_run, new_run is not None), params))
        .mappings()
        .one()
    )
    return BatchResult(
        examined=row["examined"],
        changed=row["changed"],
        skipped_protected=row["skipped_protected"],
        conflicts=row["conflicts"],
        new_conflicts=row["new_conflicts"],
        history_rows=row["history_rows"],
        outbox_rows=row["outbox_rows"],
        run_recorded=row["run_rows"] > 0,
        latencies=list(row["latencies"]),
        new_statuses=list(row["new_statuses"]),
    )


@dataclass(frozen=True)
class RunInsert:
    trigger: str
    scope_json: str
