"""HEAD answers like GET without a body, on every GET route (RFC 9110 section 9.3.2; load
balancers probe with it). Issue 24 item 16: it was 405 on every FastAPI route."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.support import eventually
from tests.support.factories import add_invoice
from tests.support.keys import READ_KEY, WRITE_KEY, auth
from tests.support.processes import FAULT_KEY, LedgerlinkProcess

# Headers that differ from one request to the next whatever the method.
_PER_REQUEST = {"x-request-id"}


def _same_headers(get: httpx.Response, head: httpx.Response) -> None:
    def stable(response: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k not in _PER_REQUEST}

    assert stable(head) == stable(get)


async def _head_like_get(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    get = await client.get(path, headers=headers)
    head = await client.head(path, headers=headers)
    assert head.status_code == get.status_code, head.text
    assert head.content == b""
    assert get.content != b""
    _same_headers(get, head)
    assert int(head.headers["content-length"]) == len(get.content)
    return head


async def test_healthz(client: httpx.AsyncClient) -> None:
    head = await _head_like_get(client, "/healthz")
    assert head.status_code == 200


async def test_readyz(client: httpx.AsyncClient) -> None:
    head = await _head_like_get(client, "/readyz")
    assert head.status_code == 200


async def test_metrics(client: httpx.AsyncClient) -> None:
    # The exposition changes with every request counted, so only its shape is compared.
    get = await client.get("/metrics")
    head = await client.head("/metrics")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == get.headers["content-type"]
    assert int(head.headers["content-length"]) > 0
    text = (await client.get("/metrics")).text
    # Counted as what it was, under its route.
    assert 'ledgerlink_http_requests_total{method="HEAD",route="/metrics",status="200"}' in text


async def test_an_authenticated_api_read(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await add_invoice(engine, "A-1")
    await _head_like_get(client, "/v1/invoices", auth(READ_KEY))
    await _head_like_get(client, "/v1/invoices/A-1", auth(READ_KEY))
    # The same checks as GET: no key is 401, an unknown invoice 404.
    assert (await client.head("/v1/invoices")).status_code == 401
    assert (await client.head("/v1/invoices/NOPE", headers=auth(READ_KEY))).status_code == 404


async def test_a_csv_download(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await add_invoice(engine, "A-1")
    await add_invoice(engine, "A-2")
    head = await _head_like_get(client, "/v1/invoices?format=csv&limit=1", auth(READ_KEY))
    assert head.headers["content-type"].startswith("text/csv")
    assert 'rel="next"' in head.headers["link"]
    await _head_like_get(client, "/v1/reports/bad-debts?format=csv", auth(READ_KEY))


async def test_the_docs(client: httpx.AsyncClient) -> None:
    await _head_like_get(client, "/docs")
    await _head_like_get(client, "/openapi.json")


@pytest.mark.parametrize(
    "path", ["/v1/sync/trigger", "/v1/picklists/invoice-status/repair", "/v1/crm/outbox/1/retry"]
)
async def test_head_on_a_route_without_get_is_still_405(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.head(path, headers=auth(WRITE_KEY))
    assert response.status_code == 405
    assert response.content == b""
    assert "HEAD" not in response.headers["allow"]


async def test_an_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    response = await client.head("/nowhere")
    assert (response.status_code, response.content) == (404, b"")


def _over_http(base_url: str, paths: tuple[str, ...], key: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        for path in paths:
            head = http.head(path)
            assert (head.status_code, head.content) == (200, b""), (path, head.text)
            assert int(head.headers["content-length"]) > 0, path
            # The connection (kept alive) carries the next request: nothing of a body was left
            # on it, and the server's framing agreed with the Content-Length sent.
            assert http.get(path).status_code == 200, path


async def test_over_a_real_server(database_url: str) -> None:
    """uvicorn, not the ASGI test transport: HEAD through the server that runs in production,
    for the API process and the worker's own /healthz and /metrics."""
    with LedgerlinkProcess(database_url, run_worker="false") as service:
        await asyncio.to_thread(
            _over_http,
            service.base_url,
            ("/healthz", "/readyz", "/metrics", "/v1/invoices"),
            FAULT_KEY,
        )
    worker = LedgerlinkProcess(database_url, command="worker")
    worker.start()
    try:
        await eventually(
            lambda: _answers(f"{worker.metrics_url}/healthz"), within=30, what="worker /healthz"
        )
        await asyncio.to_thread(_over_http, worker.metrics_url, ("/healthz", "/metrics"))
    finally:
        await asyncio.to_thread(worker.stop)


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(url)).status_code == 200
    except httpx.TransportError:
        return False
