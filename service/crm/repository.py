"""All SQL of the CRM feature: claiming (leasing) outbox messages, recording outcomes,
dispatcher state, what the CRM shows, and the read-back cursor."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts

# First key of the two-key advisory locks taken per invoice, so they never meet another
# feature's locks ("LLCR").
ADVISORY_NAMESPACE = 0x4C4C4352

# The dispatcher's clock: the database's now(), or a fixed instant given by a test.
_NOW = "coalesce(CAST(:now AS timestamptz), now())"


@dataclass(frozen=True)
class Lease:
    """A claim on outbox messages (or the read-back cursor) held without a transaction: the
    rows carry `token` and are not due again for `seconds`; an outcome is recorded only while
    they still carry it."""

    token: uuid.UUID
    seconds: float

    @classmethod
    def new(cls, seconds: float) -> Lease:
        return cls(uuid.uuid4(), seconds)


@dataclass(frozen=True)
class Message:
    id: int
    invoice_number: str
    source: str
    payload: dict[str, Any]
    # Attempts before this one.
    attempts: int
    # When it was due before it was claimed (restored when it is handed back untried).
    due: datetime | None = None


@dataclass
class Group:
    """The pending messages of one invoice, oldest first; only the newest is delivered."""

    invoice_number: str
    messages: list[Message] = field(default_factory=list)
    crm_id: str | None = None
    # The newest message already delivered or skipped for this invoice, if any.
    done_id: int | None = None

    @property
    def newest(self) -> Message:
        return self.messages[-1]

    @property
    def stale(self) -> bool:
        """A re-queued dead letter older than what the CRM already has: never resent."""
        return self.done_id is not None and self.done_id > self.newest.id


@dataclass(frozen=True)
class Result:
    """How one message ends this attempt."""

    message: Message
    state: Literal["delivered", "skipped", "pending", "dead"]
    error: str | None = None
    # Seconds until the next attempt (state pending).
    delay: float | None = None

    @property
    def id(self) -> int:
        return self.message.id


# Due messages in the order they fell due, each kept only when no older message of its
# invoice is pending. The shape keeps the cost in proportion to what is claimed, whatever the
# planner believes about the pending rows: autovacuum mostly analyses `outbox` while it is
# drained, and a NOT EXISTS over pending rows was then planned as a scan of every pending row
# per pending row (minutes for a 50,000-message backlog). Here the walk stops after `limit`
# heads, and each step reads only its own invoice's older messages: the aggregate cannot be
# turned into a join, and with no state condition inside it no index of pending rows can serve
# it, only the one on (invoice_number, id).
_CLAIM_HEADS = sa.text(
    f"""
    SELECT o.id, o.invoice_number
    FROM outbox AS o
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE p.state = 'pending') AS older_pending
        FROM outbox AS p
        WHERE p.invoice_number = o.invoice_number AND p.id < o.id
    ) AS older
    WHERE o.state = 'pending' AND o.next_attempt_at <= {_NOW} AND older.older_pending = 0
    ORDER BY o.next_attempt_at, o.id
    LIMIT :limit
    FOR UPDATE OF o SKIP LOCKED
    """
)

_LOCK_INVOICES = sa.text(
    """
    SELECT t.invoice_number
    FROM unnest(CAST(:invoices AS text[])) AS t(invoice_number)
    WHERE pg_try_advisory_xact_lock(:namespace, hashtext(t.invoice_number))
    """
)

# Each claimed invoice's messages from its head on, locked. Pending ones are kept in Python
# rather than by a condition on `state`, which would let the planner pick the index of
# pending rows (believed empty) and scan all of them for every claim. `leased`: another
# dispatcher is calling the CRM for this invoice (a requeued dead letter can be a head then).
_LOAD_GROUPS = sa.text(
    f"""
    SELECT o.id, o.invoice_number, o.source, o.payload, o.attempts, o.state, i.crm_id,
           o.next_attempt_at,
           o.lease_token IS NOT NULL AND o.next_attempt_at > {_NOW} AS leased,
           (SELECT max(d.id) FROM outbox AS d
             WHERE d.invoice_number = o.invoice_number
               AND d.state IN ('delivered', 'skipped')) AS done_id
    FROM unnest(CAST(:invoices AS text[]), CAST(:heads AS bigint[])) AS h(invoice_number, id)
    JOIN outbox AS o ON o.invoice_number = h.invoice_number AND o.id >= h.id
    LEFT JOIN invoices AS i ON i.invoice_number = o.invoice_number
    ORDER BY o.invoice_number, o.id
    FOR UPDATE OF o
    """
)

# The claimed messages carry the lease: not due until it runs out, and the one to be sent
# has its attempt counted now (a worker killed mid-call still spent one).
_LEASE = sa.text(
    f"""
    UPDATE outbox SET lease_token = :token,
      next_attempt_at = {_NOW} + :seconds * interval '1 second',
      attempts = attempts + CASE WHEN id = ANY(CAST(:sending AS bigint[])) THEN 1 ELSE 0 END
    WHERE id = ANY(CAST(:ids AS bigint[]))
    """
)


async def claim(
    conn: AsyncConnection, *, limit: int, now: datetime | None, lease: Lease | None = None
) -> list[Group]:
    """Up to `limit` invoices with a due message, each with all its pending messages.

    Per invoice only the oldest pending message can be claimed, and only when it is due and
    no other dispatcher holds a lease on the invoice; the invoice is held by an advisory lock
    for the claiming transaction: a newer change never overtakes an older one, whatever the
    number of dispatchers. Without `lease` the messages stay locked by the caller's
    transaction; with one they are leased (the caller commits, then calls the CRM).
    """
    heads = (await conn.execute(_CLAIM_HEADS, {"limit": limit, "now": now})).all()
    if not heads:
        return []
    head_of = {row.invoice_number: row.id for row in heads}
    order = list(head_of)
    locked = set(
        (
            await conn.execute(_LOCK_INVOICES, {"invoices": order, "namespace": ADVISORY_NAMESPACE})
        ).scalars()
    )
    invoices = [n for n in order if n in locked]
    if not invoices:
        return []
    groups: dict[str, Group] = {}
    in_flight: set[str] = set()
    rows = await conn.execute(
        _LOAD_GROUPS, {"invoices": invoices, "heads": [head_of[n] for n in invoices], "now": now}
    )
    for row in rows:
        if row.state != "pending":
            continue
        if row.leased:
            in_flight.add(row.invoice_number)
        group = groups.setdefault(
            row.invoice_number,
            Group(row.invoice_number, crm_id=row.crm_id, done_id=row.done_id),
        )
        group.messages.append(
            Message(
                row.id,
                row.invoice_number,
                row.source,
                dict(row.payload),
                row.attempts,
                row.next_attempt_at,
            )
        )
    claimed = [groups[n] for n in invoices if n in groups and n not in in_flight]
    if lease is not None and claimed:
        await conn.execute(
            _LEASE,
            {
                "token": lease.token,
                "seconds": lease.seconds,
                "now": now,
                "ids": [m.id for g in claimed for m in g.messages],
                "sending": [g.newest.id for g in claimed if not g.stale],
            },
        )
    return claimed


async def held(conn: AsyncConnection, ids: Sequence[int], lease: Lease) -> set[int]:
    """Which of these messages are still pending under our lease, locked for the rest of the
    transaction (a dispatcher that outlived its lease records nothing)."""
    if not ids:
        return set()
    rows = await conn.execute(
        sa.text(
            "SELECT id FROM outbox WHERE id = ANY(CAST(:ids AS bigint[])) "
            "AND state = 'pending' AND lease_token = :token ORDER BY id FOR UPDATE"
        ),
        {"ids": list(ids), "token": lease.token},
    )
    return set(rows.scalars())


async def supersede(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(
            sa.text(
                "UPDATE outbox SET state = 'superseded', lease_token = NULL "
                "WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'pending'"
            ),
            {"ids": list(ids)},
        )


_RECORD = sa.text(
    f"""
    UPDATE outbox AS o SET
      state = u.state,
      attempts = u.attempts,
      last_error = u.error,
      next_attempt_at = CASE WHEN u.delay IS NULL THEN coalesce(u.due, o.next_attempt_at)
                             ELSE {_NOW} + u.delay * interval '1 second' END,
      delivered_at = CASE WHEN u.state = 'delivered' THEN {_NOW} ELSE o.delivered_at END,
      lease_token = NULL
    FROM unnest(CAST(:ids AS bigint[]), CAST(:states AS text[]), CAST(:errors AS text[]),
                CAST(:delays AS float8[]), CAST(:attempts AS int[]),
                CAST(:dues AS timestamptz[])) AS u(id, state, error, delay, attempts, due)
    WHERE o.id = u.id
    """
)


async def record(conn: AsyncConnection, results: Sequence[Result], *, now: datetime | None) -> None:
    """This attempt counted for each message, and where it stands now (one statement)."""
    if not results:
        return
    await conn.execute(
        _RECORD,
        {
            "ids": [r.id for r in results],
            "states": [r.state for r in results],
            "errors": [r.error for r in results],
            "delays": [r.delay for r in results],
            "attempts": [r.message.attempts + 1 for r in results],
            "dues": [r.message.due for r in results],
            "now": now,
        },
    )


async def release(conn: AsyncConnection, messages: Sequence[Message], lease: Lease) -> None:
    """Hand back messages claimed but not tried (or tried and cut short by a shutdown): due
    as before, their attempt not counted."""
    if not messages:
        return
    await conn.execute(
        sa.text(
            """
            UPDATE outbox AS o SET lease_token = NULL, attempts = u.attempts,
              next_attempt_at = u.due
            FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]),
                        CAST(:dues AS timestamptz[])) AS u(id, attempts, due)
            WHERE o.id = u.id AND o.lease_token = :token
            """
        ),
        {
            "ids": [m.id for m in messages],
            "attempts": [m.attempts for m in messages],
            "dues": [m.due for m in messages],
            "token": lease.token,
        },
    )


async def cache_crm_ids(conn: AsyncConnection, crm_ids: dict[str, str]) -> None:
    """Remember each invoice's CRM record id (a cache: updated_at is left alone)."""
    if not crm_ids:
        return
    numbers = sorted(crm_ids)
    await conn.execute(
        sa.text(
            """
            UPDATE invoices AS i SET crm_id = u.crm_id
            FROM unnest(CAST(:numbers AS text[]), CAST(:ids AS text[])) AS u(invoice_number, crm_id)
            WHERE i.invoice_number = u.invoice_number AND i.crm_id IS DISTINCT FROM u.crm_id
            """
        ),
        {"numbers": numbers, "ids": [crm_ids[n] for n in numbers]},
    )


async def observe_statuses(conn: AsyncConnection, seen: dict[str, int]) -> None:
    """Count the status values read from CRM invoices (fed to the picklist verification).

    Sorted, and run at the end of a batch: two dispatchers never wait on each other in a cycle.
    """
    if not seen:
        return
    values = sorted(seen)
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_observed_statuses AS c (value, times_seen)
            SELECT v.value, v.times FROM unnest(CAST(:values AS text[]), CAST(:times AS int[]))
              AS v(value, times)
            ORDER BY v.value
            ON CONFLICT (value) DO UPDATE
              SET last_seen = now(), times_seen = c.times_seen + EXCLUDED.times_seen
            """
        ),
        {"values": values, "times": [seen[v] for v in values]},
    )


KeepOutcome = Literal["updated", "unchanged", "no_invoice", "person_decided_later"]


# The actor of the history rows the CRM read-back writes: a person in OpenCRM, name unknown.
CRM_ACTOR = "opencrm"
_CRM_HISTORY = sa.text(
    contracts.insert_history(
        source="crm",
        invoice_number=":n",
        from_status=":from_status",
        to_status=":to_status",
        from_outstanding=":outstanding",
        to_outstanding=":outstanding",
        actor=f"'{CRM_ACTOR}'",
        reason=":reason",
    )
)


async def keep_crm_status(
    conn: AsyncConnection,
    *,
    invoice_number: str,
    message_id: int,
    crm_status: str,
    reason: str,
) -> KeepOutcome:
    """Give the mirror invoice the protected status a person set in the CRM, with history.

    Not when a person changed the invoice in ledgerlink after this message was written: that
    later decision is on its way to the CRM and wins.
    """
    current = (
        await conn.execute(
            sa.text(
                "SELECT status, outstanding FROM invoices WHERE invoice_number = :n FOR UPDATE"
            ),
            {"n": invoice_number},
        )
    ).first()
    if current is None:
        return "no_invoice"
    # A new statement after the row lock: it sees whatever a concurrent edit committed.
    later = (
        await conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE invoice_number = :n AND id > :id "
                "AND source IN ('manual', 'bulk'))"
            ),
            {"n": invoice_number, "id": message_id},
        )
    ).scalar_one()
    if later:
        return "person_decided_later"
    if current.status == crm_status:
        return "unchanged"
    outstanding: Decimal = current.outstanding
    await conn.execute(
        sa.text(
            "UPDATE invoices SET status = :status, updated_at = now() WHERE invoice_number = :n"
        ),
        {"status": crm_status, "n": invoice_number},
    )
    await conn.execute(
        _CRM_HISTORY,
        {
            "n": invoice_number,
            "from_status": current.status,
            "to_status": crm_status,
            "outstanding": outstanding,
            "reason": reason,
        },
    )
    await queue_for_reconcile(conn, [invoice_number])
    return "updated"


async def queue_for_reconcile(conn: AsyncConnection, numbers: Sequence[str]) -> None:
    """Contract 1 for invoices whose rows this transaction already locked: a protected status
    taken from the CRM is reconciled at once, so a disagreement with Sage shows as a conflict
    now rather than at the invoice's next posting."""
    if not numbers:
        return
    queued = await conn.execute(
        sa.text(
            """
            INSERT INTO dirty_invoices (invoice_number)
            SELECT n FROM unnest(CAST(:numbers AS text[])) AS n ORDER BY n
            ON CONFLICT (invoice_number) DO NOTHING
            RETURNING invoice_number
            """
        ),
        {"numbers": sorted(numbers)},
    )
    if queued.first() is not None:
        await contracts.notify(conn, contracts.DIRTY_CHANNEL)


# Dispatcher state (one row, id 1) -------------------------------------------------------------


@dataclass(frozen=True)
class DispatcherState:
    halted_reason: str | None = None
    halted_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    paging_problem: str | None = None
    paging_problem_at: datetime | None = None


async def record_halt(conn: AsyncConnection, reason: str) -> None:
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, halted_reason, halted_at, last_error,
              last_error_at, updated_at)
            VALUES (1, :reason, now(), :reason, now(), now())
            ON CONFLICT (id) DO UPDATE SET
              halted_reason = EXCLUDED.halted_reason,
              halted_at = coalesce(s.halted_at, EXCLUDED.halted_at),
              last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at,
              updated_at = now()
            """
        ),
        {"reason": reason},
    )


async def record_failure(conn: AsyncConnection, error: str) -> None:
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, last_error, last_error_at, updated_at)
            VALUES (1, :error, now(), now())
            ON CONFLICT (id) DO UPDATE SET last_error = EXCLUDED.last_error,
              last_error_at = EXCLUDED.last_error_at, updated_at = now()
            """
        ),
        {"error": error},
    )


async def record_success(conn: AsyncConnection) -> None:
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, last_success_at, updated_at)
            VALUES (1, now(), now())
            ON CONFLICT (id) DO UPDATE SET halted_reason = NULL, halted_at = NULL,
              last_success_at = EXCLUDED.last_success_at, updated_at = now()
            """
        )
    )


async def record_paging(conn: AsyncConnection, problem: str | None) -> None:
    """Remember that OpenCRM ignores paging (a page answered twice, a list that does not end),
    or, with None, that it was seen paging properly again."""
    if problem is None:
        await conn.execute(
            sa.text(
                "UPDATE crm_dispatcher_state SET paging_problem = NULL, paging_problem_at = NULL, "
                "updated_at = now() WHERE id = 1 AND paging_problem IS NOT NULL"
            )
        )
        return
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, paging_problem, paging_problem_at,
              updated_at)
            VALUES (1, :problem, now(), now())
            ON CONFLICT (id) DO UPDATE SET paging_problem = EXCLUDED.paging_problem,
              paging_problem_at = coalesce(s.paging_problem_at, EXCLUDED.paging_problem_at),
              updated_at = now()
            """
        ),
        {"problem": problem},
    )


async def read_state(conn: AsyncConnection) -> tuple[DispatcherState, int]:
    """The dispatcher state and the number of dead letters."""
    row = (
        await conn.execute(
            sa.text(
                """
                SELECT s.halted_reason, s.halted_at, s.last_error, s.last_error_at,
                       s.last_success_at, s.paging_problem, s.paging_problem_at,
                       (SELECT count(*) FROM outbox WHERE state = 'dead') AS dead
                FROM (SELECT 1) AS one
                LEFT JOIN crm_dispatcher_state AS s ON s.id = 1
                """
            )
        )
    ).one()
    state = DispatcherState(
        halted_reason=row.halted_reason,
        halted_at=row.halted_at,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        last_success_at=row.last_success_at,
        paging_problem=row.paging_problem,
        paging_problem_at=row.paging_problem_at,
    )
    return state, int(row.dead)


# The outbox as the API shows it ----------------------------------------------------------------

_COLUMNS = (
    "id, invoice_number, source, state, payload, attempts, next_attempt_at, last_error, "
    "created_at, delivered_at"
)


async def list_messages(
    conn: AsyncConnection,
    *,
    state: str | None,
    invoice_number: str | None,
    after_id: int,
    limit: int,
) -> list[sa.Row[Any]]:
    """Messages in id order after `after_id`; one more than `limit` tells there is a next page."""
    clauses = ["id > :after"]
    if state is not None:
        clauses.append("state = :state")
    if invoice_number is not None:
        clauses.append("invoice_number = :invoice_number")
    query = sa.text(
        f"SELECT {_COLUMNS} FROM outbox WHERE {' AND '.join(clauses)} ORDER BY id LIMIT :limit"
    )
    params = {
        "after": after_id,
        "state": state,
        "invoice_number": invoice_number,
        "limit": limit + 1,
    }
    result = await conn.execute(query, {k: v for k, v in params.items() if v is not None})
    return list(result.all())


async def get_message(conn: AsyncConnection, message_id: int) -> sa.Row[Any] | None:
    return (
        await conn.execute(
            sa.text(f"SELECT {_COLUMNS} FROM outbox WHERE id = :id"), {"id": message_id}
        )
    ).first()


async def requeue_dead(conn: AsyncConnection, message_id: int) -> sa.Row[Any] | None:
    """A dead letter back to pending, attempts reset; None when it is not a dead letter."""
    return (
        await conn.execute(
            sa.text(
                f"""
                UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now()
                WHERE id = :id AND state = 'dead'
                RETURNING {_COLUMNS}
                """
            ),
            {"id": message_id},
        )
    ).first()


async def notify_outbox(conn: AsyncConnection) -> None:
    await contracts.notify(conn, contracts.OUTBOX_CHANNEL)


# What the CRM shows (read back, or known from a delivery) -------------------------------------


@dataclass(frozen=True)
class CrmView:
    invoice_number: str
    crm_id: str | None
    status: str | None
    outstanding: Decimal | None
    modified: str | None = None


_REMEMBER = sa.text(
    """
    INSERT INTO crm_invoices AS c (invoice_number, crm_id, status, outstanding, modified, seen_at)
    SELECT v.invoice_number, v.crm_id, v.status, v.outstanding, v.modified, now()
    FROM unnest(CAST(:numbers AS text[]), CAST(:ids AS text[]), CAST(:statuses AS text[]),
                CAST(:outstanding AS numeric[]), CAST(:modified AS text[]))
      AS v(invoice_number, crm_id, status, outstanding, modified)
    JOIN invoices AS i ON i.invoice_number = v.invoice_number
    ORDER BY v.invoice_number
    ON CONFLICT (invoice_number) DO UPDATE SET
      crm_id = coalesce(EXCLUDED.crm_id, c.crm_id),
      status = EXCLUDED.status,
      outstanding = EXCLUDED.outstanding,
      modified = coalesce(EXCLUDED.modified, c.modified),
      seen_at = EXCLUDED.seen_at
    -- Every scan sees every invoice: rewrite only what changed (seen_at: since when).
    WHERE (c.status, c.outstanding) IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.outstanding)
       OR c.crm_id IS DISTINCT FROM coalesce(EXCLUDED.crm_id, c.crm_id)
       OR c.modified IS DISTINCT FROM coalesce(EXCLUDED.modified, c.modified)
    """
)


async def remember_crm_views(conn: AsyncConnection, views: Sequence[CrmView]) -> None:
    """Store what the CRM shows for invoices we hold (one row per invoice number given)."""
    if not views:
        return
    ordered = sorted(views, key=lambda v: v.invoice_number)
    await conn.execute(
        _REMEMBER,
        {
            "numbers": [v.invoice_number for v in ordered],
            "ids": [v.crm_id for v in ordered],
            "statuses": [v.status for v in ordered],
            "outstanding": [v.outstanding for v in ordered],
            "modified": [v.modified for v in ordered],
        },
    )


async def people_deciding(conn: AsyncConnection) -> list[str]:
    """Invoices with a person's change (PATCH, Global Update) not yet delivered to the CRM."""
    rows = await conn.execute(
        sa.text(
            "SELECT DISTINCT invoice_number FROM outbox "
            "WHERE state = 'pending' AND source IN ('manual', 'bulk')"
        )
    )
    return list(rows.scalars())


_ADOPT_HISTORY = contracts.insert_history(
    source="crm",
    invoice_number="a.invoice_number",
    from_status="old.status",
    to_status="a.status",
    from_outstanding="old.outstanding",
    to_outstanding="old.outstanding",
    actor=f"'{CRM_ACTOR}'",
    reason="format(:reason, a.status)",
    from_="adopted AS a JOIN old ON old.invoice_number = a.invoice_number",
    order_by="a.invoice_number",
    returning="invoice_number",
)
_ADOPT = sa.text(
    f"""
    WITH seen AS (
        SELECT s.invoice_number, s.status
        FROM unnest(CAST(:numbers AS text[]), CAST(:statuses AS text[]))
          AS s(invoice_number, status)
        WHERE s.invoice_number <> ALL(CAST(:deciding AS text[]))
    ),
    old AS (
        SELECT i.invoice_number, i.status, i.outstanding
        FROM invoices AS i JOIN seen AS s ON s.invoice_number = i.invoice_number
        WHERE i.status IS DISTINCT FROM s.status
          AND NOT EXISTS (
            SELECT 1 FROM outbox AS o
            WHERE o.invoice_number = i.invoice_number AND o.state = 'pending'
              AND o.source IN ('manual', 'bulk'))
        ORDER BY i.invoice_number
        FOR UPDATE OF i
    ),
    adopted AS (
        UPDATE invoices AS i SET status = s.status, updated_at = now()
        FROM old JOIN seen AS s ON s.invoice_number = old.invoice_number
        WHERE i.invoice_number = old.invoice_number
        RETURNING i.invoice_number, s.status
    )
    {_ADOPT_HISTORY}
    """
)


async def adopt_protected(
    conn: AsyncConnection, statuses: dict[str, str], *, deciding: Sequence[str], reason: str
) -> list[str]:
    """Give our invoices the protected status the CRM shows, with a history row each (source
    crm), and queue them for reconciliation (the conflict with Sage, if any, shows at once).
    Not where a person's change made in ledgerlink is on its way to the CRM: it was, or may
    have been, decided after what the CRM showed. `reason` has one %s, the status."""
    if not statuses:
        return []
    numbers = sorted(statuses)
    rows = await conn.execute(
        _ADOPT,
        {
            "numbers": numbers,
            "statuses": [statuses[n] for n in numbers],
            "deciding": list(deciding),
            "reason": reason,
        },
    )
    adopted = list(rows.scalars())
    await queue_for_reconcile(conn, adopted)
    return adopted


# The read-back cursor (one row, id 1) -----------------------------------------------------------


@dataclass(frozen=True)
class ReadbackState:
    scan_started_at: datetime | None
    scan_day: date | None
    page_start: int
    last_modified: str | None
    failures: int
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_completed_at: datetime | None = None
    page_digest: str | None = None
    pages: int = 0
    scan_skipped: int = 0
    skipped: int = 0
    last_skipped: str | None = None
    last_skipped_at: datetime | None = None


_READBACK_COLUMNS = (
    "scan_started_at, scan_day, page_start, last_modified, failures, last_error, "
    "last_error_at, last_completed_at, page_digest, pages, scan_skipped, skipped, "
    "last_skipped, last_skipped_at"
)


async def claim_readback(
    conn: AsyncConnection, *, interval: float, lease: Lease
) -> ReadbackState | None:
    """Lease the cursor when a page is due; None when none is, or when another worker holds
    it (its lease, or the row lock of its short transaction: SKIP LOCKED, one reader at a
    time). The lease makes the cursor not due until it runs out (a killed reader's does)."""
    await conn.execute(
        sa.text("INSERT INTO crm_readback_state (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
    )
    row = (
        await conn.execute(
            sa.text(
                f"""
                UPDATE crm_readback_state SET lease_token = :token,
                  next_run_at = now() + :seconds * interval '1 second'
                WHERE id = (
                    SELECT id FROM crm_readback_state
                    WHERE id = 1 AND next_run_at <= now()
                      AND (scan_started_at IS NOT NULL OR last_completed_at IS NULL
                           OR last_completed_at + :interval * interval '1 second' <= now())
                    FOR UPDATE SKIP LOCKED)
                RETURNING {_READBACK_COLUMNS}
                """
            ),
            {"interval": interval, "token": lease.token, "seconds": lease.seconds},
        )
    ).first()
    return ReadbackState(**row._mapping) if row is not None else None


async def hold_readback(conn: AsyncConnection, lease: Lease) -> bool:
    """Lock the cursor for the transaction applying a page, if the lease is still ours."""
    row = await conn.execute(
        sa.text(
            "SELECT 1 FROM crm_readback_state WHERE id = 1 AND lease_token = :token FOR UPDATE"
        ),
        {"token": lease.token},
    )
    return row.first() is not None


@dataclass(frozen=True)
class Skipped:
    """Records of a page that could not be stored: how many, and the last one's reason."""

    count: int = 0
    last: str | None = None


async def advance_readback(
    conn: AsyncConnection,
    *,
    scan_day: date | None,
    page_start: int,
    last_modified: str | None,
    finished: bool,
    page_digest: str | None,
    skipped: Skipped,
) -> None:
    """Move the cursor past the page just applied (same transaction as what it taught us,
    the cursor held by `hold_readback`) and end the lease."""
    await conn.execute(
        sa.text(
            """
            UPDATE crm_readback_state SET
              scan_started_at = CASE WHEN :finished THEN NULL
                                     ELSE coalesce(scan_started_at, now()) END,
              scan_day = :scan_day,
              page_start = :page_start,
              last_modified = :last_modified,
              failures = 0,
              last_completed_at = CASE WHEN :finished THEN now() ELSE last_completed_at END,
              page_digest = CASE WHEN :finished THEN NULL ELSE :page_digest END,
              pages = CASE WHEN :finished THEN 0 ELSE pages + 1 END,
              skipped = CASE WHEN :finished THEN scan_skipped + :skipped ELSE skipped END,
              scan_skipped = CASE WHEN :finished THEN 0 ELSE scan_skipped + :skipped END,
              last_skipped = coalesce(:last_skipped, last_skipped),
              last_skipped_at = CASE WHEN :skipped > 0 THEN now() ELSE last_skipped_at END,
              lease_token = NULL,
              next_run_at = now()
            WHERE id = 1
            """
        ).bindparams(sa.bindparam("finished", type_=sa.Boolean)),
        {
            "finished": finished,
            "scan_day": scan_day,
            "page_start": page_start,
            "last_modified": last_modified,
            "page_digest": page_digest,
            "skipped": skipped.count,
            "last_skipped": skipped.last,
        },
    )


async def readback_failed(
    conn: AsyncConnection, *, lease: Lease, error: str, delay: float, restart: bool = False
) -> None:
    """End the lease; no reader tries again before `delay` seconds. The cursor stays where it
    is (the page that failed is asked again), or with `restart` the scan starts over."""
    await conn.execute(
        sa.text(
            """
            UPDATE crm_readback_state SET failures = failures + 1, last_error = :error,
              last_error_at = now(), next_run_at = now() + :delay * interval '1 second',
              lease_token = NULL,
              scan_started_at = CASE WHEN :restart THEN NULL ELSE scan_started_at END,
              page_start = CASE WHEN :restart THEN 0 ELSE page_start END,
              page_digest = CASE WHEN :restart THEN NULL ELSE page_digest END,
              pages = CASE WHEN :restart THEN 0 ELSE pages END,
              scan_skipped = CASE WHEN :restart THEN 0 ELSE scan_skipped END
            WHERE id = 1 AND lease_token = :token
            """
        ).bindparams(sa.bindparam("restart", type_=sa.Boolean)),
        {"error": error, "delay": delay, "token": lease.token, "restart": restart},
    )


async def release_readback(conn: AsyncConnection, lease: Lease) -> None:
    """Hand the cursor back untouched (a shutdown in the middle of a page): due at once."""
    await conn.execute(
        sa.text(
            "UPDATE crm_readback_state SET lease_token = NULL, next_run_at = now() "
            "WHERE id = 1 AND lease_token = :token"
        ),
        {"token": lease.token},
    )


async def read_readback_state(conn: AsyncConnection) -> ReadbackState | None:
    row = (
        await conn.execute(
            sa.text(f"SELECT {_READBACK_COLUMNS} FROM crm_readback_state WHERE id = 1")
        )
    ).first()
    return ReadbackState(**row._mapping) if row is not None else None
