"""The outbox as the dispatcher works it: claiming (and leasing) each invoice's due messages,
recording what became of them, handing back what was not tried."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.crm.lease import Lease
from service.ledger.locks import CRM_INVOICE

# The dispatcher's clock: the database's now(), or a fixed instant given by a test.
_NOW = "coalesce(CAST(:now AS timestamptz), now())"


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
# invoice is pending. The walk stops after `limit` heads, and each step reads only its own
# invoice's older messages, so the cost follows what is claimed whatever the planner believes
# about the pending rows (their statistics are mostly taken while the outbox drains, so they are
# wrong exactly when it matters): the aggregate cannot be turned into a join, and with no state
# condition inside it no index of pending rows can serve it, only the one on
# (invoice_number, id). docs/BENCHMARKS.md ("CRM outbox drain") has the plan this replaced.
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
            await conn.execute(_LOCK_INVOICES, {"invoices": order, "namespace": CRM_INVOICE})
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


async def still_leased(conn: AsyncConnection, ids: Sequence[int], lease: Lease) -> set[int]:
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
