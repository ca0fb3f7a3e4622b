"""Idempotency-Key on the Global Update (draft-ietf-httpapi-idempotency-key-header)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.jobs import tasks
from tests.support.factories import BULK_STATUS, add_invoice, add_many, bulk_update
from tests.support.keys import ADMIN_KEY, WRITE_KEY, auth
from tests.support.queries import scalar, table_checksums

BODY = {"status": "Written Off", "account_ref": "ACME01", "reason": "BADDBT"}


@pytest.fixture
async def acme(engine: AsyncEngine) -> None:
    for n in range(1, 4):
        await add_invoice(engine, f"A-{n}", account_ref="ACME01", status="Paid", outstanding="0")


@pytest.mark.usefixtures("acme")
async def test_same_key_same_body_returns_the_stored_job(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = await bulk_update(client, BODY, idempotency_key="key-1")
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    # Meanwhile a person changes one back: a replay must not apply the request again.
    await client.patch("/v1/invoices/A-1", json={"status": "Paid"}, headers=auth(WRITE_KEY))
    again = await bulk_update(
        client, {**BODY, "dry_run": False, "only_settled": False}, idempotency_key="key-1"
    )
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 1
    assert await scalar(engine, "SELECT count(*) FROM status_history WHERE source = 'bulk'") == 3
    assert await scalar(engine, "SELECT status FROM invoices WHERE invoice_number = 'A-1'") == (
        "Paid"
    )


@pytest.mark.usefixtures("acme")
async def test_quoted_and_bare_keys_are_the_same_key(client: httpx.AsyncClient) -> None:
    first = await bulk_update(
        client, BODY, idempotency_key='"8e03978e-40d5-43e8-bc93-6894a57f9324"'
    )
    again = await bulk_update(client, BODY, idempotency_key="8e03978e-40d5-43e8-bc93-6894a57f9324")
    assert again.json()["job_id"] == first.json()["job_id"]


@pytest.mark.usefixtures("acme")
async def test_same_key_different_body_is_422_and_stores_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await bulk_update(client, BODY, idempotency_key="key-1")
    before = await table_checksums(engine)
    response = await bulk_update(
        client, {**BODY, "status": "Paid/Written Off"}, idempotency_key="key-1"
    )
    assert response.status_code == 422
    assert "different request body" in response.json()["detail"]
    assert await table_checksums(engine) == before


@pytest.mark.usefixtures("acme")
async def test_keys_are_scoped_by_api_key(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    mine = await bulk_update(client, {**BODY, "dry_run": True}, idempotency_key="shared-key")
    theirs = await bulk_update(
        client, {**BODY, "dry_run": True}, idempotency_key="shared-key", key=ADMIN_KEY
    )
    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["job_id"] != theirs.json()["job_id"]
    assert "idempotent-replayed" not in theirs.headers


@pytest.mark.usefixtures("acme")
async def test_a_failed_request_does_not_use_up_the_key(client: httpx.AsyncClient) -> None:
    rejected = await bulk_update(
        client, {**BODY, "status": "Not A Status"}, idempotency_key="key-1"
    )
    assert rejected.status_code == 422
    accepted = await bulk_update(client, BODY, idempotency_key="key-1")
    assert accepted.status_code == 200
    assert "idempotent-replayed" not in accepted.headers


async def _wait_until_blocked(engine: AsyncEngine) -> None:
    """Until some other session waits for a row lock (the first request, on the held row)."""
    for _ in range(500):
        waiting = await scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the first request never waited for the held row")


@pytest.mark.usefixtures("acme")
async def test_same_key_while_the_first_is_in_flight_is_409(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(
            sa.text("SELECT 1 FROM invoices WHERE invoice_number = 'A-2' FOR UPDATE")
        )
        first = asyncio.create_task(bulk_update(client, BODY, idempotency_key="key-1"))
        await _wait_until_blocked(engine)
        second = await bulk_update(client, BODY, idempotency_key="key-1")
        assert second.status_code == 409
        assert second.headers["retry-after"] == "1"
        assert second.headers["content-type"] == "application/problem+json"
        await holder.rollback()
    done = await asyncio.wait_for(first, timeout=30)
    assert done.status_code == 200
    third = await bulk_update(client, BODY, idempotency_key="key-1")
    assert third.status_code == 200
    assert third.json()["job_id"] == done.json()["job_id"]
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 1


@pytest.mark.usefixtures("acme")
async def test_two_concurrent_requests_with_one_key_make_one_job(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    responses = await asyncio.gather(
        *[bulk_update(client, BODY, idempotency_key="race-key") for _ in range(4)]
    )
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 409}, [r.text for r in responses]
    assert 200 in codes
    job_ids = {r.json()["job_id"] for r in responses if r.status_code == 200}
    assert len(job_ids) == 1
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 1
    assert await scalar(engine, "SELECT count(*) FROM status_history") == 3


async def test_a_queued_job_replays_as_202_then_200_when_finished(
    small_client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: WorkerContext
) -> None:
    await add_many(engine, 8, account_ref="ACME01", prefix="Q")
    first = await bulk_update(small_client, BODY, idempotency_key="big-key")
    assert first.status_code == 202
    queued = await bulk_update(small_client, BODY, idempotency_key="big-key")
    assert queued.status_code == 202
    assert queued.headers["idempotent-replayed"] == "true"
    assert queued.json()["job_id"] == first.json()["job_id"]
    assert queued.json()["status"] == "queued"
    assert await tasks.run_once(worker_ctx) == 1
    finished = await bulk_update(small_client, BODY, idempotency_key="big-key")
    assert finished.status_code == 200
    assert finished.json()["status"] == "succeeded"
    assert finished.json()["updated"] == 8
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 1


@pytest.mark.usefixtures("acme")
async def test_keys_are_kept_24_hours_then_free(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = await bulk_update(client, {**BODY, "dry_run": True}, idempotency_key="old-key")
    hours = await scalar(
        engine, "SELECT extract(epoch FROM expires_at - created_at) / 3600 FROM jobs"
    )
    assert hours >= 24
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE jobs SET expires_at = now() - interval '1 second'"))
    again = await bulk_update(
        client, {**BODY, "status": "Paid/Written Off", "dry_run": True}, idempotency_key="old-key"
    )
    assert again.status_code == 200
    assert again.json()["job_id"] != first.json()["job_id"]


@pytest.mark.usefixtures("acme")
@pytest.mark.parametrize("key", ["", '""', "k" * 256, "clé", "tab\tkey"])
async def test_malformed_keys_are_400(
    client: httpx.AsyncClient, engine: AsyncEngine, key: str
) -> None:
    response = await client.post(
        BULK_STATUS,
        json=BODY,
        headers=[
            (b"Authorization", f"Bearer {WRITE_KEY}".encode()),
            (b"Idempotency-Key", key.encode()),
        ],
    )
    assert response.status_code == 400, response.text
    assert "Idempotency-Key" in response.json()["detail"]
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 0
