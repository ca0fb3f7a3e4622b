"""GET /v1/invoices (filters, keyset paging) and GET /v1/invoices/{invoice_number}."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.factories import add_invoice, add_many
from tests.support.keys import READ_KEY, WRITE_KEY, auth
from tests.support.queries import scalar


async def _numbers(client: httpx.AsyncClient, query: str) -> list[str]:
    response = await client.get(f"/v1/invoices?{query}", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    return [item["invoice_number"] for item in response.json()["items"]]


async def _all_pages(client: httpx.AsyncClient, query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = f"/v1/invoices?{query}" + (f"&cursor={cursor}" if cursor else "")
        body = (await client.get(url, headers=auth(READ_KEY))).json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


@pytest.fixture
async def mixed(engine: AsyncEngine) -> None:
    await add_invoice(
        engine, "INV-001", account_ref="ACME01", status="Unpaid", derived_state="unpaid"
    )
    await add_invoice(
        engine,
        "INV-002",
        account_ref="ACME01",
        status="Paid",
        outstanding="0.00",
        paid="120.00",
        derived_state="paid",
    )
    await add_invoice(
        engine,
        "INV-003",
        account_ref="ACME01",
        status="Written Off",
        outstanding="0.00",
        written_off="120.00",
        derived_state="written_off",
    )
    await add_invoice(
        engine,
        "INV-004",
        account_ref="BETA02",
        status="Paid/Written Off",
        outstanding="0.00",
        paid="20.00",
        written_off="100.00",
        derived_state="paid_written_off",
    )
    await add_invoice(
        engine,
        "INV-005",
        account_ref="BETA02",
        status="Part Paid",
        outstanding="60.00",
        paid="60.00",
        derived_state="part_paid",
    )


@pytest.mark.usefixtures("mixed")
async def test_invoice_json_has_amounts_as_two_decimal_strings(
    client: httpx.AsyncClient,
) -> None:
    body = (await client.get("/v1/invoices?account_ref=BETA02", headers=auth(READ_KEY))).json()
    first = body["items"][0]
    assert first["invoice_number"] == "INV-004"
    assert first["gross"] == "120.00"
    assert first["outstanding"] == "0.00"
    assert first["amounts"] == {
        "paid": "20.00",
        "discounted": "0.00",
        "written_off": "100.00",
        "credited": "0.00",
    }
    assert first["protected"] is True
    assert first["derived_state"] == "paid_written_off"
    assert body["next_cursor"] is None


@pytest.mark.usefixtures("mixed")
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["INV-001", "INV-002", "INV-003", "INV-004", "INV-005"]),
        ("status=Paid", ["INV-002"]),
        ("status=Paid&status=Part%20Paid", ["INV-002", "INV-005"]),
        ("account_ref=BETA02", ["INV-004", "INV-005"]),
        ("protected=true", ["INV-003", "INV-004"]),
        ("protected=false", ["INV-001", "INV-002", "INV-005"]),
        ("protected=false&account_ref=ACME01", ["INV-001", "INV-002"]),
        ("derived_state=written_off", ["INV-003"]),
        ("derived_state=part_paid&account_ref=ACME01", []),
    ],
)
async def test_filters(client: httpx.AsyncClient, query: str, expected: list[str]) -> None:
    assert await _numbers(client, query) == expected


@pytest.mark.usefixtures("mixed")
async def test_updated_since_filter(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE invoices SET updated_at = CASE invoice_number "
                "WHEN 'INV-002' THEN TIMESTAMPTZ '2026-03-01 10:00+00' "
                "ELSE TIMESTAMPTZ '2026-01-01 10:00+00' END"
            )
        )
    assert await _numbers(client, "updated_since=2026-02-01T00:00:00Z") == ["INV-002"]
    # No offset: read as UTC.
    assert await _numbers(client, "updated_since=2026-03-01T10:00:00") == ["INV-002"]
    assert await _numbers(client, "updated_since=2026-03-01T10:00:01%2B00:00") == []


async def test_paging_visits_every_invoice_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_many(engine, 57, account_ref="ACME01", prefix="P")
    items = await _all_pages(client, "limit=10")
    numbers = [i["invoice_number"] for i in items]
    assert len(numbers) == 57
    assert numbers == sorted(set(numbers))


async def test_paging_is_stable_under_concurrent_writes(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_many(engine, 30, account_ref="ACME01", prefix="P")
    first = (await client.get("/v1/invoices?limit=10", headers=auth(READ_KEY))).json()
    seen = [i["invoice_number"] for i in first["items"]]
    assert seen[-1] == "P0000010"
    # Meanwhile: an invoice already seen and one still ahead change (updated_at moves), one
    # ahead is deleted from the table and a new one appears behind the cursor and one ahead.
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE invoices SET status = 'Sent', updated_at = now() "
                "WHERE invoice_number IN ('P0000003', 'P0000020')"
            )
        )
        await conn.execute(sa.text("DELETE FROM invoices WHERE invoice_number = 'P0000025'"))
    await add_invoice(engine, "P0000005a")
    await add_invoice(engine, "P0000015a")
    cursor = first["next_cursor"]
    while cursor:
        page = (
            await client.get(f"/v1/invoices?limit=10&cursor={cursor}", headers=auth(READ_KEY))
        ).json()
        seen.extend(i["invoice_number"] for i in page["items"])
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)), "an invoice was returned twice"
    expected = {f"P{n:07d}" for n in range(1, 31)} - {"P0000025"} | {"P0000015a"}
    assert set(seen) == expected


@pytest.mark.usefixtures("mixed")
@pytest.mark.parametrize(
    "cursor",
    ["not-base64!!", "e30", "eyJhZnRlciI6MX0", "eyJhZnRlciI6IklOViIsInEiOiJ4In0", "%FF%FE"],
)
async def test_bad_cursor_is_422(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get(f"/v1/invoices?cursor={cursor}", headers=auth(READ_KEY))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "cursor"]


@pytest.mark.usefixtures("mixed")
async def test_cursor_from_another_query_is_422(client: httpx.AsyncClient) -> None:
    first = (await client.get("/v1/invoices?limit=1", headers=auth(READ_KEY))).json()
    response = await client.get(
        f"/v1/invoices?limit=1&status=Paid&cursor={first['next_cursor']}", headers=auth(READ_KEY)
    )
    assert response.status_code == 422
    assert "different query" in response.json()["detail"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=x",
        "protected=maybe",
        "derived_state=bogus",
        "updated_since=yesterday",
    ],
)
async def test_bad_query_values_are_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/v1/invoices?{query}", headers=auth(READ_KEY))
    assert response.status_code == 422


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00%2B01:00"])
async def test_updated_since_past_the_calendar_in_utc_is_422_naming_it(
    client: httpx.AsyncClient, moment: str
) -> None:
    response = await client.get(f"/v1/invoices?updated_since={moment}", headers=auth(READ_KEY))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["query", "updated_since"]
    assert "UTC" in response.json()["detail"]


async def test_updated_since_at_the_edges_of_the_calendar_in_utc_is_a_filter(
    client: httpx.AsyncClient,
) -> None:
    assert await _numbers(client, "updated_since=9999-12-31T23:59:59Z") == []
    assert await _numbers(client, "updated_since=0001-01-01T00:00:00-01:00") == []


@pytest.mark.usefixtures("mixed")
async def test_hostile_filter_values_are_only_values(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    hostile = [
        "status=' OR '1'='1",
        "account_ref=ACME01'; DROP TABLE invoices; --",
        "status=Paid%22);DELETE FROM invoices;--",
        "account_ref=%25",
        "status=%00",
    ]
    for query in hostile:
        response = await client.get(f"/v1/invoices?{query}", headers=auth(READ_KEY))
        assert response.status_code in (200, 422), response.text
        if response.status_code == 200:
            assert response.json()["items"] == []
    assert await scalar(engine, "SELECT count(*) FROM invoices") == 5


async def test_detail_has_history_oldest_first(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-100", status="Paid", outstanding="0.00", paid="120.00")
    for status in ("Written Off", "Paid/Written Off"):
        response = await client.patch(
            "/v1/invoices/INV-100",
            json={"status": status, "reason": "r"},
            headers=auth(WRITE_KEY),
        )
        assert response.status_code == 200
    body = (await client.get("/v1/invoices/INV-100", headers=auth(READ_KEY))).json()
    assert body["status"] == "Paid/Written Off"
    assert [(h["from_status"], h["to_status"]) for h in body["history"]] == [
        ("Paid", "Written Off"),
        ("Written Off", "Paid/Written Off"),
    ]
    entry = body["history"][0]
    assert set(entry) >= {
        "at",
        "from_status",
        "to_status",
        "source",
        "actor",
        "reason",
        "run_id",
        "job_id",
    }
    assert entry["to_outstanding"] == "0.00"


async def test_detail_of_a_number_with_a_slash(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "2026/001")
    response = await client.get("/v1/invoices/2026%2F001", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    assert response.json()["invoice_number"] == "2026/001"


async def test_unknown_invoice_is_404(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    response = await client.get("/v1/invoices/NOPE", headers=auth(READ_KEY))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
