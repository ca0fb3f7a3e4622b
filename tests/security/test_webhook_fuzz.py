"""Hypothesis against the signed webhook: whatever the body, a 4xx, never a 5xx, nothing stored.

Every body is signed with the real secret, so it gets past the signature to the parser and
the validation. A few hundred examples here; a few thousand under `make test-faults`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.security.fuzz import SAFE_TEXT, hostile_bodies, valid_batch
from tests.support.factories import WEBHOOK, si
from tests.support.queries import scalar, table_checksums
from tests.support.webhooks import signed_request

REFUSED = {400, 413, 422}


async def _send(client: httpx.AsyncClient, engine: AsyncEngine, body: bytes) -> tuple[int, Any]:
    signed, headers = signed_request(body)
    response = await client.post(WEBHOOK, content=signed, headers=headers)
    stored = await scalar(
        engine,
        "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = :id",
        id=headers["webhook-id"],
    )
    problem = response.json() if response.status_code >= 400 else None
    assert response.headers["content-type"].startswith(
        "application/problem+json" if problem else "application/json"
    )
    return response.status_code, (stored, problem)


async def fuzz_hostile_bodies(
    client: httpx.AsyncClient, engine: AsyncEngine, examples: int, *, derandomize: bool
) -> Counter[int]:
    loop = asyncio.get_running_loop()
    seen: Counter[int] = Counter()

    @given(body=hostile_bodies())
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    def refused(body: bytes) -> None:
        future = asyncio.run_coroutine_threadsafe(_send(client, engine, body), loop)
        status, (stored, problem) = future.result(timeout=60)
        seen[status] += 1
        assert status in REFUSED, (status, body[:300])
        assert stored == 0
        assert problem["status"] == status
        assert problem["detail"]

    before = await table_checksums(engine)
    await asyncio.to_thread(refused)
    assert await table_checksums(engine) == before
    print(f"webhook fuzz: {sum(seen.values())} hostile bodies, statuses {dict(seen)}")
    return seen


async def test_hostile_bodies_are_refused_and_store_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    seen = await fuzz_hostile_bodies(client, engine, 300, derandomize=True)
    assert sum(seen.values()) >= 300
    assert {400, 422} <= set(seen)


@pytest.mark.faults
async def test_thousands_of_hostile_bodies_are_refused_and_store_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    seen = await fuzz_hostile_bodies(client, engine, 4000, derandomize=False)
    assert sum(seen.values()) >= 4000


async def test_valid_batches_of_any_unicode_are_stored_exactly(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The other side of the coin: odd but valid text (emoji, RTL marks, U+FFFE, C1
    controls) is stored as sent, once, and a redelivery applies nothing."""
    loop = asyncio.get_running_loop()

    async def deliver_twice(batch: dict[str, Any]) -> None:
        body, headers = signed_request(batch)
        first = await client.post(WEBHOOK, content=body, headers=headers)
        assert first.status_code == 202, first.text
        again = await client.post(WEBHOOK, content=body, headers=headers)
        assert again.status_code == 200
        assert again.json() == first.json()
        for posting in batch["postings"]:
            stored = await scalar(
                engine,
                "SELECT json_build_array(account_ref, reference, details)::text "
                "FROM postings WHERE tran_number = :t",
                t=posting["tran_number"],
            )
            sent = [posting["account_ref"], posting["reference"], posting["details"]]
            assert json.loads(stored) == sent

    @given(batch=valid_batch(), details=SAFE_TEXT)
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def stored_exactly(batch: dict[str, Any], details: str) -> None:
        batch["postings"][0]["details"] = details
        asyncio.run_coroutine_threadsafe(deliver_twice(batch), loop).result(timeout=60)

    await asyncio.to_thread(stored_exactly)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"postings": [], "postings": [%s]}', id="top-level key twice"),
        pytest.param(b'{"postings": [%s], "source": "a", "source": "b"}', id="source twice"),
        pytest.param(b"POSTING_WITH_TRAN_TWICE", id="field twice in a posting"),
    ],
)
async def test_duplicate_keys_are_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes
) -> None:
    """JSON with a key twice means what the parser says it means (the last one, for ours;
    the first, for others): a signed body must mean one thing, so it is refused."""
    encoded = json.dumps(si(1, "INV-1", "1.00")).encode()
    if body == b"POSTING_WITH_TRAN_TWICE":
        twice = encoded.replace(b'"tran_number": 1', b'"tran_number": 1, "tran_number": 2')
        body = b'{"postings": [' + twice + b"]}"
    else:
        body = body.replace(b"%s", encoded)
    before = await table_checksums(engine)
    status, (stored, problem) = await _send(client, engine, body)
    assert status == 422, problem
    assert stored == 0
    assert await table_checksums(engine) == before
