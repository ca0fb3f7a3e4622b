"""PATCH /v1/invoices/{invoice_number}: a person's edit."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.contracts import DIRTY_CHANNEL, OUTBOX_CHANNEL
from tests.support.factories import add_invoice
from tests.support.keys import ADMIN_KEY, READ_KEY, WRITE_KEY, auth
from tests.support.queries import scalar, table_checksums


async def _patch(client: httpx.AsyncClient, number: str, body: object) -> httpx.Response:
    return await client.patch(f"/v1/invoices/{number}", json=body, headers=auth(WRITE_KEY))


async def test_edit_writes_status_history_and_outbox(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-1", status="Paid", outstanding="0.00", paid="120.00")
    response = await _patch(client, "INV-1", {"status": "Written Off", "reason": "bad debt"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "Written Off"
    assert body["protected"] is True
    [entry] = body["history"]
    assert entry["source"] == "manual"
    assert entry["actor"] == "writer"  # the API key's name
    assert entry["reason"] == "bad debt"
    assert (entry["from_status"], entry["to_status"]) == ("Paid", "Written Off")
    assert entry["job_id"] is None
    assert entry["run_id"] is None
    async with engine.connect() as conn:
        outbox = (await conn.execute(sa.text("SELECT * FROM outbox"))).one()
        history_id = await conn.scalar(sa.text("SELECT id FROM status_history"))
    assert outbox.invoice_number == "INV-1"
    assert outbox.source == "manual"
    assert outbox.payload["status"] == "Written Off"
    assert outbox.payload["outstanding"] == "0.00"
    assert outbox.payload["history_id"] == history_id


async def test_status_outside_the_picklist_is_422_listing_allowed_values(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-1")
    before = await table_checksums(engine)
    response = await _patch(client, "INV-1", {"status": "Written off"})  # wrong case
    assert response.status_code == 422
    problem = response.json()
    assert "Paid/Written Off" in problem["allowed"]
    assert "'Written Off'" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "status"]
    assert await table_checksums(engine) == before


async def test_unknown_invoice_is_404_and_stores_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = await table_checksums(engine)
    response = await _patch(client, "NOPE", {"status": "Paid"})
    assert response.status_code == 404
    assert "NOPE" in response.json()["detail"]
    assert await table_checksums(engine) == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": ""},
        {"status": "x" * 65},
        {"status": "Paid", "reason": "r" * 1001},
        {"status": "Paid", "extra": 1},
        {"status": "Pa\u0000id"},
        {"status": 5},
    ],
)
async def test_invalid_bodies_are_422(
    client: httpx.AsyncClient, engine: AsyncEngine, body: object
) -> None:
    await add_invoice(engine, "INV-1")
    response = await _patch(client, "INV-1", body)
    assert response.status_code == 422, response.text
    assert await scalar(engine, "SELECT count(*) FROM status_history") == 0


async def test_same_status_again_records_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-1", status="Paid")
    before = await table_checksums(engine)
    response = await _patch(client, "INV-1", {"status": "Paid"})
    assert response.status_code == 200
    assert response.json()["history"] == []
    assert await table_checksums(engine) == before


async def test_protecting_does_not_queue_reconciliation(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-1", status="Paid", outstanding="0.00")
    await _patch(client, "INV-1", {"status": "Written Off"})
    assert await scalar(engine, "SELECT count(*) FROM dirty_invoices") == 0


async def test_releasing_a_protected_invoice_queues_reconciliation(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(
        engine, "INV-1", status="Written Off", outstanding="0.00", conflict="cash arrived"
    )
    response = await _patch(client, "INV-1", {"status": "Unpaid", "reason": "mistake"})
    assert response.status_code == 200
    assert response.json()["protected"] is False
    assert response.json()["conflict"] is None  # a conflict only exists on protected invoices
    assert await scalar(engine, "SELECT array_agg(invoice_number) FROM dirty_invoices") == ["INV-1"]


async def test_releasing_keeps_an_earlier_dirty_mark(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-1", status="Paid/Written Off")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO dirty_invoices (invoice_number, since) "
                "VALUES ('INV-1', TIMESTAMPTZ '2026-01-01 00:00+00')"
            )
        )
    await _patch(client, "INV-1", {"status": "Paid"})
    assert await scalar(engine, "SELECT since::text FROM dirty_invoices") == (
        "2026-01-01 00:00:00+00"
    )


async def test_edit_notifies_the_outbox_and_reconciliation_on_commit(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    import asyncio

    import asyncpg

    from service.db import libpq_url

    await add_invoice(engine, "INV-1", status="Written Off")
    heard: list[str] = []
    listener = await asyncpg.connect(libpq_url(database_url))
    try:
        for channel in (OUTBOX_CHANNEL, DIRTY_CHANNEL):
            await listener.add_listener(channel, lambda *args: heard.append(args[2]))
        await _patch(client, "INV-1", {"status": "Unpaid"})
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await listener.close()
    assert sorted(heard) == sorted([DIRTY_CHANNEL, OUTBOX_CHANNEL])


async def test_scopes(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await add_invoice(engine, "INV-1")
    body = {"status": "Paid"}
    assert (await client.patch("/v1/invoices/INV-1", json=body)).status_code == 401
    bad = {"Authorization": "Bearer wrong-key-000000000000"}
    assert (await client.patch("/v1/invoices/INV-1", json=body, headers=bad)).status_code == 401
    read = await client.patch("/v1/invoices/INV-1", json=body, headers=auth(READ_KEY))
    assert read.status_code == 403
    assert (await client.get("/v1/invoices/INV-1")).status_code == 401
    assert (await client.get("/v1/invoices")).status_code == 401
    admin = await client.patch("/v1/invoices/INV-1", json=body, headers=auth(ADMIN_KEY))
    assert admin.status_code == 200
    assert admin.json()["history"][0]["actor"] == "admin"
