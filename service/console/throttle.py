"""The console sign-in's back-off on wrong keys, per client address, kept in PostgreSQL.

An API key has no user name to count failures against, so they are counted per client
address (an IPv6 client's /64: one host is given a whole /64). The first FREE_FAILURES wrong
keys cost nothing (a person mistypes); each one after doubles the wait before the next try,
from one second up to MAX_WAIT_SECONDS, and an address that sends no wrong key for
FORGET_SECONDS starts afresh. While an address waits, its sign-ins are refused (429 with
Retry-After) without looking at the key, the right one included: otherwise the wait would
slow nobody down. A person is never kept out longer than MAX_WAIT_SECONDS after the last
wrong key.

The counts live in PostgreSQL, not in each process: every replica would otherwise give its own
allowance, and a restart would forget the count. Sign-ins from one address are serialised
(an advisory lock), so parallel guesses are counted one after another.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection

from service.console import repository

FREE_FAILURES = 5
MAX_WAIT_SECONDS = 15 * 60
FORGET_SECONDS = 60 * 60
# Each sign-in deletes at most this many forgotten counts and ended sessions.
CLEANUP_BATCH = 100
# Addresses one process remembers as waiting (the oldest notes go first).
REMEMBERED = 10_000


def client_of(request: Request) -> str:
    """The address failures are counted against: the client's, or its IPv6 /64.

    Behind a proxy this is the address the proxy forwards (uvicorn reads X-Forwarded-For from
    the addresses in FORWARDED_ALLOW_IPS); otherwise every person would share the proxy's."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def wait_after(failures: int) -> float:
    """How long an address must wait after its last wrong key, given how many it sent."""
    if failures <= FREE_FAILURES:
        return 0.0
    return float(min(2 ** (failures - FREE_FAILURES - 1), MAX_WAIT_SECONDS))


async def hold(conn: AsyncConnection, client: str) -> int:
    """Take `client`'s turn (until the transaction ends); the seconds it must still wait (0 =
    it may try a key now)."""
    await repository.lock_client(conn, client)
    found = await repository.failures(conn, client)
    if found is None or found.seconds_since_last >= FORGET_SECONDS:
        return 0
    return math.ceil(max(wait_after(found.failures) - found.seconds_since_last, 0.0))


async def record_failure(conn: AsyncConnection, client: str) -> int:
    """Count a wrong key; the seconds `client` must now wait before its next try."""
    count = await repository.record_failure(conn, client, forget_seconds=FORGET_SECONDS)
    return math.ceil(wait_after(count))


async def forget_old(conn: AsyncConnection) -> None:
    await repository.delete_forgotten_failures(
        conn, forget_seconds=FORGET_SECONDS, limit=CLEANUP_BATCH
    )


class Waiting:
    """The addresses this process saw told to wait, and until when: their next tries are
    refused before the request takes a database connection. It only ever refuses what the
    database would (another replica, or a restart, asks the database); the database's count
    stays the one that decides."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self.size = size
        self._until: OrderedDict[str, float] = OrderedDict()

    def remaining(self, client: str) -> int:
        until = self._until.get(client)
        if until is None:
            return 0
        left = until - time.monotonic()
        if left <= 0:
            del self._until[client]
            return 0
        return math.ceil(left)

    def note(self, client: str, seconds: int) -> None:
        if seconds <= 0:
            return
        self._until[client] = time.monotonic() + seconds
        self._until.move_to_end(client)
        while len(self._until) > self.size:
            self._until.popitem(last=False)
