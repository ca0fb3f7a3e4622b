"""CRM outages end to end: down, 5xx, 429, then recovery; dead letters only after the cap."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.crm.e2e import (
    Ledger,
    assert_crm_matches,
    crm_sequence,
    crm_settings,
    drained,
    is_subsequence,
    running_worker,
    wait_for,
)
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.keys import ADMIN_KEY, auth
from tests.support.queries import scalar

pytestmark = pytest.mark.faults

NUMBERS = [f"INV-{i:03d}" for i in range(6)]


async def test_nothing_is_dropped_or_reordered_through_outages(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm
) -> None:
    settings = crm_settings(database_url, fake_crm)
    ledger = Ledger(engine)
    await ledger.open(fake_crm, NUMBERS)
    async with running_worker(settings, engine, database_url):
        await ledger.round(NUMBERS, 0)
        await drained(engine)

        # Down: connections refused. Changes pile up, retried, none lost.
        fake_crm.stop()
        await ledger.round(NUMBERS, 1)
        await wait_for(engine, "EXISTS (SELECT 1 FROM outbox WHERE attempts >= 2)")
        await ledger.round(NUMBERS, 2)
        await wait_for(
            engine, "(SELECT last_error FROM crm_dispatcher_state) LIKE '%ConnectError%'"
        )
        fake_crm.start()
        await drained(engine)

        # 5xx for a while.
        fake_crm.fail_next(8, 500)
        await ledger.round(NUMBERS, 3)
        await drained(engine)

        # Throttled: 429 with Retry-After, then served.
        fake_crm.fail_next(3, 429, retry_after="1")
        await ledger.round(NUMBERS, 4)
        await drained(engine)

    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE state = 'dead'") == 0
    assert await scalar(engine, "SELECT max(attempts) FROM outbox") >= 2
    for number in NUMBERS:
        seen = crm_sequence(fake_crm, number)
        assert is_subsequence(seen, ledger.changes[number]), (seen, ledger.changes[number])
        # Rounds 3 and 4 each were drained before the next: both arrived, in order.
        assert seen[-2:] == ledger.changes[number][-2:]
    assert_crm_matches(fake_crm, await ledger.ours())
    assert any(call.answered == 429 for call in fake_crm.calls())
    assert sum(call.answered == 500 for call in fake_crm.calls()) == 8


async def test_dead_letters_come_only_after_the_configured_attempts_and_can_be_retried(
    engine: AsyncEngine,
    database_url: str,
    fake_crm: FakeOpenCrm,
    client: httpx.AsyncClient,
) -> None:
    settings = crm_settings(database_url, fake_crm, crm_max_attempts=3)
    ledger = Ledger(engine)
    await ledger.open(fake_crm, NUMBERS[:2])
    broken = NUMBERS[0]
    fake_crm.failing_invoices[broken] = 502
    async with running_worker(settings, engine, database_url):
        await ledger.round(NUMBERS[:2], 0)
        await wait_for(engine, "EXISTS (SELECT 1 FROM outbox WHERE state = 'dead')")
        await drained(engine)
        failed = [c for c in fake_crm.calls() if c.answered == 502]
        assert len(failed) == 3
        dead = await scalar(engine, "SELECT id FROM outbox WHERE state = 'dead' AND attempts = 3")
        assert dead is not None
        assert crm_sequence(fake_crm, NUMBERS[1]) == ledger.changes[NUMBERS[1]]
        assert crm_sequence(fake_crm, broken) == []

        listed = await client.get("/v1/crm/outbox?state=dead", headers=auth(ADMIN_KEY))
        assert [m["invoice_number"] for m in listed.json()["items"]] == [broken]
        assert "HTTP 502" in listed.json()["items"][0]["last_error"]

        del fake_crm.failing_invoices[broken]
        retried = await client.post(f"/v1/crm/outbox/{dead}/retry", headers=auth(ADMIN_KEY))
        assert retried.status_code == 200, retried.text
        await drained(engine)
    assert await scalar(engine, "SELECT state FROM outbox WHERE id = :id", id=dead) == "delivered"
    assert_crm_matches(fake_crm, await ledger.ours())
