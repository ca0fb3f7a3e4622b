"""Redelivery storms against a running `ledgerlink serve`.

50 concurrent deliveries of one webhook-id: applied exactly once (one 202; the others the
same answer with 200, or 409 "in flight" with Retry-After until they get it). Then one batch
under 50 different webhook-ids at once: every delivery accepted, the postings applied once
between them, never doubled; reconciliation records one change per invoice.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import orjson
import pytest

from tests.faults.support import (
    Batch,
    Service,
    connected,
    consistency_problems,
    eventually,
    fetchval,
    migrated_postgres,
    stored,
)
from tests.support.factories import WEBHOOK
from tests.support.webhooks import signed_request

pytestmark = pytest.mark.faults

STORM = 50
INVOICES = 200


async def test_one_delivery_fifty_times_at_once_is_applied_once() -> None:
    async with migrated_postgres() as pg:
        service = await asyncio.to_thread(Service(pg.url).start)
        try:
            batch = Batch(INVOICES)
            # The very same request, fifty times: same id, same signature, same bytes.
            body, headers = signed_request(batch.body, webhook_id=batch.webhook_id)
            limits = httpx.Limits(max_connections=STORM)
            async with httpx.AsyncClient(base_url=service.base_url, limits=limits) as http:

                async def deliver() -> httpx.Response:
                    return await http.post(WEBHOOK, content=body, headers=headers, timeout=30)

                first = await asyncio.gather(*[deliver() for _ in range(STORM)])
                statuses = Counter(r.status_code for r in first)
                assert statuses[202] == 1, statuses
                assert set(statuses) <= {200, 202, 409}, statuses
                for response in first:
                    if response.status_code == 409:
                        assert response.headers["retry-after"].isdigit()
                # Those told "in flight" come back and get the answer.
                answers = [r for r in first if r.status_code in (200, 202)]
                for response in first:
                    if response.status_code == 409:
                        again = await deliver()
                        assert again.status_code == 200
                        answers.append(again)
            accepted = next(r for r in first if r.status_code == 202).json()
            assert all(orjson.loads(r.content) == accepted for r in answers)
            assert accepted["postings_applied"] == len(batch.postings)
            held = await stored(pg.url)
            assert held.of(batch) == (len(batch.postings), 1)
            assert await fetchval(pg.url, "SELECT count(*) FROM webhook_deliveries") == 1
            await _reconciled_once(pg.url, INVOICES)
        finally:
            await asyncio.to_thread(service.stop)
        print(f"redelivery storm, one id: {STORM} deliveries, statuses {dict(statuses)}")


async def test_one_batch_under_fifty_ids_at_once_is_applied_once() -> None:
    async with migrated_postgres() as pg:
        service = await asyncio.to_thread(Service(pg.url).start)
        try:
            batch = Batch(INVOICES)
            copies = [Batch(INVOICES, postings=batch.postings) for _ in range(STORM)]
            limits = httpx.Limits(max_connections=STORM)
            async with httpx.AsyncClient(base_url=service.base_url, limits=limits) as http:

                async def deliver(copy: Batch) -> httpx.Response:
                    body, headers = signed_request(copy.body, webhook_id=copy.webhook_id)
                    return await http.post(WEBHOOK, content=body, headers=headers, timeout=60)

                responses = await asyncio.gather(*map(deliver, copies))
            statuses = Counter(r.status_code for r in responses)
            assert statuses == {202: STORM}, [r.text for r in responses if r.status_code != 202]
            results = [r.json() for r in responses]
            # Between them the fifty applied each posting exactly once; the rest found it
            # unchanged.
            assert sum(r["postings_applied"] for r in results) == len(batch.postings)
            assert sum(r["postings_unchanged"] for r in results) == (STORM - 1) * len(
                batch.postings
            )
            async with connected(pg.url) as conn:
                postings = await conn.fetchval("SELECT count(*) FROM postings")
                allocations = await conn.fetchval("SELECT count(*) FROM allocations")
                invoices = await conn.fetchval("SELECT count(*) FROM invoices")
                deliveries = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
            assert (postings, allocations, invoices, deliveries) == (
                len(batch.postings),
                INVOICES,
                INVOICES,
                STORM,
            )
            await _reconciled_once(pg.url, INVOICES)
        finally:
            await asyncio.to_thread(service.stop)
        print(
            f"redelivery storm, {STORM} ids: {STORM} deliveries of {len(batch.postings)} "
            f"postings, {len(batch.postings)} applied, {postings} stored"
        )


async def _reconciled_once(url: str, invoices: int) -> None:
    """The worker (in the service) reconciles each invoice to Paid, one history row and one
    outbox message each: the storm did not make it see any change twice."""

    async def done() -> bool:
        paid = await fetchval(
            url,
            "SELECT count(*) FROM invoices AS i WHERE status = 'Paid' AND NOT EXISTS "
            "(SELECT FROM dirty_invoices AS d WHERE d.invoice_number = i.invoice_number)",
        )
        return int(paid) == invoices

    await eventually(done, within=60, what="invoices reconciled")
    async with connected(url) as conn:
        history = await conn.fetch(
            "SELECT invoice_number, count(*) FROM status_history GROUP BY 1 HAVING count(*) <> 1"
        )
        outbox = await conn.fetch(
            "SELECT invoice_number, count(*) FROM outbox GROUP BY 1 HAVING count(*) <> 1"
        )
        history_rows = await conn.fetchval("SELECT count(*) FROM status_history")
    assert history == []
    assert outbox == []
    assert history_rows == invoices
    problems = await consistency_problems(url)
    assert not any(problems.values()), problems
