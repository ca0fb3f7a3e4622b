"""SIGTERM to `ledgerlink serve` (worker inside) in the middle of load.

Big deliveries are being stored, small ones keep arriving and the worker is in the middle of
a batch of 2,000 invoices when the signal comes (held there by a lock the test takes on the
picklist, which the reconcile statement reads, and lets go just after the signal). The
requests in flight are answered (202), the worker finishes its batch (all 2,000 reconciled,
not one fewer), the process exits 0; every acknowledged batch is stored, and everything the
client could not get acknowledged is stored once when it sends it again to the restarted
service.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import httpx
import pytest
from asyncpg import connect as _connect

from service.contracts import DIRTY_CHANNEL
from service.db import libpq_url
from tests.faults.support import (
    Batch,
    Service,
    connected,
    consistency_problems,
    eventually,
    fetchval,
    migrated_postgres,
    push,
    stored,
)

pytestmark = pytest.mark.faults

BACKLOG = 2_000  # one worker batch
BIG = 3  # deliveries of 2000 postings
SENDERS = 4

SEED = """
INSERT INTO postings (tran_number, type, account_ref, reference, date, net_amount, tax_amount,
                      gross_amount, content_hash, event_id)
SELECT 10000000 + g, 'SI', 'ACC' || (g % 50), 'INV-' || g, DATE '2026-01-01', 100, 0, 100,
       '\\x00'::bytea, 'seed'
FROM generate_series(1, {n}) AS g;
INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date, gross,
                      status)
SELECT 'INV-' || g, 'ACC' || (g % 50), 10000000 + g, DATE '2026-01-01', 100, 'Unpaid'
FROM generate_series(1, {n}) AS g;
INSERT INTO dirty_invoices (invoice_number) SELECT 'INV-' || g FROM generate_series(1, {n}) AS g;
SELECT pg_notify('{dirty_channel}', '');
"""
# The worker's reconcile statement, its batch claimed, waiting for the test's lock.
RECONCILE_IN_FLIGHT = """
SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'ledgerlink' AND state = 'active' AND backend_xid IS NOT NULL
  AND wait_event_type = 'Lock' AND query LIKE '%labels AS MATERIALIZED%'
"""
INGEST_IN_FLIGHT = """
SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'ledgerlink' AND state <> 'idle' AND backend_xid IS NOT NULL
  AND query LIKE '%json_to_recordset%'
"""
SEEDED_RECONCILED = (
    "SELECT count(*) FROM invoices AS i WHERE invoice_number LIKE 'INV-%' "
    "AND NOT EXISTS (SELECT FROM dirty_invoices AS d WHERE d.invoice_number = i.invoice_number)"
)


async def test_sigterm_finishes_what_is_in_flight_and_loses_nothing() -> None:
    async with migrated_postgres() as pg:
        service = Service(pg.url, worker_batch_size=str(BACKLOG))
        await asyncio.to_thread(service.start)
        small: list[Batch] = []
        big = [Batch(1000) for _ in range(BIG)]
        stop = asyncio.Event()
        refusals = 0

        async def sender(http: httpx.AsyncClient) -> None:
            nonlocal refusals
            while not stop.is_set():
                batch = Batch(5)
                small.append(batch)
                outcome = await push(http, batch, seconds=60)
                if isinstance(outcome, str):
                    refusals += 1
                    await asyncio.sleep(0.05)

        try:
            async with httpx.AsyncClient(base_url=service.base_url) as http:
                holder = await asyncpg_connect(pg.url)
                hold = holder.transaction()
                await hold.start()
                await holder.execute("LOCK TABLE picklist_values IN ACCESS EXCLUSIVE MODE")
                async with connected(pg.url) as conn:
                    await conn.execute(SEED.format(n=BACKLOG, dirty_channel=DIRTY_CHANNEL))
                # The worker claims the whole backlog (nothing else is dirty yet) and waits.
                await eventually(
                    lambda: _any(pg.url, RECONCILE_IN_FLIGHT),
                    within=30,
                    every=0.01,
                    what="the worker's batch in flight",
                )
                senders = [asyncio.create_task(sender(http)) for _ in range(SENDERS)]
                try:
                    bigs = [asyncio.create_task(push(http, b, seconds=60)) for b in big]
                    await eventually(
                        lambda: _any(pg.url, INGEST_IN_FLIGHT),
                        within=30,
                        every=0.01,
                        what="a big delivery being stored",
                    )
                    # Both in flight right now: the batch has not committed.
                    assert await fetchval(pg.url, RECONCILE_IN_FLIGHT) >= 1
                    assert await fetchval(pg.url, SEEDED_RECONCILED) == 0
                    service.signal(signal.SIGTERM)
                    await asyncio.sleep(0.5)
                    await hold.commit()  # the worker's batch goes on, during the shutdown
                    await holder.close()
                    big_outcomes = await asyncio.gather(*bigs)
                    # Keep sending until the service is gone.
                    code = await asyncio.to_thread(service.wait, 90)
                    await asyncio.sleep(0.3)
                finally:
                    stop.set()
                    await asyncio.gather(*senders)
        finally:
            await asyncio.to_thread(service.stop)

        assert code == 0, service.output[-3000:]
        assert big_outcomes == [202] * BIG, service.output[-6000:]
        assert "worker.stopped" in service.output
        assert "Traceback" not in service.output, service.output[-5000:]
        # The worker's batch was finished, whole, and no other one begun on the seeded rows.
        assert await fetchval(pg.url, SEEDED_RECONCILED) == BACKLOG
        outcomes = Counter(o for b in small for o in b.outcomes)
        assert all(o == 202 or isinstance(o, str) for o in outcomes), outcomes
        assert refusals > 0  # some were sent after it stopped listening
        held = await stored(pg.url)
        for batch in big + small:
            if batch.acknowledged:
                assert held.of(batch) == (len(batch.postings), 1)
            else:
                assert held.of(batch) in ((0, 0), (len(batch.postings), 1))
        problems = await consistency_problems(pg.url)
        assert not any(problems.values()), problems

        unacknowledged = sum(not b.acknowledged for b in small)
        # Back up: the client sends again what was not acknowledged; the worker finishes.
        restarted = await asyncio.to_thread(Service(pg.url).start)
        try:
            async with httpx.AsyncClient(base_url=restarted.base_url) as http:
                for batch in small:
                    if not batch.acknowledged:
                        assert await push(http, batch) in (200, 202), batch.outcomes
            held = await stored(pg.url)
            for batch in big + small:
                assert held.of(batch) == (len(batch.postings), 1)

            async def drained() -> bool:
                left = await fetchval(pg.url, "SELECT count(*) FROM dirty_invoices")
                return int(left) == 0

            await eventually(drained, within=120, what="the rest reconciled after the restart")
            problems = await consistency_problems(pg.url)
            assert not any(problems.values()), problems
        finally:
            await asyncio.to_thread(restarted.stop)
        print(
            f"graceful shutdown: exit 0; {BIG} big deliveries in flight answered 202; "
            f"worker batch of {BACKLOG} finished; {len(small)} small batches, "
            f"{outcomes[202]} acknowledged before the stop, "
            f"{unacknowledged} refused after it and stored once on retry"
        )


async def asyncpg_connect(url: str) -> Any:
    return await _connect(libpq_url(url))


async def _any(url: str, sql: str) -> bool:
    return int(await fetchval(url, sql)) > 0
