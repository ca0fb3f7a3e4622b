"""The console sign-in backs off on wrong keys, per client address, on every replica.

The waits are read from the table (seeded or aged by the tests), never by sleeping. The runs of
real guesses allow a margin that only hours of slowness could use up: after the free tries the
waits double from one second, so a fourteenth key checked would need 4.5 hours to go by."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.console.throttle import Waiting
from service.deps import runtime_of
from service.main import create_app
from tests.console.support import CONSOLE_SECRET, csrf_from
from tests.support.keys import READ_KEY
from tests.support.settings import make_settings

FREE = 5  # wrong keys that cost nothing (service/console/throttle.py)
FEW = 14  # fewer keys than this are ever checked in a burst (see the module's docstring)


class Browser:
    """A visitor at one client address, with the sign-in form's CSRF token."""

    def __init__(self, c: httpx.AsyncClient, token: str) -> None:
        self.c, self.token = c, token

    async def sign_in(self, key: str) -> httpx.Response:
        return await self.c.post(
            "/console/sign-in", data={"csrf_token": self.token, "api_key": key}
        )


@asynccontextmanager
async def visitor(app: FastAPI, address: str = "127.0.0.1") -> AsyncIterator[Browser]:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        page = await c.get("/console/sign-in")
        yield Browser(c, csrf_from(page.text))


def guess(n: int) -> str:
    return f"guessed-key-{n:05d}-000000"


async def set_failures(engine: AsyncEngine, client: str, failures: int, ago: timedelta) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO console_sign_in_failures (client, failures, last_failed_at) "
                "VALUES (:c, :f, now() - CAST(:ago AS interval)) ON CONFLICT (client) DO UPDATE "
                "SET failures = EXCLUDED.failures, last_failed_at = EXCLUDED.last_failed_at"
            ),
            {"c": client, "f": failures, "ago": ago},
        )


async def failures_of(engine: AsyncEngine, client: str) -> int | None:
    async with engine.connect() as conn:
        found: int | None = await conn.scalar(
            sa.text("SELECT failures FROM console_sign_in_failures WHERE client = :c"),
            {"c": client},
        )
        return found


async def test_three_hundred_wrong_keys_are_mostly_refused_unread(app: FastAPI) -> None:
    async with visitor(app) as v:
        answers = [await v.sign_in(guess(n)) for n in range(300)]
    statuses = [a.status_code for a in answers]
    assert statuses[: FREE + 1] == [401] * (FREE + 1)
    assert statuses.count(401) < FEW, statuses
    assert set(statuses[FREE + 1 :]) <= {401, 429}
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) > 300 - FEW
    for answer in refused:
        assert 1 <= int(answer.headers["retry-after"]) <= 15 * 60
        assert "Too many wrong keys from your address" in answer.text
        assert answer.headers["content-type"].startswith("text/html")


async def test_a_burst_of_parallel_guesses_is_counted_one_by_one(app: FastAPI) -> None:
    async with visitor(app) as v:
        answers = await asyncio.gather(*(v.sign_in(guess(n)) for n in range(40)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(401) < FEW, statuses
    assert statuses.count(429) > 40 - FEW


async def test_the_right_key_waits_too_then_gets_in(app: FastAPI, engine: AsyncEngine) -> None:
    """While an address waits its key is not even read (else the wait would slow nobody); a
    person is kept out at most 15 minutes after the last wrong key."""
    await set_failures(engine, "127.0.0.1", 40, timedelta(seconds=1))
    async with visitor(app) as v:
        waiting = await v.sign_in(READ_KEY)
        assert waiting.status_code == 429
        assert 890 <= int(waiting.headers["retry-after"]) <= 900
        assert "wait 15 minutes" in waiting.text
        await set_failures(engine, "127.0.0.1", 40, timedelta(minutes=15))
        # The process remembers the wait by its own clock: forget it, as 15 minutes would.
        runtime_of(app).console_keys.waiting = Waiting()
        assert (await v.sign_in(READ_KEY)).status_code == 303
    assert await failures_of(engine, "127.0.0.1") == 40  # a right key resets nothing


async def test_an_hour_without_a_wrong_key_starts_afresh(app: FastAPI, engine: AsyncEngine) -> None:
    await set_failures(engine, "127.0.0.1", 40, timedelta(minutes=61))
    async with visitor(app) as v:
        assert (await v.sign_in(guess(1))).status_code == 401
    assert await failures_of(engine, "127.0.0.1") == 1


async def test_other_addresses_are_not_kept_out(app: FastAPI, engine: AsyncEngine) -> None:
    """Counted per address; an IPv6 client per /64 (one host is given a whole /64)."""
    await set_failures(engine, "127.0.0.1", 40, timedelta(seconds=1))
    await set_failures(engine, "2001:db8:1:2::/64", 40, timedelta(seconds=1))
    async with visitor(app, "2001:db8:1:2::99") as same_network:
        assert (await same_network.sign_in(READ_KEY)).status_code == 429
    for address in ("203.0.113.7", "2001:db8:1:3::1", "::ffff:198.51.100.4"):
        async with visitor(app, address) as other:
            assert (await other.sign_in(READ_KEY)).status_code == 303, address
    await set_failures(engine, "198.51.100.4", 40, timedelta(seconds=1))
    async with visitor(app, "::ffff:198.51.100.4") as mapped:
        assert (await mapped.sign_in(READ_KEY)).status_code == 429


async def test_every_replica_backs_off(
    app: FastAPI, engine: AsyncEngine, database_url: str
) -> None:
    """The count is in PostgreSQL: another replica (or this one restarted) keeps it."""
    async with visitor(app) as v:
        for n in range(FREE + 1):
            assert (await v.sign_in(guess(n))).status_code == 401
    await set_failures(engine, "127.0.0.1", 40, timedelta(seconds=1))
    other = create_app(
        make_settings(
            database_url, write_off_mode="sagelink", console_session_secret=CONSOLE_SECRET
        )
    )
    async with LifespanManager(other), visitor(other) as elsewhere:
        assert (await elsewhere.sign_in(READ_KEY)).status_code == 429


@pytest.mark.parametrize("times", [1, 3])
async def test_forgotten_counts_are_deleted(app: FastAPI, engine: AsyncEngine, times: int) -> None:
    for n in range(times):
        await set_failures(engine, f"192.0.2.{n}", 9, timedelta(hours=2))
    await set_failures(engine, "192.0.2.200", 9, timedelta(minutes=1))
    async with visitor(app, "203.0.113.9") as v:
        assert (await v.sign_in(READ_KEY)).status_code == 303
    async with engine.connect() as conn:
        left = await conn.scalars(sa.text("SELECT client FROM console_sign_in_failures"))
        assert list(left) == ["192.0.2.200"]


async def test_an_address_known_to_wait_takes_no_database_connection(
    app: FastAPI, engine: AsyncEngine
) -> None:
    """A flood of guesses from one address does not tie up the pool: once this process has
    been told the address waits, its tries are refused before a connection is taken."""
    await set_failures(engine, "127.0.0.1", 40, timedelta(seconds=1))
    checkouts: list[object] = []

    def checked_out(*_: object) -> None:
        checkouts.append(object())

    async with visitor(app) as v:
        assert (await v.sign_in(guess(1))).status_code == 429
        pool = runtime_of(app).engine.sync_engine.pool
        event.listen(pool, "checkout", checked_out)
        try:
            answers = [await v.sign_in(guess(n)) for n in range(20)]
        finally:
            event.remove(pool, "checkout", checked_out)
    assert {a.status_code for a in answers} == {429}
    assert checkouts == []
