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
from service.ledger.vocabulary import ALLOCATION_KINDS, DERIVED_STATES, sql_literal
from service.reconcile.runs import RunScope

# The kinds the sums below name, as SQL literals (a kind the vocabulary lacks is a KeyError).
_KIND_LITERALS = {kind: sql_literal(kind) for kind in ALLOCATION_KINDS}

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
# deleted by the tuple ids the claim read (a TID scan): joined back by number, the planner
# read the whole queue for every batch. Sent on the asyncpg connection itself: a batch's
# 2,000 rows through SQLAlchemy's result cost a quarter of the claim.
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

# `t`: the batch, as locked. `sums`: its live allocations (allocation and settling posting
# not deleted), each with its kind (service.ledger.classify.allocation_kind_sql: paid, refund,
# discounted, an exchange adjustment, written off, credited, or other, which counts for
# nothing). Each figure is
# summed twice: in the invoice's currency (the allocation's foreign amount; the amount itself
# for base-currency postings) and in the base currency (`b_*`). A revaluation moves pounds
# only: it is the exchange adjustment, in the base figures alone. `fig` computes the figures
# and the state (from the invoice-currency figures), `res` what to write.
_COMPUTE = """
WITH
labels AS MATERIALIZED (
    SELECT m.state, m.label, m.fallback,
           m.label IN (SELECT value FROM picklist_values) AS label_ok,
           m.fallback IN (SELECT value FROM picklist_values) AS fallback_ok
    FROM unnest(
        CAST(:states AS text[]), CAST(:labels AS text[]), CAST(:fallbacks AS text[])
    ) AS m(state, label, fallback)
),
t AS MATERIALIZED (
    SELECT i.ctid AS tid, i.invoice_number, i.sage_tran_number, i.gross, i.sage_outstanding,
           i.status, i.derived_state, i.outstanding, i.computed_outstanding, i.paid,
           i.discounted, i.written_off, i.credited, i.conflict, i.mismatch, i.warning,
           i.deleted, i.currency, i.gross_base, i.sage_outstanding_base,
           i.outstanding_base, i.computed_outstanding_base, i.paid_base, i.discounted_base,
           i.written_off_base, i.credited_base, i.exchange_adjustment,
           i.status = ANY(CAST(:protected AS text[])) AS protected
    FROM unnest(CAST(:numbers AS text[])) AS n(invoice_number)
    JOIN invoices AS i ON i.invoice_number = n.invoice_number
),
{queue}
sums AS (
    SELECT x.sage_tran_number,
           sum(CASE x.kind WHEN {kinds[paid]} THEN x.fx WHEN {kinds[refund]} THEN -x.fx END)
               AS paid,
           sum(CASE x.kind WHEN {kinds[discounted]} THEN x.fx END) AS discounted,
           sum(CASE x.kind WHEN {kinds[written_off]} THEN x.fx END) AS written_off,
           sum(CASE x.kind WHEN {kinds[credited]} THEN x.fx END) AS credited,
           sum(CASE x.kind WHEN {kinds[paid]} THEN x.amount
                           WHEN {kinds[refund]} THEN -x.amount END) AS b_paid,
           sum(CASE x.kind WHEN {kinds[discounted]} THEN x.amount END) AS b_discounted,
           sum(CASE x.kind WHEN {kinds[written_off]} THEN x.amount END) AS b_written_off,
           sum(CASE x.kind WHEN {kinds[credited]} THEN x.amount END) AS b_credited,
           sum(CASE x.kind WHEN {kinds[exchange_adjustment]} THEN x.amount END) AS b_exchange
    FROM (
        SELECT t.sage_tran_number, a.amount, coalesce(a.foreign_amount, a.amount) AS fx,
               {allocation_kind} AS kind
        FROM t
        JOIN allocations AS a ON a.invoice_tran_number = t.sage_tran_number
                               AND NOT a.deleted AND NOT a.posting_deleted
        -- Only a credit's posting is read (its nominal code, details and reference classify
        -- it); the type and deleted flag of the others travel on the allocation. OFFSET 0
        -- keeps the subquery apart, so the type test gates the lookup (a one-time filter);
        -- pulled up into a join, the lookup ran for every allocation and the test after it.
        LEFT JOIN LATERAL (
            SELECT p.nominal_code, p.details, p.reference FROM postings AS p
            WHERE p.tran_number = a.posting_tran_number AND a.posting_type = 'SC'
            OFFSET 0
        ) AS p ON true
        WHERE NOT t.deleted
        -- Not pulled up into the aggregate: there, each of the ten sums would repeat the
        -- classification (three regular expressions) for every allocation.
        OFFSET 0
    ) AS x
    GROUP BY x.sage_tran_number
),
-- The figures and the state, computed once per invoice (materialized: inlined, the planner
-- would repeat the numeric arithmetic wherever a later expression names a figure).
fig AS MATERIALIZED (
    SELECT q.*,
           CASE
               WHEN q.n_balance <= 0 THEN
                   CASE
                       WHEN q.n_written_off <= 0 THEN 'paid'
                       WHEN q.n_paid > 0 OR q.n_discounted > 0 OR q.n_credited > 0
                           THEN 'paid_written_off'
                       ELSE 'written_off'
                   END
               WHEN q.n_balance < q.gross THEN 'part_paid'
               ELSE 'unpaid'
           END AS true_state,
           -- Sums no numeric(14,2) column can hold (a corrupt export): never written, never
           -- allowed to wedge the batch; the invoice is left as it is, with a warning.
           greatest(abs(q.n_paid), abs(q.n_discounted), abs(q.n_written_off),
                    abs(q.n_credited), abs(q.n_computed), abs(q.b_paid), abs(q.b_discounted),
                    abs(q.b_written_off), abs(q.b_credited), abs(q.b_exchange),
                    abs(q.b_computed)) >= 1000000000000 AS out_of_range
    FROM (
        SELECT c.*, coalesce(c.sage_outstanding, c.n_computed) AS n_balance,
               coalesce(c.sage_outstanding_base, c.b_computed) AS b_balance
        FROM (
            SELECT t.*, s.*,
                   t.gross - s.n_paid - s.n_discounted - s.n_written_off - s.n_credited
                       AS n_computed,
                   t.gross_base - s.b_paid - s.b_discounted - s.b_written_off - s.b_credited
                       - s.b_exchange AS b_computed
            FROM t
            LEFT JOIN sums ON sums.sage_tran_number = t.sage_tran_number AND NOT t.deleted
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
            ) AS s
        ) AS c
        OFFSET 0
    ) AS q
),
res AS MATERIALIZED (
    SELECT r.*,
           r.new_status IS DISTINCT FROM r.status AS status_changed,
           -- Never reconciled: the balance the row holds is ingestion's placeholder, so the
           -- first reconcile always tells the CRM the figures (outbox), even when unchanged.
           CASE WHEN r.derived_state IS NULL THEN NULL ELSE r.outstanding END
               AS from_outstanding,
           (r.new_status IS DISTINCT FROM r.status OR r.new_outstanding <> r.outstanding
            OR (r.derived_state IS NULL AND NOT r.frozen)) AS changed,
           CASE WHEN r.new_status IS DISTINCT FROM r.status THEN format(
               'derived %s%s from postings: paid %s, discounted %s, written off %s, '
               'credited %s, outstanding %s%s%s',
               r.n_state,
               CASE WHEN r.n_state <> r.true_state
                    THEN format(' (%s, shown as in SageLink)', r.true_state) ELSE '' END,
               r.n_paid, r.n_discounted, r.n_written_off, r.n_credited, r.n_balance,
               CASE WHEN r.currency IS NOT NULL AND r.currency <> CAST(:base_currency AS text)
                    THEN format(' %s (exchange adjustment %s %s)', r.currency,
                                r.b_exchange, CAST(:base_currency AS text))
                    ELSE '' END,
               CASE WHEN r.new_warning IS NOT NULL THEN '; ' || r.new_warning ELSE '' END
           ) END AS reason,
           (r.new_status IS DISTINCT FROM r.status
            OR r.new_outstanding <> r.outstanding
            OR r.new_state IS DISTINCT FROM r.derived_state
            OR r.new_computed IS DISTINCT FROM r.computed_outstanding
            OR r.new_paid <> r.paid OR r.new_discounted <> r.discounted
            OR r.new_written_off <> r.written_off OR r.new_credited <> r.credited
            OR r.new_outstanding_base <> r.outstanding_base
            OR r.new_computed_base IS DISTINCT FROM r.computed_outstanding_base
            OR r.new_paid_base <> r.paid_base OR r.new_discounted_base <> r.discounted_base
            OR r.new_written_off_base <> r.written_off_base
            OR r.new_credited_base <> r.credited_base
            OR r.new_exchange <> r.exchange_adjustment
            OR r.new_conflict IS DISTINCT FROM r.conflict
            OR r.new_mismatch <> r.mismatch
            OR r.new_warning IS DISTINCT FROM r.warning) AS needs_write
    FROM (
        SELECT d.*,
               CASE WHEN d.frozen THEN d.status
                    WHEN d.label_ok THEN d.want
                    WHEN d.fallback_ok THEN d.fallback
                    ELSE d.status END AS new_status,
               CASE WHEN d.frozen THEN d.outstanding ELSE d.n_balance END AS new_outstanding,
               CASE WHEN d.frozen THEN d.paid ELSE d.n_paid END AS new_paid,
               CASE WHEN d.frozen THEN d.discounted ELSE d.n_discounted END AS new_discounted,
               CASE WHEN d.frozen THEN d.written_off ELSE d.n_written_off END
                   AS new_written_off,
               CASE WHEN d.frozen THEN d.credited ELSE d.n_credited END AS new_credited,
               CASE WHEN d.frozen THEN d.outstanding_base ELSE d.b_balance END
                   AS new_outstanding_base,
               CASE WHEN d.frozen THEN d.paid_base ELSE d.b_paid END AS new_paid_base,
               CASE WHEN d.frozen THEN d.discounted_base ELSE d.b_discounted END
                   AS new_discounted_base,
               CASE WHEN d.frozen THEN d.written_off_base ELSE d.b_written_off END
                   AS new_written_off_base,
               CASE WHEN d.frozen THEN d.credited_base ELSE d.b_credited END
                   AS new_credited_base,
               CASE WHEN d.frozen THEN d.exchange_adjustment ELSE d.b_exchange END
                   AS new_exchange,
               CASE WHEN d.deleted OR d.out_of_range THEN d.derived_state ELSE d.n_state END
                   AS new_state,
               CASE WHEN d.deleted OR d.out_of_range THEN d.computed_outstanding
                    ELSE d.n_computed END AS new_computed,
               CASE WHEN d.deleted OR d.out_of_range THEN d.computed_outstanding_base
                    ELSE d.b_computed END AS new_computed_base,
               -- Sage's own balance against ours, in the invoice's currency and in pounds.
               CASE WHEN d.deleted OR d.out_of_range THEN d.mismatch
                    ELSE (d.sage_outstanding IS NOT NULL AND d.sage_outstanding <> d.n_computed)
                         OR (d.sage_outstanding_base IS NOT NULL
                             AND d.sage_outstanding_base <> d.b_computed)
               END AS new_mismatch,
               CASE
                   WHEN NOT d.frozen_protected THEN NULL
                   WHEN d.status NOT IN (SELECT label FROM labels) THEN NULL
                   WHEN d.true_label <> d.status THEN format(
                       'postings now say %s (outstanding %s); the status %s is protected',
                       d.true_label, d.n_balance, d.status)
                   WHEN d.n_balance < 0 AND d.true_state IN ('written_off', 'paid_written_off')
                       THEN format(
                       'postings show %s received on top of the write-off (outstanding %s); '
                       'the status %s is protected', -d.n_balance, d.n_balance, d.status)
               END AS new_conflict,
               CASE
                   WHEN d.deleted THEN format(
                       'the Sage invoice (SI %s) is deleted; status and balance left as they '
                       'were', d.sage_tran_number)
                   WHEN d.out_of_range THEN
                       'the allocations add up to more than an amount can hold; left as it was'
                   WHEN d.protected OR d.label_ok THEN NULL
                   WHEN d.fallback_ok THEN format(
                       '%s is not in the status picklist; wrote the SageLink status %s instead',
                       d.want, d.fallback)
                   ELSE format(
                       'neither %s nor the SageLink status %s is in the status picklist; '
                       'status left as %s', d.want, d.fallback, d.status)
               END AS new_warning
        FROM (
            SELECT e.*, m.label AS want, m.fallback AS fallback, m.label_ok, m.fallback_ok,
                   tm.label AS true_label,
                   (e.protected AND NOT e.deleted) AS frozen_protected,
                   (e.protected OR e.deleted OR e.out_of_range) AS frozen
            FROM (
                SELECT f.*,
                       CASE WHEN :sagelink AND f.true_state IN ('written_off', 'paid_written_off')
                            THEN 'paid' ELSE f.true_state END AS n_state
                FROM fig AS f
            ) AS e
            JOIN labels AS m ON m.state = e.n_state
            JOIN labels AS tm ON tm.state = e.true_state
            OFFSET 0
        ) AS d
        OFFSET 0
    ) AS r
),
cnt AS (
    SELECT count(*) AS examined,
           count(*) FILTER (WHERE changed) AS changed,
           count(*) FILTER (WHERE frozen_protected) AS skipped_protected,
           count(*) FILTER (WHERE new_conflict IS NOT NULL) AS conflicts,
           count(*) FILTER (WHERE new_conflict IS NOT NULL
                            AND new_conflict IS DISTINCT FROM conflict) AS new_conflicts
    FROM res
),
chg AS (
    INSERT INTO sync_run_changes AS c (
        run_id, invoice_number, from_status, to_status, from_outstanding, to_outstanding
    )
    SELECT CAST(:run_id AS uuid), r.invoice_number, r.status, r.new_status,
           r.from_outstanding, r.new_outstanding
    FROM res AS r
    WHERE r.changed
    ORDER BY r.invoice_number
    {on_conflict}
    RETURNING 1
),
{writes}
{run}
SELECT c.examined, c.changed, c.skipped_protected, c.conflicts, c.new_conflicts,
       (SELECT count(*) FROM chg) AS recorded_changes,
       {write_counts},
       (SELECT count(*) FROM run_row) AS run_rows,
       ARRAY(SELECT r.new_status FROM res AS r WHERE r.status_changed) AS new_statuses
FROM cnt AS c
"""

# Invoice + status_history + outbox (contract 3 in docs/ARCHITECTURE.md); pg_notify is
# delivered at commit, so the dispatcher never wakes to rows it cannot see.
_WRITES = f"""
upd AS (
    UPDATE invoices AS i SET
        status = r.new_status,
        outstanding = r.new_outstanding,
        paid = r.new_paid,
        discounted = r.new_discounted,
        written_off = r.new_written_off,
        credited = r.new_credited,
        outstanding_base = r.new_outstanding_base,
        computed_outstanding_base = r.new_computed_base,
        paid_base = r.new_paid_base,
        discounted_base = r.new_discounted_base,
        written_off_base = r.new_written_off_base,
        credited_base = r.new_credited_base,
        exchange_adjustment = r.new_exchange,
        derived_state = r.new_state,
        computed_outstanding = r.new_computed,
        conflict = r.new_conflict,
        mismatch = r.new_mismatch,
        warning = r.new_warning,
        updated_at = CASE WHEN r.changed OR r.new_state IS DISTINCT FROM r.derived_state
                          THEN now() ELSE i.updated_at END
    -- By tuple id, in physical order: the rows are locked by this transaction, so their
    -- tids are stable, and a large batch then walks the heap instead of jumping about.
    FROM (SELECT * FROM res WHERE needs_write ORDER BY tid) AS r
    WHERE i.ctid = r.tid
    RETURNING i.invoice_number
),
hist AS ({
    contracts.insert_history(
        source="sync",
        invoice_number="r.invoice_number",
        from_status="r.status",
        to_status="r.new_status",
        from_outstanding="r.from_outstanding",
        to_outstanding="r.new_outstanding",
        actor=":actor",
        reason="r.reason",
        run_id="CAST(:run_id AS uuid)",
        from_="res AS r",
        where="r.status_changed",
        order_by="r.invoice_number",
        returning="id, invoice_number",
    )
}
),
outb AS ({
    contracts.insert_outbox(
        source="sync",
        invoice_number="r.invoice_number",
        status="r.new_status",
        outstanding="r.new_outstanding",
        history_id="h.id",
        from_="res AS r LEFT JOIN hist AS h ON h.invoice_number = r.invoice_number",
        where="r.changed",
        order_by="r.invoice_number",
        returning="1",
    )
}
),
notified AS (
    SELECT pg_notify(:outbox_channel, '') WHERE EXISTS (SELECT 1 FROM outb)
),
"""

# `undirty`: the batch's invoices that were queued, and since when. A worker batch took them
# off the queue when it claimed them (their times come as a parameter); a requested run takes
# off any of its invoices that are queued: it holds them locked, so no mark can arrive in
# between, and one made after our commit queues the invoice again.
_CLAIMED_QUEUE = """
undirty AS (
    SELECT q.invoice_number, q.since
    FROM unnest(CAST(:numbers AS text[]), CAST(:since AS timestamptz[])) AS q(invoice_number, since)
),
"""
_RUN_QUEUE = """
undirty AS (
    DELETE FROM dirty_invoices AS d
    WHERE d.invoice_number = ANY(CAST(:numbers AS text[]))
    RETURNING d.invoice_number, d.since
),
"""

# latencies: from the oldest mark to this write, for each changed invoice that was queued.
_WRITE_COUNTS = """(SELECT count(*) FROM upd) AS written,
       (SELECT count(*) FROM hist) AS history_rows,
       (SELECT count(*) FROM outb) AS outbox_rows,
       (SELECT count(*) FROM notified) AS notified,
       ARRAY(
           SELECT extract(epoch FROM clock_timestamp() - u.since)::float8
           FROM undirty AS u JOIN res AS r ON r.invoice_number = u.invoice_number
           WHERE r.changed AND u.since IS NOT NULL
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
now(), now(), clock_timestamp(), c.examined, c.changed,
           c.examined - c.changed - c.skipped_protected, c.skipped_protected, c.conflicts
    FROM cnt AS c
    WHERE c.changed > 0 OR c.new_conflicts > 0
    RETURNING 1
)
"""

# A batch of a requested run adds its counts to the run, moves its cursor, and on its last
# batch finishes it, in the same transaction as the batch.
_RUN_UPDATE = """
run_row AS (
    UPDATE sync_runs AS s SET
        examined = s.examined + c.examined,
        changed = s.changed + c.changed,
        unchanged = s.unchanged + (c.examined - c.changed - c.skipped_protected),
        skipped_protected = s.skipped_protected + c.skipped_protected,
        conflicts = s.conflicts + c.conflicts,
        cursor = coalesce(:cursor, s.cursor),
        heartbeat_at = now(),
        status = CASE WHEN :finish THEN 'succeeded' ELSE s.status END,
        finished_at = CASE WHEN :finish THEN clock_timestamp() ELSE s.finished_at END
    FROM cnt AS c
    WHERE s.id = CAST(:run_id AS uuid)
    RETURNING 1
)
"""


@lru_cache(maxsize=64)
def _apply_sql(allocation_kind: str, dry_run: bool, new_run: bool) -> sa.TextClause:
    sql = _COMPUTE.format(
        allocation_kind=allocation_kind,
        kinds=_KIND_LITERALS,
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
    allocation_kind, kind_params = allocation_kind_sql("a.posting_type", "p", ledger)
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
