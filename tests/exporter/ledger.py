"""What the fixture company's ledger says of each invoice, and reading the service's view."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tests.conftest import READ_KEY, WRITE_KEY, auth

FIGURES = ("gross", "paid", "discounted", "written_off", "credited", "outstanding")

# invoice -> status, then gross, paid, discounted, written off, credited, outstanding: what
# Sage's own ledger in tests/fixtures/sage implies (the allocations, line by line).
FIXTURE_LEDGER: dict[str, tuple[str, ...]] = {
    "10001": ("Paid", "300.00", "300.00", "0.00", "0.00", "0.00", "0.00"),
    "10002": ("Part Paid", "120.12", "100.00", "0.30", "0.00", "0.00", "19.82"),
    "10003": ("Written Off", "600.00", "0.00", "0.00", "600.00", "0.00", "0.00"),
    "10004": ("Paid", "240.00", "240.00", "0.00", "0.00", "0.00", "0.00"),
    "10005": ("Paid", "120.00", "60.00", "0.00", "0.00", "60.00", "0.00"),
    "10007": ("Unpaid", "96.00", "0.00", "0.00", "0.00", "0.00", "96.00"),
    "10008": ("Paid", "200.00", "200.00", "0.00", "0.00", "0.00", "0.00"),
    "10009": ("Paid", "150.00", "150.00", "0.00", "0.00", "0.00", "0.00"),
    "10010": ("Written Off", "120.00", "0.00", "0.00", "120.00", "0.00", "0.00"),
}


def invoice_view(invoice: Mapping[str, Any]) -> tuple[str, ...]:
    """An invoice from the API as (status, gross, paid, ..., outstanding)."""
    amounts = {
        **invoice["amounts"],
        "gross": invoice["gross"],
        "outstanding": invoice["outstanding"],
    }
    return (invoice["status"], *(amounts[name] for name in FIGURES))


async def sync_and_read(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """A full sync run, then every invoice with its figures."""
    run = await client.post(
        "/v1/sync/trigger", params={"wait": "true"}, json={"scope": "all"}, headers=auth(WRITE_KEY)
    )
    assert run.status_code == 200, run.text
    page = await client.get("/v1/invoices", params={"limit": 500}, headers=auth(READ_KEY))
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


def live_views(invoices: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    return {
        str(item["invoice_number"]): invoice_view(item)
        for item in invoices
        if not item.get("deleted")
    }


def mismatched(invoices: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(str(item["invoice_number"]) for item in invoices if item.get("mismatch"))
