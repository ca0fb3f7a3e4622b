"""Text fields: every control character refused alike, lengths counted in characters."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.factories import add_invoice, deliver, si
from tests.support.keys import ADMIN_KEY, WRITE_KEY, auth


@pytest.mark.parametrize(
    "character",
    ["\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"],
    ids=["C0", "DEL", "NEL", "C1 APC", "line separator", "paragraph separator"],
)
async def test_webhook_text_refuses_c1_controls_and_separators_as_it_refuses_c0(
    client: httpx.AsyncClient, engine: AsyncEngine, character: str
) -> None:
    response = await deliver(client, si(1, "INV-1", details=f"Widgets{character}x"))
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["postings[0].details"]
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM postings"))).scalar() == 0


async def test_webhook_text_keeps_other_unicode(client: httpx.AsyncClient) -> None:
    details = "Caf\u00e9\u00a0\u2013 \u6771\u4eac \U0001f600"
    response = await deliver(client, si(1, "INV-1", details=details))
    assert response.status_code == 202, response.text


async def test_picklist_refuses_a_line_separator(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/v1/picklists/invoice-status",
        json={"values": ["Unpaid", "Paid\u2028Later"]},
        headers=auth(ADMIN_KEY),
    )
    assert response.status_code == 422, response.text


async def test_an_over_long_text_is_measured_in_characters(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-1")
    response = await client.patch(
        "/v1/invoices/INV-1",
        json={"status": "Paid", "reason": "x" * 1001},
        headers=auth(WRITE_KEY),
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "1000 characters" in detail
    assert "items" not in detail
