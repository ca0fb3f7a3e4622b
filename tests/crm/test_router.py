"""The outbox API: listing (dead letters) and retrying, with readiness reporting the CRM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.contracts import OUTBOX_CHANNEL
from service.crm.connector import LocalConnector
from service.crm.repository import health
from service.db import libpq_url
from service.main import create_app
from tests.crm.support import dispatcher
from tests.support.factories import add_message
from tests.support.fake_opencrm import KEY, PASSKEY
from tests.support.keys import ADMIN_KEY, READ_KEY, WRITE_KEY, auth
from tests.support.queries import messages
from tests.support.settings import make_settings


async def test_lists_messages_by_state_in_pages(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    dead = [
        await add_message(engine, f"INV-{i}", "Paid", "0.5", state="dead", attempts=8)
        for i in range(3)
    ]
    await add_message(engine, "INV-9", "Paid", "0.00", state="delivered")
    first = await client.get("/v1/crm/outbox?state=dead&limit=2", headers=auth(READ_KEY))
    assert first.status_code == 200, first.text
    body = first.json()
    assert [m["id"] for m in body["items"]] == dead[:2]
    item = body["items"][0]
    assert item["state"] == "dead"
    assert item["status"] == "Paid"
    assert item["outstanding"] == "0.50"
    assert item["attempts"] == 8
    assert body["next_cursor"] == str(dead[1])
    rest = await client.get(
        f"/v1/crm/outbox?state=dead&limit=2&cursor={body['next_cursor']}", headers=auth(READ_KEY)
    )
    assert [m["id"] for m in rest.json()["items"]] == dead[2:]
    assert rest.json()["next_cursor"] is None
    everything = await client.get("/v1/crm/outbox", headers=auth(READ_KEY))
    assert len(everything.json()["items"]) == 4
    one = await client.get("/v1/crm/outbox?invoice_number=INV-9", headers=auth(READ_KEY))
    assert [m["state"] for m in one.json()["items"]] == ["delivered"]


@pytest.mark.parametrize(
    "query", ["state=lost", "cursor=abc", "cursor=99999999999999999999", "limit=0"]
)
async def test_bad_listing_queries_are_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/v1/crm/outbox?{query}", headers=auth(READ_KEY))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_listing_needs_a_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/crm/outbox")).status_code == 401


async def test_retry_puts_a_dead_letter_back_in_line(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    message = await add_message(engine, "INV-1", "Paid", "0.00", state="dead", attempts=8)
    listener = await asyncpg.connect(libpq_url(database_url))
    woken = asyncio.Event()
    await listener.add_listener(OUTBOX_CHANNEL, lambda *_: woken.set())
    try:
        response = await client.post(f"/v1/crm/outbox/{message}/retry", headers=auth(ADMIN_KEY))
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "pending"
        assert response.json()["attempts"] == 0
        await asyncio.wait_for(woken.wait(), timeout=10)
    finally:
        await listener.close()
    row = (await messages(engine))[message]
    assert (row.state, row.attempts) == ("pending", 0)


async def test_retry_answers_404_409_and_needs_admin(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    pending = await add_message(engine, "INV-1", "Paid", "0.00")
    dead = await add_message(engine, "INV-2", "Paid", "0.00", state="dead")
    missing = await client.post("/v1/crm/outbox/999999/retry", headers=auth(ADMIN_KEY))
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    conflict = await client.post(f"/v1/crm/outbox/{pending}/retry", headers=auth(ADMIN_KEY))
    assert conflict.status_code == 409
    assert "'pending', not 'dead'" in conflict.json()["detail"]
    forbidden = await client.post(f"/v1/crm/outbox/{dead}/retry", headers=auth(WRITE_KEY))
    assert forbidden.status_code == 403
    too_big = await client.post(f"/v1/crm/outbox/{2**64}/retry", headers=auth(ADMIN_KEY))
    assert too_big.status_code == 422
    assert (await messages(engine))[dead].state == "dead"


# Readiness -------------------------------------------------------------------------------------


@pytest.fixture
async def opencrm_app(database_url: str, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url,
        crm_mode="opencrm",
        opencrm_base_url="http://127.0.0.1:9",
        opencrm_key=KEY,
        opencrm_passkey=PASSKEY,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


async def readyz(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        return await c.get("/readyz")


async def test_a_halted_dispatcher_fails_readiness_with_its_reason(
    opencrm_app: FastAPI, engine: AsyncEngine
) -> None:
    assert (await readyz(opencrm_app)).status_code == 200
    async with engine.begin() as conn:
        await health.record_halt(conn, "OpenCRM refused the API credentials (Unauthorized)")
    response = await readyz(opencrm_app)
    assert response.status_code == 503
    [problem] = response.json()["problems"]
    assert "CRM deliveries halted" in problem
    assert "Unauthorized" in problem
    async with engine.begin() as conn:
        await health.record_success(conn)
    assert (await readyz(opencrm_app)).status_code == 200


async def test_unreachable_crm_and_dead_letters_are_warnings_only(
    opencrm_app: FastAPI, engine: AsyncEngine
) -> None:
    await add_message(engine, "INV-1", "Paid", "0.00", state="dead")
    async with engine.begin() as conn:
        await health.record_failure(conn, "OpenCRM get_invoice: ConnectError")
    response = await readyz(opencrm_app)
    assert response.status_code == 200, response.text
    warnings = " | ".join(response.json()["warnings"])
    assert "OpenCRM calls failing: OpenCRM get_invoice: ConnectError" in warnings
    assert "1 CRM outbox message(s) are dead letters" in warnings


async def test_local_mode_ignores_a_halt_left_from_opencrm_mode(
    client: httpx.AsyncClient, app: FastAPI, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await health.record_halt(conn, "OpenCRM refused the API credentials")
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["problems"] == []


async def test_metrics_show_the_outbox_and_deliveries(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_message(engine, "INV-1", "Paid", "0.00")
    await add_message(engine, "INV-2", "Paid", "0.00", state="dead")
    before = await client.get("/metrics")
    assert "ledgerlink_outbox_pending 1.0" in before.text
    assert "ledgerlink_outbox_dead 1.0" in before.text
    await dispatcher(engine, LocalConnector()).run_once()
    after = await client.get("/metrics")
    assert "ledgerlink_outbox_pending 0.0" in after.text
    assert 'ledgerlink_crm_deliveries_total{outcome="delivered"}' in after.text


async def test_paging_read_back_failures_and_skipped_records_are_warnings(
    opencrm_app: FastAPI, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await health.record_paging(conn, "OpenCRM get_invoice_list ignores paging: ...")
        await conn.execute(
            sa.text(
                "INSERT INTO crm_readback_state (id, failures, last_error, last_error_at, "
                "skipped, last_skipped) VALUES (1, 2, 'OpenCRM get_invoice_list: HTTP 502', "
                "now(), 3, 'invoice INV-9: invoicestatus has 66 characters, more than 64')"
            )
        )
    response = await readyz(opencrm_app)
    assert response.status_code == 200, response.text
    warnings = " | ".join(response.json()["warnings"])
    assert "OpenCRM lists do not page properly" in warnings
    assert "ignores paging" in warnings
    assert "CRM read-back failing (2 attempt(s)" in warnings
    assert "CRM read-back skipped 3 record(s)" in warnings
    assert "invoice INV-9: invoicestatus has 66 characters" in warnings
    async with engine.begin() as conn:
        await health.record_paging(conn, None)
    warnings = " | ".join((await readyz(opencrm_app)).json()["warnings"])
    assert "page properly" not in warnings
