"""The OpenCRM connector: what it reads, what it writes, and what it refuses to (respx)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from service.crm.connector import Change, KeptCrmStatus, LocalConnector, Pushed
from service.crm.errors import CrmAmbiguous, CrmInvoiceNotFound
from service.crm.values import parse_amount
from tests.crm.support import BASE_URL, opencrm_connector

API = f"{BASE_URL}/api/rest"


def sent(route: respx.Route) -> list[dict[str, str]]:
    out = []
    for call in route.calls:
        fields = dict(parse_qsl(call.request.content.decode(), keep_blank_values=True))
        for secret in ("key", "passkey"):
            fields.pop(secret)
        out.append(fields)
    return out


def crm(
    records: dict[str, dict[str, Any]],
) -> tuple[respx.Route, respx.Route, respx.Route]:
    """A respx OpenCRM holding `records` (by crmid): list, get and edit routes."""

    def listing(request: httpx.Request) -> httpx.Response:
        query = dict(parse_qsl(request.content.decode()))["query_string"]
        field, _, value = query.partition("|=|")
        found = [r for r in records.values() if r.get(field) == value]
        return httpx.Response(200, json={"results": found})

    def get(request: httpx.Request) -> httpx.Response:
        crm_id = dict(parse_qsl(request.content.decode()))["crmid"]
        if crm_id not in records:
            return httpx.Response(200, json={"error": "Record not found"})
        return httpx.Response(200, json=records[crm_id])

    return (
        respx.post(f"{API}/get_invoice_list").mock(side_effect=listing),
        respx.post(f"{API}/get_invoice").mock(side_effect=get),
        respx.post(f"{API}/edit_invoice").respond(json={"success": True}),
    )


def change(
    status: str | None = "Paid",
    outstanding: str | None = "0.00",
    *,
    source: str = "sync",
    crm_id: str | None = None,
) -> Change:
    return Change(
        message_id=1,
        invoice_number="INV-1",
        source=source,
        status=status,
        outstanding=Decimal(outstanding) if outstanding is not None else None,
        crm_id=crm_id,
    )


def record(status: str = "Unpaid", outstanding: str = "100.00", **more: str) -> dict[str, str]:
    return {
        "crmid": "42",
        "invoice_no": "INV-1",
        "invoicestatus": status,
        "amount_outstanding": outstanding,
        "subject": "Widgets",
        **more,
    }


@respx.mock
async def test_resolves_the_record_id_by_number_then_writes_only_what_changed(
    http: httpx.AsyncClient,
) -> None:
    listing, get, edit = crm({"42": record(status="Unpaid", outstanding="0.00")})
    outcome = await opencrm_connector(http).deliver(change("Paid", "0.00"))
    assert outcome == Pushed(
        sent={"invoicestatus": "Paid"},
        crm_id="42",
        crm_status="Unpaid",
        crm_outstanding=Decimal("0.00"),
    )
    assert sent(listing) == [
        {"query_string": "invoice_no|=|INV-1", "limit_start": "0", "limit_end": "100"}
    ]
    assert sent(get) == [{"crmid": "42"}]
    assert sent(edit) == [{"crmid": "42", "invoicestatus": "Paid"}]


@respx.mock
async def test_a_cached_record_id_skips_the_list_call(http: httpx.AsyncClient) -> None:
    listing, get, edit = crm({"42": record()})
    await opencrm_connector(http).deliver(change("Part Paid", "40.00", crm_id="42"))
    assert get.call_count == 1
    assert not listing.called
    assert sent(edit) == [
        {"crmid": "42", "invoicestatus": "Part Paid", "amount_outstanding": "40.00"}
    ]


@respx.mock
async def test_a_stale_cached_record_id_is_found_again_by_number(http: httpx.AsyncClient) -> None:
    listing, _, edit = crm({"42": record()})
    outcome = await opencrm_connector(http).deliver(change("Paid", crm_id="999"))
    assert listing.call_count == 1
    assert isinstance(outcome, Pushed)
    assert outcome.crm_id == "42"
    assert sent(edit)[0]["crmid"] == "42"


@respx.mock
async def test_a_cached_id_now_holding_another_invoice_is_not_edited(
    http: httpx.AsyncClient,
) -> None:
    listing, _, edit = crm({"42": record(), "43": record(crmid="43", invoice_no="INV-2")})
    await opencrm_connector(http).deliver(change("Paid", crm_id="43"))
    assert listing.called
    assert [s["crmid"] for s in sent(edit)] == ["42"]


@respx.mock
async def test_nothing_is_written_when_the_crm_already_shows_the_change(
    http: httpx.AsyncClient,
) -> None:
    _, _, edit = crm({"42": record(status="Paid", outstanding="0")})
    outcome = await opencrm_connector(http).deliver(change("Paid", "0.00"))
    assert outcome == Pushed(
        sent={}, crm_id="42", crm_status="Paid", crm_outstanding=Decimal("0.00")
    )
    assert not edit.called


@respx.mock
async def test_outstanding_is_sent_only_when_its_field_is_configured(
    http: httpx.AsyncClient,
) -> None:
    _, _, edit = crm({"42": record(status="Unpaid", outstanding="100.00")})
    outcome = await opencrm_connector(http, outstanding_field=None).deliver(
        change("Part Paid", "40.00")
    )
    assert sent(edit) == [{"crmid": "42", "invoicestatus": "Part Paid"}]
    # The CRM's balance is not ours to know then: nothing is claimed about it.
    assert isinstance(outcome, Pushed)
    assert outcome.crm_outstanding is None


@pytest.mark.parametrize(
    ("status", "outstanding", "expected"),
    [
        ("", "40.00", {"amount_outstanding": "40.00"}),
        ("  ", None, None),
        (None, None, None),
        ("Part Paid", None, {"invoicestatus": "Part Paid"}),
    ],
)
@respx.mock
async def test_never_an_empty_field(
    http: httpx.AsyncClient,
    status: str | None,
    outstanding: str | None,
    expected: dict[str, str] | None,
) -> None:
    _, _, edit = crm({"42": record(status="Unpaid", outstanding="100.00")})
    await opencrm_connector(http).deliver(change(status, outstanding))
    if expected is None:
        assert not edit.called
    else:
        assert sent(edit) == [{"crmid": "42", **expected}]
    for fields in sent(edit):
        assert all(value.strip() for value in fields.values())


@respx.mock
async def test_an_amount_the_crm_formats_differently_is_not_rewritten(
    http: httpx.AsyncClient,
) -> None:
    _, _, edit = crm({"42": record(status="Part Paid", outstanding="£1,040.5")})
    await opencrm_connector(http).deliver(change("Part Paid", "1040.50"))
    assert not edit.called


@respx.mock
async def test_a_protected_status_set_in_the_crm_wins_over_a_sync(
    http: httpx.AsyncClient,
) -> None:
    _, _, edit = crm({"42": record(status="Written Off", outstanding="0.00")})
    outcome = await opencrm_connector(http).deliver(change("Paid", "0.00", source="sync"))
    assert outcome == KeptCrmStatus(crm_status="Written Off", crm_id="42")
    assert not edit.called


@respx.mock
async def test_protected_status_matching_ignores_case_and_keeps_the_configured_label(
    http: httpx.AsyncClient,
) -> None:
    crm({"42": record(status=" paid/written off ")})
    outcome = await opencrm_connector(http).deliver(change("Paid", source="sync"))
    assert outcome == KeptCrmStatus(crm_status="Paid/Written Off", crm_id="42")


@pytest.mark.parametrize("source", ["manual", "bulk"])
@respx.mock
async def test_a_person_in_ledgerlink_overrides_a_protected_crm_status(
    http: httpx.AsyncClient, source: str
) -> None:
    _, _, edit = crm({"42": record(status="Written Off", outstanding="0.00")})
    outcome = await opencrm_connector(http).deliver(change("Unpaid", "0.00", source=source))
    assert isinstance(outcome, Pushed)
    assert sent(edit) == [{"crmid": "42", "invoicestatus": "Unpaid"}]


@respx.mock
async def test_a_sync_that_agrees_with_the_protected_status_still_sends_the_balance(
    http: httpx.AsyncClient,
) -> None:
    _, _, edit = crm({"42": record(status="Written Off", outstanding="12.00")})
    await opencrm_connector(http).deliver(change("Written Off", "0.00"))
    assert sent(edit) == [{"crmid": "42", "amount_outstanding": "0.00"}]


@respx.mock
async def test_an_unknown_invoice_number_is_not_found(http: httpx.AsyncClient) -> None:
    crm({"42": record(invoice_no="OTHER")})
    with pytest.raises(CrmInvoiceNotFound, match="LEDGERLINK_OPENCRM_NUMBER_FIELD"):
        await opencrm_connector(http).deliver(change())


@respx.mock
async def test_an_unfiltered_list_never_leads_to_editing_another_invoice(
    http: httpx.AsyncClient,
) -> None:
    """The API validates almost nothing: a filter it ignores returns every invoice."""
    others = [record(crmid=str(i), invoice_no=f"INV-{i}") for i in range(2, 6)]
    respx.post(f"{API}/get_invoice_list").respond(json=others)
    edit = respx.post(f"{API}/edit_invoice").respond(json={"success": True})
    with pytest.raises(CrmInvoiceNotFound):
        await opencrm_connector(http).deliver(change())
    assert not edit.called


@respx.mock
async def test_two_crm_invoices_with_one_number_are_ambiguous(http: httpx.AsyncClient) -> None:
    crm({"42": record(), "43": record(crmid="43")})
    with pytest.raises(CrmAmbiguous, match="42, 43"):
        await opencrm_connector(http).deliver(change())


async def test_the_local_connector_only_reports_delivery() -> None:
    outcome = await LocalConnector().deliver(change("Paid", "0.00"))
    assert outcome == Pushed(sent={"status": "Paid", "outstanding": "0.00"})


@pytest.mark.parametrize(
    ("raw", "amount"),
    [
        ("40.00", Decimal("40.00")),
        ("£1,040.5", Decimal("1040.50")),
        ("-3.2", Decimal("-3.20")),
        (" 1,234,567.891 ", Decimal("1234567.89")),
        (12, Decimal("12.00")),
        (12.5, Decimal("12.50")),
        ("999999999999.99", Decimal("999999999999.99")),
        ("1e400", None),
        ("1E3", None),
        ({"amount": 5}, None),
        ([5], None),
        (True, None),
        (False, None),
        (None, None),
        ("", None),
        ("NaN", None),
        ("Infinity", None),
        ("1000000000000.00", None),
        (10**15, None),
        (float("inf"), None),
        ("12.34.56", None),
        ("1,2,3", None),
        ("12 - 3", None),
        ("n/a", None),
    ],
)
def test_amounts_are_read_strictly_and_an_unreadable_one_is_none(raw: Any, amount: Any) -> None:
    """Issue 24, item 14: "1e400" was read as 1400.00 and {"amount": 5} as 5.00."""
    assert parse_amount(raw) == amount


@respx.mock
async def test_an_unreadable_crm_amount_is_rewritten_not_taken_for_ours(
    http: httpx.AsyncClient,
) -> None:
    _, _, edit = crm({"42": {**record(status="Part Paid"), "amount_outstanding": {"amount": 5}}})
    await opencrm_connector(http).deliver(change("Part Paid", "5.00"))
    assert sent(edit) == [{"crmid": "42", "amount_outstanding": "5.00"}]
