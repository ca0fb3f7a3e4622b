"""GET /v1/invoices/{n} shows the SI it mirrors and every allocation, classified."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.console.support import load_company
from tests.support.keys import READ_KEY, auth


async def test_detail_has_posting_and_classified_allocations(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await load_company(client, engine, settings)
    body = (await client.get("/v1/invoices/INV-2001", headers=auth(READ_KEY))).json()
    assert body["posting"]["tran_number"] == 3
    assert (body["posting"]["net"], body["posting"]["tax"], body["posting"]["gross"]) == (
        "500.00",
        "100.00",
        "600.00",
    )
    assert [
        (a["posting_tran_number"], a["type"], a["amount"], a["kind"]) for a in body["allocations"]
    ] == [(13, "SR", "100.00", "paid"), (14, "SC", "500.00", "written_off")]
    assert body["allocations"][1]["reference"] == "BADDBT"
