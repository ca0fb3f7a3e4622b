"""Shared by the fault tests: batches a client pushes and what became of each, a database to
look into (plain asyncpg, so a restart of the server cannot confuse a pool), deadlines."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson

from service.db import libpq_url
from service.migrate import upgrade_to_head
from tests.support.factories import WEBHOOK, settle, si
from tests.support.processes import FAULT_KEY, LedgerlinkProcess, ThrowawayPostgres
from tests.support.webhooks import signed_request

ADMIN = {"Authorization": f"Bearer {FAULT_KEY}"}


# The fault tests' name for a ledgerlink subprocess.
Service = LedgerlinkProcess


@asynccontextmanager
async def migrated_postgres() -> AsyncIterator[ThrowawayPostgres]:
    """A throwaway PostgreSQL at the newest schema (started off the event loop)."""
    pg = ThrowawayPostgres()
    await asyncio.to_thread(pg.__enter__)
    try:
        await asyncio.to_thread(upgrade_to_head, pg.url)
        yield pg
    finally:
        await asyncio.to_thread(pg.__exit__, None, None, None)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        yield conn
    finally:
        await conn.close()


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    async with connected(url) as conn:
        return await conn.fetchval(sql, *args)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.2
) -> None:
    """Poll until `check` holds: a deadline, not a timing assertion."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(every)


_trans = itertools.count(1)


@dataclass
class Batch:
    """A batch of `invoices` invoices (SI 100.00), each paid in full by a receipt (SR)."""

    invoices: int
    webhook_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    postings: list[dict[str, Any]] = field(default_factory=list)
    # What each attempt got: an HTTP status, or the transport error's name.
    outcomes: list[int | str] = field(default_factory=list)
    retry_after: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.postings:
            return
        for _ in range(self.invoices):
            invoice = next(_trans) * 2
            self.postings += [
                si(invoice, f"F-{invoice}", "100.00", account="FAULT01", day="2026-04-01"),
                settle(
                    invoice + 1,
                    "SR",
                    [(invoice, "100.00")],
                    account="FAULT01",
                    day="2026-04-02",
                    reference="BACS",
                ),
            ]

    @property
    def body(self) -> bytes:
        return orjson.dumps({"source": "fault-tests", "postings": self.postings})

    @property
    def trans(self) -> list[int]:
        return [p["tran_number"] for p in self.postings]

    @property
    def acknowledged(self) -> bool:
        return any(isinstance(o, int) and 200 <= o < 300 for o in self.outcomes)


async def push(http: httpx.AsyncClient, batch: Batch, *, seconds: float = 15.0) -> int | str:
    """One delivery attempt (signed now, same id and body every time); records the outcome."""
    body, headers = signed_request(batch.body, webhook_id=batch.webhook_id)
    try:
        response = await http.post(WEBHOOK, content=body, headers=headers, timeout=seconds)
    except httpx.TransportError as exc:
        batch.outcomes.append(type(exc).__name__)
        batch.retry_after.append(None)
        return type(exc).__name__
    batch.outcomes.append(response.status_code)
    batch.retry_after.append(response.headers.get("retry-after"))
    return response.status_code


@dataclass(frozen=True)
class Stored:
    """Which postings and which deliveries the database holds."""

    trans: frozenset[int]
    deliveries: frozenset[str]

    def of(self, batch: Batch) -> tuple[int, int]:
        """(postings of the batch stored, delivery rows for its id)."""
        postings = sum(t in self.trans for t in batch.trans)
        return postings, int(batch.webhook_id in self.deliveries)


async def stored(url: str) -> Stored:
    async with connected(url) as conn:
        trans = await conn.fetch("SELECT tran_number FROM postings")
        ids = await conn.fetch("SELECT webhook_id FROM webhook_deliveries")
    return Stored(frozenset(r[0] for r in trans), frozenset(r[0] for r in ids))


async def readiness(http: httpx.AsyncClient) -> int | str:
    try:
        return (await http.get("/readyz", timeout=5)).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


# Invoices that are not whole: a status other than its last history row's, a balance other
# than its figures say, history on an invoice never reconciled, or an invoice neither
# reconciled nor waiting to be (work lost).
INCONSISTENT_INVOICES = """
WITH last AS (
    SELECT DISTINCT ON (invoice_number) invoice_number, to_status, to_outstanding
    FROM status_history ORDER BY invoice_number, at DESC, id DESC
)
SELECT i.invoice_number, i.status, i.outstanding, i.derived_state, l.to_status
FROM invoices AS i
LEFT JOIN last AS l USING (invoice_number)
WHERE (l.invoice_number IS NOT NULL AND l.to_status IS DISTINCT FROM i.status)
   OR (i.derived_state IS NOT NULL
       AND i.outstanding <> i.gross - i.paid - i.discounted - i.written_off - i.credited)
   OR (i.derived_state IS NULL AND l.invoice_number IS NOT NULL)
   OR (i.derived_state IS NULL
       AND NOT EXISTS (SELECT FROM dirty_invoices AS d WHERE d.invoice_number = i.invoice_number))
LIMIT 20
"""
DOUBLED_HISTORY = """
SELECT invoice_number, from_status, to_status, run_id, count(*)
FROM status_history
GROUP BY invoice_number, from_status, to_status, run_id
HAVING count(*) > 1
LIMIT 20
"""
# The fault tests change each invoice's status at most once: the same change twice for one
# invoice is work applied twice, even under two different run ids.
REPEATED_CHANGE = """
SELECT invoice_number, from_status, to_status, count(*)
FROM status_history
GROUP BY invoice_number, from_status, to_status
HAVING count(*) > 1
LIMIT 20
"""


async def consistency_problems(url: str) -> dict[str, list[Any]]:
    async with connected(url) as conn:
        return {
            name: [tuple(row) for row in await conn.fetch(sql)]
            for name, sql in (
                ("inconsistent invoices", INCONSISTENT_INVOICES),
                ("doubled history rows", DOUBLED_HISTORY),
                ("repeated changes", REPEATED_CHANGE),
            )
        }
