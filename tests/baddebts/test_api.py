"""GET /v1/reports/bad-debts: what was written off, when, its VAT, and which debts qualify for
UK VAT bad debt relief (more than six months past the due date, written off)."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from tests.support.keys import READ_KEY, auth

pytestmark = pytest.mark.usefixtures("company")


async def _page(client: httpx.AsyncClient, query: str) -> dict[str, object]:
    response = await client.get(f"/v1/reports/bad-debts?{query}", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_written_off_invoices_with_vat_dates_and_relief(client: httpx.AsyncClient) -> None:
    body = await _page(client, "as_of=2026-11-29")
    items = {i["invoice_number"]: i for i in body["items"]}  # type: ignore[attr-defined]
    assert set(items) == {"INV-1001", "INV-2001", "INV-3001"}
    inv = items["INV-2001"]
    assert (inv["gross"], inv["vat"], inv["written_off"]) == ("600.00", "100.00", "500.00")
    assert inv["written_off_on"] == "2026-09-15"
    assert inv["due_date"] == "2026-03-03"  # 1 February + 30 days
    assert inv["relief_from"] == "2026-09-03"
    assert inv["days_overdue"] == 271
    assert inv["qualifies"] is True
    assert inv["vat_relief"] == "83.33"  # 500 x 100 / 600
    assert items["INV-3001"]["qualifies"] is False
    assert body["totals"] == {
        "invoices": 3,
        "written_off": "980.00",
        "qualifying_invoices": 2,
        "qualifying_written_off": "620.00",
        "qualifying_vat_relief": "103.33",
    }


async def test_six_months_from_the_due_date_is_the_boundary(client: httpx.AsyncClient) -> None:
    # INV-1001: dated 10 January, due 9 February, relief from 9 August.
    before = await _page(client, "as_of=2026-08-08&qualifying=true")
    on = await _page(client, "as_of=2026-08-09&qualifying=true")
    assert [i["invoice_number"] for i in before["items"]] == []  # type: ignore[attr-defined]
    assert [i["invoice_number"] for i in on["items"]] == ["INV-1001"]  # type: ignore[attr-defined]


async def test_payment_term_is_configurable(app_with_term: httpx.AsyncClient) -> None:
    body = await _page(app_with_term, "as_of=2026-11-29&qualifying=true")
    # 120 days' term: INV-2001 (due 1 June) is not six months overdue on 29 November.
    assert [i["invoice_number"] for i in body["items"]] == ["INV-1001"]  # type: ignore[attr-defined]
    assert body["payment_term_days"] == 120


async def test_csv_paged_with_link(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/reports/bad-debts?as_of=2026-11-29&limit=2&format=csv", headers=auth(READ_KEY)
    )
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["invoice_number"] for r in rows] == ["INV-1001", "INV-2001"]
    assert rows[0]["vat_relief"] == "20.00"
    assert 'rel="next"' in response.headers["link"]


@pytest.mark.parametrize(
    "query",
    [
        "as_of=yesterday",
        # date.min and date.max would reach PostgreSQL as -infinity / infinity (a 500 before).
        "as_of=0001-01-01",
        "as_of=9999-12-31",
        "qualifying=maybe",
        "limit=0",
        "cursor=%%",
    ],
)
async def test_bad_query_is_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/v1/reports/bad-debts?{query}", headers=auth(READ_KEY))
    assert response.status_code == 422
