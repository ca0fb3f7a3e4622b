"""The OpenCRM client on its own: the wire format and the error mapping (respx)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
from pydantic import SecretStr

from service.crm.client import (
    CrmAuthError,
    CrmBlocked,
    CrmInvoiceNotFound,
    CrmRejected,
    CrmUnavailable,
    OpenCrmClient,
    records_in,
    retry_after_seconds,
)
from tests.crm.support import BASE_URL
from tests.support.fake_opencrm import KEY, PASSKEY

API = f"{BASE_URL}/api/rest"


def form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


def client(http: httpx.AsyncClient, **overrides: Any) -> OpenCrmClient:
    values: dict[str, Any] = {
        "base_url": BASE_URL + "/",
        "key": SecretStr(KEY),
        "passkey": SecretStr(PASSKEY),
        "user_agent": "ledgerlink/9.9.9",
        "timeout": 3.0,
    }
    values.update(overrides)
    return OpenCrmClient(http, **values)


@respx.mock
async def test_get_invoice_posts_form_with_credentials_and_our_user_agent(
    http: httpx.AsyncClient,
) -> None:
    route = respx.post(f"{API}/get_invoice").respond(
        json={"crmid": "42", "invoicestatus": "Paid", "invoice_no": "INV-1"}
    )
    invoice = await client(http).get_invoice("42")
    assert invoice.crm_id == "42"
    assert invoice.text("invoicestatus") == "Paid"
    assert invoice.text("amount_outstanding") is None
    request = route.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["user-agent"] == "ledgerlink/9.9.9"
    assert form(request) == {"key": KEY, "passkey": PASSKEY, "crmid": "42"}


@respx.mock
async def test_list_page_asks_for_an_end_index_with_a_query_string(
    http: httpx.AsyncClient,
) -> None:
    route = respx.post(f"{API}/get_invoice_list").respond(
        json={"results": [{"crmid": "7", "invoice_no": "INV-9"}], "total": 1}
    )
    found = await client(http).list_page(start=200, size=100, query="invoice_no|=|INV-9")
    assert [f.crm_id for f in found] == ["7"]
    sent = form(route.calls.last.request)
    assert sent["query_string"] == "invoice_no|=|INV-9"
    assert (sent["limit_start"], sent["limit_end"]) == ("200", "300")


@respx.mock
async def test_pages_go_on_while_pages_are_full_and_stop_after_a_short_one(
    http: httpx.AsyncClient,
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        start, end = int(form(request)["limit_start"]), int(form(request)["limit_end"])
        rows = [{"crmid": str(i + 1)} for i in range(start, min(end, 5))]
        return httpx.Response(200, json=rows)

    route = respx.post(f"{API}/get_invoice_list_full").mock(side_effect=answer)
    pages = [
        [r.crm_id for r in page]
        async for page in client(http).pages(None, size=2, method="get_invoice_list_full")
    ]
    assert pages == [["1", "2"], ["3", "4"], ["5"]]
    assert [form(c.request)["limit_start"] for c in route.calls] == ["0", "2", "4"]
    assert "query_string" not in form(route.calls.last.request)


@respx.mock
async def test_path_template_is_a_setting(http: httpx.AsyncClient) -> None:
    route = respx.post(f"{BASE_URL}/custom/api.php/get_invoice").respond(json={"crmid": "1"})
    await client(http, path_template="/custom/api.php/{method}").get_invoice("1")
    assert route.called


@respx.mock
async def test_edit_sends_only_the_fields_given(http: httpx.AsyncClient) -> None:
    route = respx.post(f"{API}/edit_invoice").respond(json={"success": True})
    await client(http).edit_invoice("42", {"invoicestatus": "Part Paid"})
    assert form(route.calls.last.request) == {
        "key": KEY,
        "passkey": PASSKEY,
        "crmid": "42",
        "invoicestatus": "Part Paid",
    }


@pytest.mark.parametrize(
    ("crm_id", "fields"),
    [
        ("42", {"invoicestatus": ""}),
        ("42", {"invoicestatus": "Paid", "amount_outstanding": "  "}),
        ("42", {}),
        ("0", {"invoicestatus": "Paid"}),
        ("", {"invoicestatus": "Paid"}),
    ],
)
@respx.mock
async def test_edit_refuses_empty_fields_and_creating(
    http: httpx.AsyncClient, crm_id: str, fields: dict[str, str]
) -> None:
    route = respx.post(f"{API}/edit_invoice").respond(json={"success": True})
    with pytest.raises(ValueError, match=r"empty|existing"):
        await client(http).edit_invoice(crm_id, fields)
    assert not route.called


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"error": "Unauthorized"}),
        httpx.Response(200, json={"error": "Invalid API key"}),
        httpx.Response(401, text="no"),
        httpx.Response(403, json={"error": "IP address not allowed"}),
        httpx.Response(403, json={"error": "Unauthorized"}),
    ],
)
@respx.mock
async def test_refused_credentials_are_an_auth_error_without_the_secrets(
    http: httpx.AsyncClient, answer: httpx.Response
) -> None:
    respx.post(f"{API}/get_invoice").mock(return_value=answer)
    with pytest.raises(CrmAuthError) as caught:
        await client(http).get_invoice("1")
    message = str(caught.value)
    assert "LEDGERLINK_OPENCRM_KEY" in message
    assert KEY not in message
    assert PASSKEY not in message


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(403, text="<html><h1>403 Forbidden</h1>Request blocked</html>"),
        httpx.Response(403, json={"error": "Request blocked by security rule"}),
        httpx.Response(403),
    ],
)
@respx.mock
async def test_a_403_that_is_not_about_credentials_is_the_firewall(
    http: httpx.AsyncClient, answer: httpx.Response
) -> None:
    respx.post(f"{API}/get_invoice").mock(return_value=answer)
    with pytest.raises(CrmBlocked) as caught:
        await client(http, user_agent="ledgerlink/9.9.9").get_invoice("1")
    message = str(caught.value)
    assert "firewall" in message
    assert "not a credentials error" in message
    assert "'ledgerlink/9.9.9'" in message
    assert "LEDGERLINK_OPENCRM_USER_AGENT" in message
    assert "LEDGERLINK_OPENCRM_KEY" not in message
    assert isinstance(caught.value, CrmUnavailable)


@pytest.mark.parametrize("status", [500, 502, 503])
@respx.mock
async def test_server_errors_are_unavailable(http: httpx.AsyncClient, status: int) -> None:
    respx.post(f"{API}/get_invoice").respond(status)
    with pytest.raises(CrmUnavailable, match=f"HTTP {status}") as caught:
        await client(http).get_invoice("1")
    assert caught.value.retry_after is None


@respx.mock
async def test_429_carries_retry_after(http: httpx.AsyncClient) -> None:
    respx.post(f"{API}/get_invoice").respond(429, headers={"Retry-After": "17"})
    with pytest.raises(CrmUnavailable) as caught:
        await client(http).get_invoice("1")
    assert caught.value.retry_after == 17.0


def test_retry_after_as_http_date_and_garbage() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@respx.mock
async def test_network_errors_and_timeouts_are_unavailable(http: httpx.AsyncClient) -> None:
    respx.post(f"{API}/get_invoice").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(CrmUnavailable, match="ConnectError"):
        await client(http).get_invoice("1")
    respx.post(f"{API}/get_invoice").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(CrmUnavailable, match="no answer within 3s"):
        await client(http).get_invoice("1")


@respx.mock
async def test_an_html_page_is_unavailable_not_a_crash(http: httpx.AsyncClient) -> None:
    respx.post(f"{API}/get_invoice").respond(
        200, text="<html>maintenance</html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(CrmUnavailable, match="not JSON"):
        await client(http).get_invoice("1")


@respx.mock
async def test_other_errors_are_rejections(http: httpx.AsyncClient) -> None:
    respx.post(f"{API}/get_invoice").respond(json={"error": "Record not found"})
    with pytest.raises(CrmRejected, match="Record not found"):
        await client(http).get_invoice("1")
    respx.post(f"{API}/edit_invoice").respond(404)
    with pytest.raises(CrmRejected, match="HTTP 404"):
        await client(http).edit_invoice("1", {"invoicestatus": "Paid"})
    respx.post(f"{API}/edit_invoice").respond(json={"success": False, "message": "locked"})
    with pytest.raises(CrmRejected, match="locked"):
        await client(http).edit_invoice("1", {"invoicestatus": "Paid"})


@respx.mock
async def test_get_invoice_without_a_record_is_not_found(http: httpx.AsyncClient) -> None:
    respx.post(f"{API}/get_invoice").respond(json=[])
    with pytest.raises(CrmInvoiceNotFound):
        await client(http).get_invoice("1")


@pytest.mark.parametrize(
    ("body", "ids"),
    [
        ([{"crmid": "1"}, {"crmid": "2"}], ["1", "2"]),
        ({"results": [{"crmid": "1"}]}, ["1"]),
        ({"data": {"crmid": "3", "invoicestatus": "Paid"}}, ["3"]),
        ({"records": {"5": {"id": "5"}, "6": {"id": "6"}}}, ["5", "6"]),
        ({"crmid": "8", "items": [{"crmid": "line-1"}]}, ["8"]),
        ({"invoiceid": "9", "invoicestatus": "Paid"}, ["9"]),
        ({"results": []}, []),
        ({}, []),
        ("text", []),
    ],
)
def test_answers_of_undocumented_shape_are_read_defensively(body: Any, ids: list[str]) -> None:
    from service.crm.client import record_id

    assert [record_id(r) for r in records_in(body)] == ids
