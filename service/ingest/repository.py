"""All SQL of ingestion: postings, allocations, the invoice mirror, dirty marking, the inbox.

The hot path is a handful of set-based statements per batch, run on the raw asyncpg
connection underneath the caller's SQLAlchemy transaction. The validated batch travels to
PostgreSQL as one JSON document (from a webhook, the postings array as the sender wrote it)
and is unpacked there with `json_to_recordset`, so the API process does no per-row work
beyond Pydantic's validation (it is the single-threaded part of the pipeline; PostgreSQL
backends run in parallel).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.db import driver_connection
from service.ingest.schemas import IngestResult, PostingIn
from service.ledger import locks
from service.ledger.classify import revaluation_sql, write_off_sql
from service.ledger.dirty import mark_dirty
from service.ledger.settings import LedgerSettings

_POSTINGS_JSON = TypeAdapter(list[PostingIn])

# Postings and their allocations, in one statement:
# - `input` unpacks the batch; a tran_number sent twice in one call keeps its last version;
# - `hashed` adds the content hash over the typed values (so "12.3" and 12.30 are the same),
#   allocations included in order: an unchanged re-send is detected and not rewritten;
# - `up` upserts the changed postings only; `old_alloc` reads (from the statement's snapshot)
#   the allocations they had, `new_alloc` / `gone_alloc` replace them as a set (each
#   allocation carries its posting's type and deleted flag for reconciliation);
# - every invoice an old or new allocation names, or mirrored from a changed posting, is
#   locked FOR KEY SHARE until commit and queued in dirty_invoices (`marked`; see "Dirty
#   marking" below);
# - changed SIs, old and new versions, give the invoice numbers whose mirror is recomputed.
# Lookups into the big tables are `= ANY (ARRAY(...))`: an index scan whatever the planner
# guesses about a CTE's size (a hash join would read all of invoices or allocations).
_STORE_SQL_TEMPLATE = """
WITH input AS (
    SELECT DISTINCT ON (p.tran_number)
        p.tran_number, p.type, p.account_ref, coalesce(p.reference, '') AS reference,
        p.date, coalesce(p.details, '') AS details,
        coalesce(p.nominal_code, '') AS nominal_code,
        p.net_amount::numeric(14, 2) AS net_amount,
        p.tax_amount::numeric(14, 2) AS tax_amount,
        p.gross_amount::numeric(14, 2) AS gross_amount,
        p.outstanding::numeric(14, 2) AS outstanding,
        p.currency, p.exchange_rate::numeric(20, 10) AS exchange_rate,
        p.foreign_net_amount::numeric(14, 2) AS foreign_net_amount,
        p.foreign_tax_amount::numeric(14, 2) AS foreign_tax_amount,
        p.foreign_gross_amount::numeric(14, 2) AS foreign_gross_amount,
        p.foreign_outstanding::numeric(14, 2) AS foreign_outstanding,
        coalesce(p.deleted, false) AS deleted,
        coalesce(p.allocations, '[]'::json) AS allocations
    FROM ROWS FROM (
        json_to_recordset($1::json) AS (
            tran_number bigint, type text, account_ref text, reference text, date date,
            details text, nominal_code text, net_amount numeric, tax_amount numeric,
            gross_amount numeric, outstanding numeric, currency text, exchange_rate numeric,
            foreign_net_amount numeric, foreign_tax_amount numeric,
            foreign_gross_amount numeric, foreign_outstanding numeric, deleted boolean,
            allocations json
        )
    ) WITH ORDINALITY AS p (
        tran_number, type, account_ref, reference, date, details, nominal_code,
        net_amount, tax_amount, gross_amount, outstanding, currency, exchange_rate,
        foreign_net_amount, foreign_tax_amount, foreign_gross_amount, foreign_outstanding,
        deleted, allocations, ord
    )
    ORDER BY p.tran_number, p.ord DESC
),
alloc_in AS (
    SELECT i.tran_number AS posting_tran_number, a.seq::integer AS seq,
           a.invoice_tran_number, a.amount::numeric(14, 2) AS amount,
           a.foreign_amount::numeric(14, 2) AS foreign_amount, a.date,
           coalesce(a.deleted, false) AS deleted, i.type AS posting_type,
           i.deleted AS posting_deleted
    FROM input AS i
    CROSS JOIN LATERAL ROWS FROM (
        json_to_recordset(i.allocations) AS (
            invoice_tran_number bigint, amount numeric, foreign_amount numeric, date date,
            deleted boolean
        )
    ) WITH ORDINALITY AS a (invoice_tran_number, amount, foreign_amount, date, deleted, seq)
),
alloc_text AS (
    SELECT posting_tran_number,
           string_agg(
               concat_ws(':', invoice_tran_number, amount, date - DATE '1970-01-01', deleted,
                         'f' || foreign_amount),
               ',' ORDER BY seq
           ) AS allocations
    FROM alloc_in
    GROUP BY posting_tran_number
),
hashed AS (
    SELECT i.*,
           sha256(convert_to(concat_ws(
               E'\\x1f', i.type, i.account_ref, i.reference, i.date - DATE '1970-01-01',
               i.details, i.nominal_code, i.net_amount, i.tax_amount, i.gross_amount,
               coalesce(i.outstanding::text, '-'), i.deleted, coalesce(t.allocations, ''),
               CASE WHEN i.currency IS NOT NULL THEN concat_ws(
                   '|', i.currency, coalesce(i.exchange_rate::text, '-'),
                   coalesce(i.foreign_net_amount::text, '-'),
                   coalesce(i.foreign_tax_amount::text, '-'),
                   coalesce(i.foreign_gross_amount::text, '-'),
                   coalesce(i.foreign_outstanding::text, '-')
               ) END
           ), 'UTF8')) AS content_hash
    FROM input AS i
    LEFT JOIN alloc_text AS t ON t.posting_tran_number = i.tran_number
),
up AS (
    INSERT INTO postings AS t (
        tran_number, type, account_ref, reference, date, details, nominal_code,
        net_amount, tax_amount, gross_amount, outstanding, currency, exchange_rate,
        foreign_net_amount, foreign_tax_amount, foreign_gross_amount, foreign_outstanding,
        deleted, content_hash, event_id
    )
    SELECT tran_number, type, account_ref, reference, date, details, nominal_code,
           net_amount, tax_amount, gross_amount, outstanding, currency, exchange_rate,
           foreign_net_amount, foreign_tax_amount, foreign_gross_amount, foreign_outstanding,
           deleted, content_hash, $2
    FROM hashed
    ORDER BY tran_number
    ON CONFLICT (tran_number) DO UPDATE SET
        type = EXCLUDED.type,
        account_ref = EXCLUDED.account_ref,
        reference = EXCLUDED.reference,
        date = EXCLUDED.date,
        details = EXCLUDED.details,
        nominal_code = EXCLUDED.nominal_code,
        net_amount = EXCLUDED.net_amount,
        tax_amount = EXCLUDED.tax_amount,
        gross_amount = EXCLUDED.gross_amount,
        outstanding = EXCLUDED.outstanding,
        currency = EXCLUDED.currency,
        exchange_rate = EXCLUDED.exchange_rate,
        foreign_net_amount = EXCLUDED.foreign_net_amount,
        foreign_tax_amount = EXCLUDED.foreign_tax_amount,
        foreign_gross_amount = EXCLUDED.foreign_gross_amount,
        foreign_outstanding = EXCLUDED.foreign_outstanding,
        deleted = EXCLUDED.deleted,
        content_hash = EXCLUDED.content_hash,
        event_id = EXCLUDED.event_id,
        updated_at = now()
    WHERE t.content_hash IS DISTINCT FROM EXCLUDED.content_hash
    RETURNING t.tran_number, t.type, t.reference, (t.xmax = 0) AS inserted
),
old_posting AS (
    SELECT p.tran_number, p.type, p.reference
    FROM postings AS p
    JOIN up ON up.tran_number = p.tran_number AND NOT up.inserted
),
old_alloc AS (
    SELECT a.invoice_tran_number
    FROM allocations AS a
    WHERE a.posting_tran_number = ANY (ARRAY(SELECT tran_number FROM old_posting))
),
new_alloc AS (
    INSERT INTO allocations AS t (
        posting_tran_number, seq, invoice_tran_number, amount, foreign_amount, date, deleted,
        posting_type, posting_deleted
    )
    SELECT a.posting_tran_number, a.seq, a.invoice_tran_number, a.amount, a.foreign_amount,
           a.date, a.deleted, a.posting_type, a.posting_deleted
    FROM alloc_in AS a
    JOIN up ON up.tran_number = a.posting_tran_number
    ORDER BY a.posting_tran_number, a.seq
    ON CONFLICT (posting_tran_number, seq) DO UPDATE SET
        invoice_tran_number = EXCLUDED.invoice_tran_number,
        amount = EXCLUDED.amount,
        foreign_amount = EXCLUDED.foreign_amount,
        date = EXCLUDED.date,
        deleted = EXCLUDED.deleted,
        posting_type = EXCLUDED.posting_type,
        posting_deleted = EXCLUDED.posting_deleted
    RETURNING t.invoice_tran_number
),
gone_alloc AS (
    DELETE FROM allocations AS a
    WHERE a.posting_tran_number = ANY (ARRAY(SELECT tran_number FROM old_posting))
      AND NOT EXISTS (
          SELECT 1 FROM alloc_in AS n
          WHERE n.posting_tran_number = a.posting_tran_number AND n.seq = a.seq
      )
    RETURNING a.invoice_tran_number
),
targets AS (
    SELECT invoice_tran_number AS tran_number FROM old_alloc
    UNION SELECT invoice_tran_number FROM new_alloc
    UNION SELECT invoice_tran_number FROM gone_alloc
    UNION SELECT tran_number FROM up WHERE NOT inserted
),
locked AS (
    SELECT i.invoice_number
    FROM invoices AS i
    WHERE i.sage_tran_number = ANY (ARRAY(SELECT tran_number FROM targets)) AND NOT i.deleted
    ORDER BY i.invoice_number
    FOR KEY SHARE OF i
),
marked AS (
    {mark_locked}
),
mirror_refs AS (
    SELECT reference FROM up WHERE type = 'SI' AND reference <> ''
    UNION SELECT reference FROM old_posting WHERE type = 'SI' AND reference <> ''
)
SELECT
    (SELECT count(*) FROM input) AS distinct_postings,
    (SELECT count(*) FROM up) AS applied,
    ARRAY(SELECT invoice_number FROM locked) AS touched,
    (SELECT count(*) FROM marked) AS marked,
    ARRAY(SELECT reference FROM mirror_refs) AS mirror_refs
"""
_STORE_SQL = _STORE_SQL_TEMPLATE.format(
    mark_locked=mark_dirty(from_="locked", order_by="invoice_number", returning="1")
)

# Dirty marking (contract 1, service.ledger.dirty), in the store and mirror statements: the
# store statement holds each invoice FOR KEY SHARE (`locked`) before it marks it, the detach
# and mirror statements hold theirs by updating the row.

# Before the mirror is recomputed, every live invoice it concerns lets go of its SI: the
# unique index on sage_tran_number covers live invoices only, so an SI that moved from one
# invoice number to another (an edited reference, two SIs swapping) can never collide.
_DETACH_SQL = """
UPDATE invoices AS i
SET deleted = true, updated_at = now()
WHERE i.invoice_number = ANY(:refs) AND NOT i.deleted
RETURNING i.invoice_number
"""

# Mirroring an invoice number is serialised through one of a fixed set of lock slots
# (service.ledger.locks.MIRROR), taken in slot order: no deadlock between batches.
_LOCK_REFS_SQL = """
SELECT pg_advisory_xact_lock(:namespace, slot)
FROM (
    SELECT DISTINCT (hashtext(ref) & (:slots - 1)) AS slot
    FROM unnest(CAST(:refs AS text[])) AS ref
    ORDER BY slot
) AS slots
"""

# One invoice per reference, from every SI that is a customer invoice (not a write-off
# document, not one of Sage's exchange revaluations): live ones first, then the highest
# tran_number; the runner-up is `duplicate_of`.
# An invoice whose every SI is deleted stays, deleted; one left with no SI at all stays
# deleted from the detach step. Every invoice detached or mirrored is marked dirty.
_MIRROR_SQL = """
WITH candidates AS (
    SELECT p.reference, p.tran_number, p.account_ref, p.date, p.gross_amount,
           p.outstanding, p.currency, p.foreign_gross_amount, p.foreign_outstanding, p.deleted,
           row_number() OVER (
               PARTITION BY p.reference ORDER BY p.deleted, p.tran_number DESC
           ) AS rank
    FROM postings AS p
    WHERE p.type = 'SI' AND p.reference = ANY(:refs) AND NOT {write_off} AND NOT {revaluation}
),
mirrored AS (
INSERT INTO invoices AS i (
    invoice_number, account_ref, sage_tran_number, invoice_date, currency, gross,
    sage_outstanding, gross_base, sage_outstanding_base, status, deleted, duplicate_of
)
SELECT w.reference, w.account_ref, w.tran_number, w.date, w.currency,
       coalesce(w.foreign_gross_amount, w.gross_amount),
       CASE WHEN w.currency IS NULL THEN w.outstanding ELSE w.foreign_outstanding END,
       w.gross_amount, w.outstanding, :unpaid, w.deleted, d.tran_number
FROM candidates AS w
LEFT JOIN candidates AS d ON d.reference = w.reference AND d.rank = 2
WHERE w.rank = 1
ORDER BY w.reference
ON CONFLICT (invoice_number) DO UPDATE SET
    account_ref = EXCLUDED.account_ref,
    sage_tran_number = EXCLUDED.sage_tran_number,
    invoice_date = EXCLUDED.invoice_date,
    currency = EXCLUDED.currency,
    gross = EXCLUDED.gross,
    sage_outstanding = EXCLUDED.sage_outstanding,
    gross_base = EXCLUDED.gross_base,
    sage_outstanding_base = EXCLUDED.sage_outstanding_base,
    deleted = EXCLUDED.deleted,
    duplicate_of = EXCLUDED.duplicate_of,
    updated_at = now()
RETURNING i.invoice_number
),
affected AS (
    SELECT invoice_number FROM mirrored
    UNION SELECT unnest(CAST(:detached AS text[]))
),
marked AS (
    {mark_affected}
)
SELECT ARRAY(SELECT invoice_number FROM affected) AS affected,
       (SELECT count(*) FROM marked) AS marked
"""


_MARK_AFFECTED = mark_dirty(from_="affected", order_by="invoice_number", returning="1")


@dataclass(frozen=True)
class StoreOutcome:
    applied: int
    unchanged: int
    invoices_affected: int
    # Invoices newly dirty: the worker must hear of it (store() notified, unless told not to).
    wake: bool = False


async def store(
    conn: AsyncConnection,
    postings: list[PostingIn],
    *,
    event_id: str,
    settings: LedgerSettings,
    notify: bool = True,
    received: str | None = None,
) -> StoreOutcome:
    """Upsert postings and their allocations, mirror customer-invoice SIs, mark every affected
    invoice dirty and NOTIFY the worker, all inside the caller's transaction.

    A tran_number given twice keeps its last version and counts once. With notify=False the
    NOTIFY is left to the caller (`wake`), who sends it with its own last statement: one round
    trip less per webhook batch. `received` is the postings' JSON array as the sender wrote
    it, when PostgreSQL reads the same values from it (`service.ingest.parsing.
    received_postings`): sent as it is instead of serialising `postings` again.
    """
    if not postings:
        return StoreOutcome(0, 0, 0)
    driver = await driver_connection(conn)
    document = received
    if document is None:
        document = _POSTINGS_JSON.dump_json(postings).decode()
    row = await driver.fetchrow(_STORE_SQL, document, event_id)
    affected: set[str] = set(row["touched"])
    woken = row["marked"] > 0
    refs: list[str] = row["mirror_refs"]
    if refs:
        mirrored, marked = await _mirror_invoices(conn, refs, settings)
        affected |= mirrored
        woken = woken or marked
    if woken and notify:
        # Delivered on commit, and only then: the worker never wakes to uncommitted rows. Not
        # sent when every affected invoice was dirty already: the worker has it queued, and
        # NOTIFY serialises committing transactions on a database-wide lock.
        await contracts.notify(conn, contracts.DIRTY_CHANNEL)
    applied = int(row["applied"])
    return StoreOutcome(
        applied=applied,
        unchanged=int(row["distinct_postings"]) - applied,
        invoices_affected=len(affected),
        wake=woken,
    )


async def _mirror_invoices(
    conn: AsyncConnection, refs: list[str], ledger: LedgerSettings
) -> tuple[set[str], bool]:
    """Detach and re-mirror the invoice numbers `refs`: the invoices affected, and whether any
    of them was newly marked dirty."""
    write_off, params = write_off_sql("p", ledger)
    revaluation, reval_params = revaluation_sql("p", ledger)
    params.update(reval_params)
    # Two batches mirroring one invoice number take turns; the second then reads (new
    # statement, new snapshot) the SIs the first committed, so the later SI wins either way.
    await conn.execute(
        sa.text(_LOCK_REFS_SQL),
        {"refs": refs, "slots": locks.MIRROR_SLOTS, "namespace": locks.MIRROR},
    )
    detached = await conn.execute(sa.text(_DETACH_SQL), {"refs": refs})
    mirrored = (
        await conn.execute(
            sa.text(
                _MIRROR_SQL.format(
                    write_off=write_off, revaluation=revaluation, mark_affected=_MARK_AFFECTED
                )
            ),
            {
                **params,
                "refs": refs,
                "detached": list(detached.scalars()),
                "unpaid": ledger.label_for("unpaid"),
            },
        )
    ).one()
    return set(mirrored.affected), mirrored.marked > 0


class Claim(enum.Enum):
    CLAIMED = "claimed"  # new: this transaction applies it
    DELIVERED = "delivered"  # committed earlier: answer with the stored response
    IN_FLIGHT = "in_flight"  # another transaction holds it right now


# The advisory lock (held to the end of the transaction) answers "in flight" at once rather
# than parking a pooled connection behind the other transaction; the insert then tells a new
# delivery from one committed before. Both in one round trip.
_CLAIM_SQL = f"""
WITH lock AS (
    SELECT pg_try_advisory_xact_lock({locks.webhook_delivery_sql("$1")}) AS got
),
claimed AS (
    INSERT INTO webhook_deliveries (
        webhook_id, body_sha256, source, status_code, response, postings_received
    )
    SELECT $1, $2, $3, 202, '{{}}'::jsonb, $4 FROM lock WHERE lock.got
    ON CONFLICT (webhook_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT got FROM lock) AS got, EXISTS (SELECT FROM claimed) AS claimed
"""


async def claim_delivery(
    conn: AsyncConnection,
    webhook_id: str,
    body_sha256: bytes,
    source: str | None,
    postings_received: int,
) -> Claim:
    # Through SQLAlchemy, which begins the transaction with this first statement.
    result = await conn.exec_driver_sql(
        _CLAIM_SQL, (webhook_id, body_sha256, source, postings_received)
    )
    row = result.one()
    if not row.got:
        return Claim.IN_FLIGHT
    return Claim.CLAIMED if row.claimed else Claim.DELIVERED


# The answer, and the worker's wake-up when store() left it to us, in one round trip.
_RECORD_ANSWER_SQL = """
WITH answer AS (
    UPDATE webhook_deliveries SET response = $2::jsonb WHERE webhook_id = $1
)
SELECT pg_notify($3, '') WHERE $4::boolean
"""


async def record_answer(
    conn: AsyncConnection, webhook_id: str, result: IngestResult, *, wake: bool = False
) -> None:
    driver = await driver_connection(conn)
    await driver.execute(
        _RECORD_ANSWER_SQL, webhook_id, result.model_dump_json(), contracts.DIRTY_CHANNEL, wake
    )


async def stored_delivery(
    conn: AsyncConnection, webhook_id: str
) -> tuple[bytes, dict[str, Any]] | None:
    row = (
        await conn.execute(
            sa.text("SELECT body_sha256, response FROM webhook_deliveries WHERE webhook_id = :id"),
            {"id": webhook_id},
        )
    ).first()
    if row is None:
        return None
    return bytes(row.body_sha256), dict(row.response)
