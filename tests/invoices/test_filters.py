"""The list's filters (the written-off, conflict, divergent and mismatch ones), refusal of
unknown filter values, the CSV form of the list, and the Global Update selecting by filter."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.factories import add_invoice, bulk_update
from tests.support.keys import READ_KEY, auth
from tests.support.queries import execute, scalar, statuses, table_checksums


@pytest.fixture
async def book(engine: AsyncEngine) -> None:
    """W-1/W-2: written off in Sage, still Paid/Unpaid here (divergent); W-3 written off and
    marked; P-1 paid and marked; C-1 protected with a conflict; M-1 a mismatch."""
    await add_invoice(
        engine,
        "W-1",
        status="Paid",
        written_off="120.00",
        outstanding="0.00",
        derived_state="written_off",
    )
    await add_invoice(
        engine,
        "W-2",
        account_ref="BETA02",
        status="Unpaid",
        paid="20.00",
        written_off="100.00",
        outstanding="0.00",
        derived_state="paid_written_off",
    )
    await add_invoice(
        engine,
        "W-3",
        status="Written Off",
        written_off="120.00",
        outstanding="0.00",
        derived_state="written_off",
    )
    await add_invoice(
        engine, "P-1", status="Paid", paid="120.00", outstanding="0.00", derived_state="paid"
    )
    await add_invoice(
        engine,
        "C-1",
        status="Written Off",
        paid="120.00",
        outstanding="0.00",
        derived_state="paid",
        conflict="cash arrived after the write-off",
    )
    await add_invoice(engine, "M-1", status="Unpaid", derived_state="unpaid")
    await execute(engine, "UPDATE invoices SET mismatch = true WHERE invoice_number = 'M-1'")


async def _numbers(client: httpx.AsyncClient, query: str) -> list[str]:
    response = await client.get(f"/v1/invoices?{query}", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    return [item["invoice_number"] for item in response.json()["items"]]


@pytest.mark.usefixtures("book")
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("written_off=true", ["W-1", "W-2", "W-3"]),
        ("written_off=false", ["C-1", "M-1", "P-1"]),
        ("conflict=true", ["C-1"]),
        ("mismatch=true", ["M-1"]),
        ("divergent=true", ["W-1", "W-2"]),
        ("divergent=false", ["C-1", "M-1", "P-1", "W-3"]),
        ("derived_state=written_off&derived_state=paid_written_off", ["W-1", "W-2", "W-3"]),
        ("divergent=true&derived_state=written_off&account_ref=ACME01", ["W-1"]),
        ("written_off=true&protected=false", ["W-1", "W-2"]),
    ],
)
async def test_filters(client: httpx.AsyncClient, query: str, expected: list[str]) -> None:
    assert await _numbers(client, query) == expected


@pytest.mark.parametrize("typo", ["Writen%20Off", "written%20off"])
async def test_unknown_status_is_422_listing_the_allowed_values(
    client: httpx.AsyncClient, typo: str
) -> None:
    response = await client.get(f"/v1/invoices?status=Paid&status={typo}", headers=auth(READ_KEY))
    assert response.status_code == 422
    body = response.json()
    assert "Written Off" in body["allowed"]
    assert "'Written Off'" in body["detail"]
    assert body["errors"][0]["field"] == "query.status"


async def test_status_seen_in_the_crm_is_a_known_filter_value(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await execute(engine, "INSERT INTO crm_observed_statuses (value) VALUES ('On Hold')")
    response = await client.get("/v1/invoices?status=On%20Hold", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text


async def test_unknown_derived_state_is_422_listing_the_allowed_values(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/invoices?derived_state=writen_off", headers=auth(READ_KEY))
    assert response.status_code == 422
    assert "paid_written_off" in response.json()["detail"]


@pytest.mark.usefixtures("book")
@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("written_off=true&limit=2&format=csv", {}),
        ("written_off=true&limit=2", {"Accept": "text/csv"}),
    ],
)
async def test_csv_is_the_page_the_json_shows(
    client: httpx.AsyncClient, query: str, headers: dict[str, str]
) -> None:
    response = await client.get(f"/v1/invoices?{query}", headers={**auth(READ_KEY), **headers})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["invoice_number"] for r in rows] == ["W-1", "W-2"]
    assert rows[0]["written_off"] == "120.00"
    assert rows[1]["paid"] == "20.00"
    assert rows[1]["status"] == "Unpaid"
    # The rest is one click away, in the same filter.
    assert 'rel="next"' in response.headers["link"]
    assert "cursor=" in response.headers["link"]


@pytest.mark.usefixtures("book")
async def test_global_update_by_filter_dry_run_then_apply(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    unmarked = {"divergent": True, "derived_state": ["written_off"]}
    dry = await bulk_update(client, {"status": "Written Off", "filter": unmarked, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert [
        (r["invoice_number"], r["from_status"], r["outcome"]) for r in dry.json()["results"]
    ] == [("W-1", "Paid", "updated")]
    assert (await statuses(engine, "W-1"))["W-1"] == "Paid"

    applied = await bulk_update(
        client,
        {"status": "Written Off", "filter": unmarked, "reason": "written off in Sage"},
        idempotency_key="filter-apply-1",
    )
    assert applied.status_code == 200, applied.text
    assert applied.json()["updated"] == 1
    assert await statuses(engine, "W-1", "W-2", "P-1") == {
        "W-1": "Written Off",
        "W-2": "Unpaid",
        "P-1": "Paid",
    }
    history = await scalar(
        engine, "SELECT reason FROM status_history WHERE invoice_number = 'W-1' AND source = 'bulk'"
    )
    assert history == "written off in Sage"
    again = await bulk_update(
        client,
        {"status": "Written Off", "filter": unmarked, "reason": "written off in Sage"},
        idempotency_key="filter-apply-1",
    )
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["job_id"] == applied.json()["job_id"]


@pytest.mark.usefixtures("book")
async def test_filter_and_account_ref_narrow_each_other(client: httpx.AsyncClient) -> None:
    response = await bulk_update(
        client,
        {
            "status": "Paid/Written Off",
            "account_ref": "BETA02",
            "filter": {"written_off": True},
            "dry_run": True,
        },
    )
    assert response.status_code == 200, response.text
    assert [r["invoice_number"] for r in response.json()["results"]] == ["W-2"]


@pytest.mark.usefixtures("book")
async def test_filter_selection_leaves_protected_invoices_alone_unless_named(
    client: httpx.AsyncClient,
) -> None:
    body = {"status": "Paid", "filter": {"written_off": True}, "dry_run": True}
    outcomes = {
        r["invoice_number"]: r["outcome"]
        for r in (await bulk_update(client, body)).json()["results"]
    }
    assert outcomes == {"W-1": "unchanged", "W-2": "updated", "W-3": "skipped_protected"}
    body["current_status_in"] = ["Written Off"]
    outcomes = {
        r["invoice_number"]: r["outcome"]
        for r in (await bulk_update(client, body)).json()["results"]
    }
    assert outcomes["W-3"] == "updated"


@pytest.mark.usefixtures("book")
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"status": "Paid", "filter": {}}, "at least one criterion"),
        ({"status": "Paid", "filter": {"conflict": True}, "invoice_numbers": ["W-1"]}, "not both"),
        ({"status": "Paid", "filter": {"status": ["Writen Off"]}}, "'Written Off'"),
        ({"status": "Paid", "filter": {"derived_state": ["bogus"]}}, "paid_written_off"),
    ],
)
async def test_bad_filter_selection_is_422_and_stores_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, body: dict[str, Any], needle: str
) -> None:
    before = await table_checksums(engine)
    response = await bulk_update(client, body)
    assert response.status_code == 422
    assert needle in response.text
    assert await table_checksums(engine) == before
