"""ingest.repository.store as other features call it (inside their own transaction), and
the locking that keeps ingest and the reconciliation worker from losing each other's work."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ingest.repository import StoreOutcome, store
from service.reconcile.compute import claim_dirty
from service.settings import Settings
from tests.support.factories import deliver, parsed, settle, si
from tests.support.queries import scalar


async def test_store_returns_applied_unchanged_affected(
    engine: AsyncEngine, settings: Settings
) -> None:
    async with engine.begin() as conn:
        first = await store(
            conn,
            parsed(si(1, "INV1"), settle(2, "SR", [(1, "5.00")])),
            event_id="e1",
            settings=settings,
        )
    async with engine.begin() as conn:
        again = await store(
            conn,
            parsed(si(1, "INV1"), settle(2, "SR", [(1, "6.00")])),
            event_id="e2",
            settings=settings,
        )
    # The first makes INV1 dirty (the worker must hear of it); the second finds it dirty still.
    assert first == StoreOutcome(applied=2, unchanged=0, invoices_affected=1, wake=True)
    assert again == StoreOutcome(applied=1, unchanged=1, invoices_affected=1, wake=False)
    assert await scalar(engine, "SELECT event_id FROM postings WHERE tran_number = 2") == "e2"


async def test_store_is_part_of_the_callers_transaction(
    engine: AsyncEngine, settings: Settings
) -> None:
    class Abort(Exception):
        pass

    try:
        async with engine.begin() as conn:
            # The very first statement of the transaction: it must not run outside it.
            await store(conn, parsed(si(1, "INV1")), event_id="e", settings=settings)
            raise Abort
    except Abort:
        pass
    assert await scalar(engine, "SELECT count(*) FROM postings") == 0
    assert await scalar(engine, "SELECT count(*) FROM invoices") == 0


async def test_a_tran_number_given_twice_keeps_its_last_version(
    engine: AsyncEngine, settings: Settings
) -> None:
    async with engine.begin() as conn:
        result = await store(
            conn,
            parsed(si(1, "INV1", "1.00"), si(1, "INV1", "2.00")),
            event_id="e",
            settings=settings,
        )
    assert result == StoreOutcome(applied=1, unchanged=0, invoices_affected=1, wake=True)
    assert await scalar(engine, "SELECT gross FROM invoices") == Decimal("2.00")


async def test_ingest_waits_for_a_worker_holding_the_invoice_and_leaves_it_dirty(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The worker claims an invoice (FOR UPDATE), computes, takes it off the queue and commits.
    An allocation arriving meanwhile must leave the invoice dirty afterwards, or it is lost."""
    await deliver(client, si(1, "INV1"))
    async with engine.connect() as worker:
        await worker.begin()
        await worker.execute(
            sa.text("SELECT 1 FROM invoices WHERE invoice_number = 'INV1' FOR UPDATE")
        )
        ingest = asyncio.create_task(deliver(client, settle(10, "SR", [(1, "5.00")])))
        await asyncio.sleep(0.3)
        assert not ingest.done(), "ingest must wait for the worker's lock"
        await worker.execute(sa.text("DELETE FROM dirty_invoices"))
        await worker.commit()
    response = await ingest
    assert response.status_code == 202
    assert await scalar(engine, "SELECT count(*) FROM dirty_invoices") == 1


async def test_worker_cannot_claim_an_invoice_while_an_ingest_holds_it(
    engine: AsyncEngine, settings: Settings
) -> None:
    async with engine.begin() as conn:
        await store(conn, parsed(si(1, "INV1")), event_id="e", settings=settings)
    async with engine.connect() as ingest:
        await ingest.begin()
        await store(
            ingest, parsed(settle(10, "SR", [(1, "1.00")])), event_id="e", settings=settings
        )
        async with engine.begin() as worker:
            held = await claim_dirty(worker, 10)
        await ingest.commit()
    async with engine.begin() as worker:
        after_commit = await claim_dirty(worker, 10)
    assert (held.numbers, after_commit.numbers) == ([], ["INV1"])


async def test_concurrent_batches_on_the_same_invoices_all_land(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, *[si(n, f"INV{n}") for n in range(1, 51)])
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM dirty_invoices"))
    rng = random.Random(7)

    def batch(k: int) -> list[dict[str, object]]:
        targets = list(range(1, 51))
        rng.shuffle(targets)
        return [settle(1000 * k + i, "SR", [(t, "1.00")]) for i, t in enumerate(targets)]

    responses = await asyncio.gather(*(deliver(client, *batch(k)) for k in range(1, 9)))
    assert [r.status_code for r in responses] == [202] * 8
    assert await scalar(engine, "SELECT count(*) FROM allocations") == 400
    assert await scalar(engine, "SELECT count(*) FROM dirty_invoices") == 50


async def test_concurrent_duplicates_of_one_invoice_number_resolve_to_the_later_si(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for round_ in range(5):
        ref = f"DUP{round_}"
        early, late = 100 + 2 * round_, 101 + 2 * round_
        results = await asyncio.gather(
            deliver(client, si(late, ref, "2.00")), deliver(client, si(early, ref, "1.00"))
        )
        assert [r.status_code for r in results] == [202, 202]
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "SELECT sage_tran_number, duplicate_of FROM invoices "
                        "WHERE invoice_number = :r"
                    ),
                    {"r": ref},
                )
            ).one()
        assert tuple(row) == (late, early)
