"""What the fixture company's ledger says of each invoice, and reading the service's view."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tests.support.keys import READ_KEY, WRITE_KEY, auth

FIGURES = ("gross", "paid", "discounted", "written_off", "credited", "outstanding")

# invoice -> currency, status, then gross, paid, discounted, written off, credited and
# outstanding in the invoice's currency, then the exchange adjustment (pounds): what Sage's
# own ledger in tests/fixtures/sage implies (the allocations, line by line).
FIXTURE_LEDGER: dict[str, tuple[str, ...]] = {
    "10001": ("GBP", "Paid", "300.00", "300.00", "0.00", "0.00", "0.00", "0.00", "0.00"),
    "10002": ("GBP", "Part Paid", "120.12", "100.00", "0.30", "0.00", "0.00", "19.82", "0.00"),
    "10003": ("GBP", "Written Off", "600.00", "0.00", "0.00", "600.00", "0.00", "0.00", "0.00"),
    "10004": ("GBP", "Paid", "240.00", "240.00", "0.00", "0.00", "0.00", "0.00", "0.00"),
    "10005": ("GBP", "Paid", "120.00", "60.00", "0.00", "0.00", "60.00", "0.00", "0.00"),
    "10007": ("GBP", "Unpaid", "96.00", "0.00", "0.00", "0.00", "0.00", "96.00", "0.00"),
    "10008": ("GBP", "Paid", "200.00", "200.00", "0.00", "0.00", "0.00", "0.00", "0.00"),
    "10009": ("GBP", "Paid", "150.00", "150.00", "0.00", "0.00", "0.00", "0.00", "0.00"),
    "10010": ("GBP", "Written Off", "120.00", "0.00", "0.00", "120.00", "0.00", "0.00", "0.00"),
    # $2,000 at 1.25 (1,600.00), $500 received at 1.25: $1,500 owed.
    "30001": ("USD", "Part Paid", "2000.00", "500.00", "0.00", "0.00", "0.00", "1500.00", "0.00"),
    # $1,600 at 1.25 (1,280.00) paid in full at 1.28 (1,250.00); the 30.00 REVAL SC is an
    # exchange adjustment, not a credit.
    "30002": ("USD", "Paid", "1600.00", "1600.00", "0.00", "0.00", "0.00", "0.00", "30.00"),
    # Part settled by a contra entry (an SR on the contra bank account 1230).
    "10011": ("GBP", "Part Paid", "480.00", "300.00", "0.00", "0.00", "0.00", "180.00", "0.00"),
    # The cleared year (AUDIT_HISTORY_* only).
    "9001": ("GBP", "Paid", "240.00", "240.00", "0.00", "0.00", "0.00", "0.00", "0.00"),
    "29001": ("USD", "Paid", "1000.00", "1000.00", "0.00", "0.00", "0.00", "0.00", "0.00"),
}
# The same invoices' base-currency figures where they differ (gross, paid, outstanding).
FIXTURE_BASE: dict[str, tuple[str, str, str]] = {
    "30001": ("1600.00", "400.00", "1200.00"),
    "30002": ("1280.00", "1250.00", "0.00"),
    "29001": ("833.33", "833.33", "0.00"),
}
CLEARED = ("9001", "29001")


def invoice_view(invoice: Mapping[str, Any]) -> tuple[str, ...]:
    """An invoice from the API as (currency, status, gross, paid, ..., outstanding,
    exchange adjustment)."""
    amounts = {
        **invoice["amounts"],
        "gross": invoice["gross"],
        "outstanding": invoice["outstanding"],
    }
    return (
        invoice["currency"],
        invoice["status"],
        *(amounts[name] for name in FIGURES),
        invoice["base"]["exchange_adjustment"],
    )


def base_views(invoices: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """The invoices in FIXTURE_BASE as their base (gross, paid, outstanding)."""
    return {
        str(item["invoice_number"]): (
            item["base"]["gross"],
            item["base"]["paid"],
            item["base"]["outstanding"],
        )
        for item in invoices
        if item["invoice_number"] in FIXTURE_BASE
    }


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
