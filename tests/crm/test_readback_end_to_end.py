"""End to end: a person writes an invoice off in OpenCRM, with no Sage activity; the running
worker's read-back adopts it, and the next Sage receipt is a conflict, never written."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.main import build_worker, create_app
from service.settings import Settings
from tests.crm.e2e import crm_settings, wait_for
from tests.support.factories import deliver, settle, si
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.keys import READ_KEY, auth

NUMBER = "INV-7001"
READBACK_SECONDS = 2.0


@asynccontextmanager
async def service(
    settings: Settings, engine: AsyncEngine, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API, and beside it the whole worker (reconcile, jobs, outbox, read-back)."""
    app = create_app(settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
        httpx.AsyncClient() as http,
    ):
        ctx = WorkerContext(settings=settings, engine=engine, http=http)
        worker = asyncio.create_task(build_worker(ctx, database_url)[0].run())
        try:
            yield client
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker


async def shown(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(f"/v1/invoices/{NUMBER}", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_write_off_made_in_the_crm_is_adopted_and_the_next_receipt_is_a_conflict(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm
) -> None:
    settings = crm_settings(database_url, fake_crm, crm_readback_seconds=READBACK_SECONDS)
    fake_crm.add_invoice(NUMBER, status="Unpaid", outstanding="120.00")
    async with service(settings, engine, database_url) as client:
        assert (await deliver(client, si(7001, NUMBER, "120.00"))).status_code == 202
        await wait_for(
            engine,
            f"EXISTS (SELECT 1 FROM outbox WHERE invoice_number = '{NUMBER}' "
            "AND state = 'delivered')",
        )
        assert (await shown(client))["status"] == "Unpaid"

        fake_crm.set_by_person(NUMBER, invoicestatus="Written Off")
        edited_at = time.monotonic()
        while (body := await shown(client))["status"] != "Written Off":
            assert time.monotonic() - edited_at < 10, "not adopted within 10 s"
            await asyncio.sleep(0.05)
        adopted_after = time.monotonic() - edited_at
        assert body["protected"] is True
        assert body["history"][0]["source"] == "crm"
        assert body["history"][0]["actor"] == "opencrm"
        # Within one read-back interval (and the page it takes to read).
        assert adopted_after < READBACK_SECONDS + 2, adopted_after
        edits_before = len(fake_crm.edits_for(NUMBER))

        # Cash arrives in Sage afterwards: the protected status stays, a person is told.
        assert (await deliver(client, settle(7002, "SR", [(7001, "120.00")]))).status_code == 202
        await wait_for(
            engine,
            f"(SELECT conflict IS NOT NULL FROM invoices WHERE invoice_number = '{NUMBER}') "
            f"AND NOT EXISTS (SELECT FROM dirty_invoices WHERE invoice_number = '{NUMBER}')",
        )
        body = await shown(client)
        assert (body["status"], body["protected"], body["outstanding"]) == (
            "Written Off",
            True,
            "120.00",
        )
        conflicts = await client.get(
            "/v1/reconciliation/report?kind=conflicts", headers=auth(READ_KEY)
        )
        assert [i["invoice_number"] for i in conflicts.json()["items"]] == [NUMBER]
        drift = await client.get("/v1/reconciliation/report?kind=crm_drift", headers=auth(READ_KEY))
        assert drift.json()["items"] == []
        await asyncio.sleep(READBACK_SECONDS + 0.5)  # another read-back and dispatcher round

    assert len(fake_crm.edits_for(NUMBER)) == edits_before
    assert fake_crm.invoice(NUMBER)["invoicestatus"] == "Written Off"
    async with engine.connect() as conn:
        pending = (
            await conn.execute(sa.text("SELECT count(*) FROM outbox WHERE state = 'pending'"))
        ).scalar()
    assert pending == 0
    print(f"read-back adopted the CRM's write-off after {adopted_after:.2f} s")
