"""Contract-valid traffic does not depend on the size of PostgreSQL's shared lock table.

The lock table holds max_locks_per_transaction x (max_connections + max_prepared_transactions)
locks for every session together. Ingest used to take one advisory lock per invoice it
mirrored, so four concurrent batches of 5,000 new invoices (the most a batch may hold) ran it
out, and two of them were refused with a 503 that blamed an unreachable database.
"""

from __future__ import annotations

import asyncio
import itertools

import httpx
import orjson
import pytest

from tests.faults.support import Service, fetchval, migrated_postgres
from tests.support.factories import si
from tests.support.webhooks import signed_request

pytestmark = pytest.mark.faults

BATCHES = 4
PER_BATCH = 5_000
_trans = itertools.count(1)


def _new_invoices(count: int) -> bytes:
    postings = []
    for _ in range(count):
        tran = next(_trans)
        postings.append(si(tran, f"L-{tran}", "100.00", account="LOCKS01", day="2026-04-01"))
    return orjson.dumps({"source": "lock-table-test", "postings": postings})


async def test_four_concurrent_batches_of_5000_new_invoices_are_all_stored() -> None:
    async with migrated_postgres() as pg:
        lock_table = await fetchval(
            pg.url,
            "SELECT current_setting('max_locks_per_transaction')::int * "
            "(current_setting('max_connections')::int "
            "+ current_setting('max_prepared_transactions')::int)",
        )
        # The traffic needs more locks than the table holds, had each invoice its own.
        assert lock_table < BATCHES * PER_BATCH
        bodies = [_new_invoices(PER_BATCH) for _ in range(BATCHES)]
        with Service(pg.url, run_worker="false") as service:
            async with httpx.AsyncClient(base_url=service.base_url, timeout=120) as http:

                async def send(body: bytes) -> httpx.Response:
                    content, headers = signed_request(body)
                    return await http.post(
                        "/v1/webhooks/sage/postings", content=content, headers=headers
                    )

                answers = await asyncio.gather(*(send(body) for body in bodies))
        assert [a.status_code for a in answers] == [202] * BATCHES, [a.text for a in answers]
        assert {a.json()["invoices_affected"] for a in answers} == {PER_BATCH}
        stored = await fetchval(pg.url, "SELECT count(*) FROM invoices WHERE NOT deleted")
        assert stored == BATCHES * PER_BATCH
