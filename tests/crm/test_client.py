"""The OpenCRM client on its own: the wire format and the error mapping (respx)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
from pydantic import SecretStr

from service.crm.errors import (
    CrmAuthError,
    CrmBlocked,
    CrmError,
    CrmInvoiceNotFound,
    CrmRejected,
    CrmUnavailable,
)
from service.crm.opencrm.client import OpenCrmClient, records_in, retry_after_seconds
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
    from service.crm.opencrm.client import record_id

    assert [record_id(r) for r in records_in(body)] == ids


# A CRM that misbehaves: paging ignored, an endless answer, a trickle ---------------------------


@respx.mock
async def test_a_crm_answering_the_same_page_again_stops_the_paging_with_an_error(
    http: httpx.AsyncClient,
) -> None:
    """Issue 24, item 3: the same first page whatever `limit_start` says paged for ever."""
    same = [{"crmid": str(i), "invoice_no": f"INV-{i}"} for i in range(1, 101)]

    def answer(request: httpx.Request) -> httpx.Response:
        if len(route.calls) > 20:
            raise AssertionError("still paging after 20 identical pages")
        return httpx.Response(200, json={"results": same})

    route = respx.post(f"{API}/get_invoice_list").mock(side_effect=answer)
    with pytest.raises(CrmError, match="ignores paging"):
        async for _ in client(http).pages("invoice_no|=|INV-500", size=100):
            pass
    assert len(route.calls) == 2


@respx.mock
async def test_pages_past_the_cap_end_the_walk_with_an_error(http: httpx.AsyncClient) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        start = int(form(request)["limit_start"])
        return httpx.Response(200, json=[{"crmid": str(start + 1)}, {"crmid": str(start + 2)}])

    route = respx.post(f"{API}/get_invoice_list").mock(side_effect=answer)
    with pytest.raises(CrmError, match="more than 5 pages"):
        async for _ in client(http, max_pages=5).pages(None, size=2):
            pass
    assert len(route.calls) == 5


@respx.mock
async def test_an_answer_past_the_size_cap_is_refused_without_being_read_whole(
    http: httpx.AsyncClient,
) -> None:
    """Issue 24, item 6: a 300 MB list page took the process to 2.8 GB."""
    chunk = b" " * 65536
    sent: list[int] = []

    async def body() -> Any:
        yield b'{"results": [], "padding": "'
        for _ in range(20 * 16):  # 20 MiB, never announced in a Content-Length
            sent.append(len(chunk))
            yield chunk
        yield b'"}'

    respx.post(f"{API}/get_invoice_list").mock(
        return_value=httpx.Response(
            200, headers={"content-type": "application/json"}, stream=_AsyncStream(body())
        )
    )
    with pytest.raises(CrmError, match="larger than 8388608 bytes"):
        await client(http).list_page(start=0, size=100)
    assert sum(sent) <= 8 * 1024 * 1024 + len(chunk)


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> Any:
        async for chunk in self._chunks:
            yield chunk


async def test_an_answer_trickling_in_fails_at_one_deadline_for_the_whole_call(
    http: httpx.AsyncClient,
) -> None:
    """Issue 24, item 7: at 1 byte/s every read is quick, so only a deadline over the whole
    call (connect and the whole body) ends it."""
    body = b'{"crmid": "1", "invoicestatus": "Paid", "padding": "' + b"x" * 40 + b'"}'

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
            )
            for byte in body:  # about 10 s in all, each byte well within the read timeout
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        slow = client(http, base_url=f"http://127.0.0.1:{port}", timeout=1.0)
        with pytest.raises(CrmUnavailable, match="no answer within 1s"):
            await slow.get_invoice("1")
