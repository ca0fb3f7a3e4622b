"""PostgreSQL crashes (twice) while clients push batches to a running `ledgerlink serve`.

Every batch answered 2xx is stored whole; every batch that failed got a 503 with Retry-After
and stored nothing; readiness goes 503 during the outage and 200 after; ingestion resumes
without restarting the service (its pool recovers), the in-process worker too; every failed
batch, sent again with the same webhook-id, is then stored once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.faults.support import (
    Batch,
    Service,
    consistency_problems,
    eventually,
    fetchval,
    migrated_postgres,
    push,
    readiness,
    stored,
)
from tests.support.processes import ThrowawayPostgres

pytestmark = pytest.mark.faults

SENDERS = 6
INVOICES_PER_BATCH = 10
RESTARTS = 2
OUTAGE_SECONDS = 2.5


async def test_batches_survive_database_restarts() -> None:
    async with migrated_postgres() as pg:
        service = Service(pg.url, db_pool_size="4")
        await asyncio.to_thread(service.start)
        batches: list[Batch] = []
        stop = asyncio.Event()
        readiness_seen: Counter[int | str] = Counter()

        async def sender(http: httpx.AsyncClient) -> None:
            while not stop.is_set():
                batch = Batch(INVOICES_PER_BATCH)
                batches.append(batch)
                outcome = await push(http, batch)
                if outcome == 503:
                    await asyncio.sleep(0.2)  # not the Retry-After: keep the outage busy

        async def more_acknowledged(count: int, what: str) -> None:
            target = sum(b.acknowledged for b in batches) + count

            async def reached() -> bool:
                return sum(b.acknowledged for b in batches) >= target

            await eventually(reached, within=60, what=what)

        try:
            async with httpx.AsyncClient(base_url=service.base_url) as http:
                senders = [asyncio.create_task(sender(http)) for _ in range(SENDERS)]
                try:
                    await crash_and_restart(pg, http, more_acknowledged, readiness_seen)
                finally:
                    stop.set()
                    await asyncio.gather(*senders)

                outcomes = Counter(o for b in batches for o in b.outcomes)
                # Only two answers: stored, or retry later. No 500, no hang, no dropped socket.
                assert set(outcomes) <= {202, 503}, outcomes
                assert outcomes[503] >= RESTARTS, outcomes
                for batch in batches:
                    for outcome, retry_after in zip(batch.outcomes, batch.retry_after, strict=True):
                        if outcome == 503:
                            assert retry_after is not None
                            assert retry_after.isdigit()

                # What was acknowledged is there in full. What was not is there not at all, or
                # (the connection dropped during COMMIT, so the answer could only be 503) in
                # full: never in part.
                failed = [b for b in batches if not b.acknowledged]
                assert failed
                in_doubt = []
                held = await stored(pg.url)
                for batch in batches:
                    if batch.acknowledged:
                        assert held.of(batch) == (len(batch.postings), 1), batch.outcomes
                    else:
                        assert held.of(batch) in ((0, 0), (len(batch.postings), 1))
                        if held.of(batch)[1]:
                            in_doubt.append(batch)
                # Only a request caught committing at the instant of a crash can be in doubt: at
                # most one per client per crash.
                assert len(in_doubt) <= RESTARTS * SENDERS

                # The client retries each failure with the same id and body: applied now (202),
                # or found applied before (200, the stored answer); either way stored once.
                async def retry(batch: Batch) -> None:
                    expected = 200 if batch in in_doubt else 202
                    assert await push(http, batch) == expected, batch.outcomes
                    assert await push(http, batch) == 200

                for start in range(0, len(failed), SENDERS):
                    await asyncio.gather(*map(retry, failed[start : start + SENDERS]))
                held = await stored(pg.url)
                for batch in batches:
                    assert held.of(batch) == (len(batch.postings), 1)

                # The in-process worker came back too: every invoice reconciled, paid.
                invoices = sum(b.invoices for b in batches)
                await eventually(
                    lambda: _all_paid(pg.url, invoices), within=120, what="backlog reconciled"
                )
                problems = await consistency_problems(pg.url)
                assert not any(problems.values()), problems
        finally:
            await asyncio.to_thread(service.stop)
        assert service.proc is not None
        assert service.proc.returncode == 0, service.output[-3000:]
        assert "Traceback" not in service.output, service.output[-5000:]
        print(
            f"database restarts: {RESTARTS} restarts, {len(batches)} batches "
            f"({invoices * 2} postings), {sum(o == 202 for o in outcomes.elements())} "
            f"acknowledged during the run, {outcomes[503]} answered 503 and retried "
            f"({len(in_doubt)} of them committed as the connection dropped), 0 lost, "
            f"0 doubled, 0 5xx other than 503; readiness {dict(readiness_seen)}"
        )


async def crash_and_restart(
    pg: ThrowawayPostgres,
    http: httpx.AsyncClient,
    more_acknowledged: Callable[[int, str], Awaitable[None]],
    readiness_seen: Counter[int | str],
) -> None:
    """RESTARTS times: let batches flow, crash PostgreSQL, keep the outage up a moment while
    readiness says 503, start it again, wait for readiness 200 and for batches to flow."""
    for _ in range(RESTARTS):
        await more_acknowledged(30, "batches acknowledged before the crash")
        await asyncio.to_thread(pg.stop, "immediate")
        outage_ends = time.monotonic() + OUTAGE_SECONDS
        await eventually(
            lambda: _ready_is(http, 503, readiness_seen),
            within=10,
            what="readiness 503 while the database is down",
        )
        await asyncio.sleep(max(0.0, outage_ends - time.monotonic()))
        await asyncio.to_thread(pg.start)
        await eventually(
            lambda: _ready_is(http, 200, readiness_seen),
            within=30,
            what="readiness 200 after the restart",
        )
        await more_acknowledged(30, "ingestion resumed after the restart")


async def _ready_is(http: httpx.AsyncClient, status: int, seen: Counter[int | str]) -> bool:
    got = await readiness(http)
    seen[got] += 1
    return got == status


async def _all_paid(url: str, invoices: int) -> bool:
    paid = await fetchval(
        url,
        "SELECT count(*) FROM invoices AS i WHERE status = 'Paid' AND NOT EXISTS "
        "(SELECT FROM dirty_invoices AS d WHERE d.invoice_number = i.invoice_number)",
    )
    return int(paid) == invoices
