"""The dispatcher holds no transaction while the CRM is called: it leases what it claims
(issue 24, items 3 and 7). A killed dispatcher's lease runs out and another one delivers; a
dispatcher that outlived its lease records nothing."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.crm.connector import Change, Outcome, Pushed
from service.crm.repository import outbox_admin
from tests.crm.support import Clocks, dispatcher, opencrm_connector
from tests.support.factories import add_invoice, add_message
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.queries import messages, scalar

LEASE = 30.0


async def open_transactions(engine: AsyncEngine) -> int:
    """Sessions of this test database sitting in an open transaction, waiting on something."""
    count: int = await scalar(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    return count


async def test_no_transaction_is_open_while_a_delivery_waits_on_the_crm(
    engine: AsyncEngine, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    fake_crm.add_invoice("INV-1", status="Unpaid", outstanding="100.00")
    await add_invoice(engine, "INV-1", gross="100.00")
    message = await add_message(engine, "INV-1", "Paid", "0.00")
    hold = fake_crm.hold_next_edit()
    d = dispatcher(engine, opencrm_connector(http, base_url=fake_crm.base_url))
    delivering = asyncio.create_task(d.run_once())
    try:
        assert await asyncio.to_thread(hold.reached.wait, 30), "no edit reached the CRM"
        assert await open_transactions(engine) == 0
        # Leased: claimed, one attempt counted, not due again until the lease runs out.
        row = (await messages(engine))[message]
        assert (row.state, row.attempts) == ("pending", 1)
        assert row.lease_token is not None
    finally:
        hold.release.set()
    assert await delivering == 1
    row = (await messages(engine))[message]
    assert (row.state, row.attempts, row.lease_token) == ("delivered", 1, None)


class Stuck:
    """A connector whose CRM never answers until told to: a dispatcher hung, or killed."""

    name = "stuck"
    remote = True
    batch_size = 20

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def deliver(self, change: Change) -> Outcome:
        self.entered.set()
        await self.release.wait()
        return Pushed(sent={"status": change.status or ""})

    def take_seen_ids(self) -> dict[str, str]:
        return {}

    def take_paging_confirmed(self) -> bool:
        return False


class Quick(Stuck):
    async def deliver(self, change: Change) -> Outcome:
        return Pushed(sent={"status": change.status or ""})


async def test_a_lease_that_runs_out_is_taken_over_and_its_first_holder_records_nothing(
    engine: AsyncEngine, clocks: Clocks
) -> None:
    message = await add_message(engine, "INV-1", "Paid", "0.00")
    stuck = Stuck()
    first = dispatcher(engine, stuck, clocks=clocks, lease_seconds=LEASE)
    hung = asyncio.create_task(first.run_once())
    await asyncio.wait_for(stuck.entered.wait(), 30)

    second = dispatcher(engine, Quick(), clocks=clocks, lease_seconds=LEASE)
    assert await second.run_once() == 0  # leased by the first
    clocks.advance(LEASE + 1)  # the first is as good as dead
    assert await second.run_once() == 1
    row = (await messages(engine))[message]
    assert (row.state, row.attempts) == ("delivered", 2)

    stuck.release.set()
    assert await hung == 0  # its lease was taken over: nothing of it is recorded
    after = (await messages(engine))[message]
    assert (after.state, after.attempts, after.delivered_at) == (
        "delivered",
        2,
        row.delivered_at,
    )


async def test_a_newer_change_waits_for_the_leased_one_and_a_requeued_dead_letter_too(
    engine: AsyncEngine, clocks: Clocks
) -> None:
    dead = await add_message(engine, "INV-1", "Part Paid", "60.00", state="dead", attempts=5)
    leased = await add_message(engine, "INV-1", "Paid", "0.00")
    await add_message(engine, "INV-2", "Paid", "0.00")
    stuck = Stuck()
    first = dispatcher(engine, stuck, clocks=clocks, lease_seconds=LEASE)
    first_batch = asyncio.create_task(first.run_once())
    await asyncio.wait_for(stuck.entered.wait(), 30)
    newer = await add_message(engine, "INV-1", "Unpaid", "100.00")
    async with engine.begin() as conn:
        await outbox_admin.requeue_dead(conn, dead)
    # INV-1 is in flight: neither its requeued dead letter nor its newer change is claimed.
    second = dispatcher(engine, Quick(), clocks=clocks, lease_seconds=LEASE)
    clocks.advance(1)
    assert await second.run_once() == 0
    stuck.release.set()
    assert await first_batch == 2  # INV-1's leased change and INV-2 (the batch in hand)
    rows = await messages(engine)
    assert rows[leased].state == "delivered"
    assert rows[newer].state == "pending"
    clocks.advance(1)
    assert await second.run_once() == 2  # the old dead letter superseded, the newer delivered
    rows = await messages(engine)
    assert (rows[dead].state, rows[newer].state) == ("superseded", "delivered")
