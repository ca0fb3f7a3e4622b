"""Limits: body size on every endpoint, batch size, page sizes, request (body) timeouts, and
slow clients on a real socket that do not hold up anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.reconcile.tasks import reconcile_all_dirty
from service.settings import Settings
from tests.support.factories import WEBHOOK, deliver, si
from tests.support.keys import ADMIN_KEY, auth
from tests.support.processes import free_port
from tests.support.queries import scalar, table_checksums
from tests.support.settings import make_settings
from tests.support.webhooks import signed_request

SMALL_BODY = 4096
TIMEOUT = 0.6

# Every operation that takes a body, with a small valid one.
BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/sync/trigger", {"scope": "dirty"}),
    ("POST", "/v1/invoices/bulk-status", {"status": "Paid", "invoice_numbers": ["X"]}),
    ("PATCH", "/v1/invoices/X-1", {"status": "Paid"}),
    ("PUT", "/v1/picklists/invoice-status", {"values": ["Unpaid"]}),
]


@pytest.fixture
async def small_app(database_url: str, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, max_body_bytes=SMALL_BODY, request_timeout_seconds=TIMEOUT
    )
    app = create_app(settings)
    async with LifespanManager(app):
        yield app


@pytest.fixture
async def small(small_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


def _oversized(body: dict[str, Any]) -> bytes:
    padded = dict(body, padding="x" * (SMALL_BODY + 1))
    return json.dumps(padded).encode()


@pytest.mark.parametrize(("method", "path", "body"), BODIES, ids=[b[1] for b in BODIES])
async def test_every_body_is_limited_declared_or_streamed(
    small: httpx.AsyncClient, engine: AsyncEngine, method: str, path: str, body: dict[str, Any]
) -> None:
    before = await table_checksums(engine)
    content = _oversized(body)
    declared = await small.request(method, path, content=content, headers=auth(ADMIN_KEY))
    assert declared.status_code == 413, declared.text
    assert "LEDGERLINK_MAX_BODY_BYTES" in declared.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold while the body streams in.
        for start in range(0, len(content), 512):
            yield content[start : start + 512]

    streamed = await small.request(method, path, content=chunks(), headers=auth(ADMIN_KEY))
    assert streamed.status_code == 413, streamed.text
    assert await table_checksums(engine) == before


async def test_the_webhook_body_is_limited_declared_or_streamed(
    small: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body, headers = signed_request({"postings": [si(1, "INV-1", details="x" * 50)] * 40})
    assert len(body) > SMALL_BODY
    before = await table_checksums(engine)
    assert (await small.post(WEBHOOK, content=body, headers=headers)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    streamed = await small.post(WEBHOOK, content=chunks(), headers=headers)
    assert streamed.status_code == 413
    assert await table_checksums(engine) == before


async def test_ten_megabyte_strings(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """10 MB inside a field is read (the limit is 10 MiB) and refused by validation; a body
    over the limit is refused before it is read."""
    before = await table_checksums(engine)
    body, headers = signed_request({"postings": [si(1, "INV-1", details="é" * 5_000_000)]})
    assert len(body) < 10 * 1024 * 1024
    response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "postings[0].details"
    assert len(response.content) < 10_000  # the offending value is not echoed back
    body, headers = signed_request({"postings": [si(1, "INV-1", details="x" * 11_000_000)]})
    assert (await client.post(WEBHOOK, content=body, headers=headers)).status_code == 413
    big_picklist = {"values": ["x" * 11_000_000]}
    response = await client.put(
        "/v1/picklists/invoice-status", json=big_picklist, headers=auth(ADMIN_KEY)
    )
    assert response.status_code == 413
    assert await table_checksums(engine) == before


async def test_a_batch_holds_at_most_5000_postings(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    postings = [si(n, f"INV-{n}") for n in range(1, 5002)]
    too_many = await deliver(client, *postings)
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "postings"
    assert await scalar(engine, "SELECT count(*) FROM postings") == 0
    at_limit = await deliver(client, *postings[:5000])
    assert at_limit.status_code == 202
    assert await scalar(engine, "SELECT count(*) FROM postings") == 5000


# (path, limit parameter, its maximum)
PAGES = [
    ("/v1/invoices", "limit", 500),
    ("/v1/reconciliation/report", "limit", 5000),
    ("/v1/crm/outbox", "limit", 1000),
]


@pytest.mark.parametrize(("path", "param", "maximum"), PAGES, ids=[p[0] for p in PAGES])
async def test_page_sizes_are_bounded(
    client: httpx.AsyncClient, engine: AsyncEngine, path: str, param: str, maximum: int
) -> None:
    for bad in (0, -1, maximum + 1, 10**12, "1e3", "ten"):
        response = await client.get(path, params={param: bad}, headers=auth(ADMIN_KEY))
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["errors"][0]["loc"][-1] == param
    ok = await client.get(path, params={param: maximum}, headers=auth(ADMIN_KEY))
    assert ok.status_code == 200


async def test_paging_returns_every_row_once_and_no_page_is_larger_than_asked(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await deliver(client, *[si(n, f"PG-{n:03d}") for n in range(1, 48)])
    await reconcile_all_dirty(engine, settings)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/invoices", params=params, headers=auth(ADMIN_KEY))).json()
        assert len(page["items"]) <= 10
        seen += [item["invoice_number"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"PG-{n:03d}" for n in range(1, 48)]


async def test_a_body_that_trickles_past_the_timeout_is_408(
    small: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Each piece arrives well within the timeout; the whole body does not: 408 all the same
    (a per-read timeout would let a client hold the request for ever, a byte at a time)."""
    before = await table_checksums(engine)
    body, headers = signed_request({"postings": [si(1, "INV-1")]})
    pieces = [body[i : i + 16] for i in range(0, len(body), 16)]
    assert len(pieces) * TIMEOUT / 4 > TIMEOUT * 2

    async def trickle() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(TIMEOUT / 4)
            yield piece

    response = await small.post(WEBHOOK, content=trickle(), headers=headers)
    assert response.status_code == 408
    assert "did not arrive" in response.json()["detail"]

    async def trickle_json() -> AsyncIterator[bytes]:
        for piece in (b'{"scope": ', b'"dirty"', b"}"):
            await asyncio.sleep(TIMEOUT * 0.7)
            yield piece

    response = await small.post("/v1/sync/trigger", content=trickle_json(), headers=auth(ADMIN_KEY))
    assert response.status_code == 408
    assert await table_checksums(engine) == before


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[int]:
    """`app` behind a real uvicorn on a local port, in this event loop."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def test_slow_clients_do_not_hold_up_the_others(small_app: FastAPI) -> None:
    """Slowloris on a real socket: 40 connections trickle their headers, 20 their bodies.
    Meanwhile every ordinary request is answered, and every trickled body gets its 408 and
    its connection closed."""
    async with served(small_app) as port:
        header_tricklers = []
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/invoices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            header_tricklers.append((reader, writer))
        body_tricklers = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /v1/sync/trigger HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {ADMIN_KEY}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            body_tricklers.append((reader, writer))

        async def keep_trickling() -> None:
            while True:
                await asyncio.sleep(TIMEOUT / 3)
                for _, writer in header_tricklers + body_tricklers:
                    with contextlib.suppress(ConnectionError):
                        writer.write(b" ")

        trickling = asyncio.create_task(keep_trickling())
        # Each 408 is read as soon as it comes: once the server has closed, the next trickled
        # byte fails (EPIPE) and a reader not yet waiting would lose what was buffered.
        replies = [
            asyncio.create_task(asyncio.wait_for(reader.read(65536), timeout=TIMEOUT * 10))
            for reader, _ in body_tricklers
        ]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                answers = await asyncio.gather(
                    *[http.get("/healthz", timeout=10) for _ in range(20)],
                    *[
                        http.get("/v1/invoices", headers=auth(ADMIN_KEY), timeout=10)
                        for _ in range(20)
                    ],
                )
            assert [a.status_code for a in answers] == [200] * 40
            for reply in replies:
                # The 408, then the end of the connection, while the client is still sending.
                answer = await reply
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
                assert b"connection: close" in answer.lower()
        finally:
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickling
            for reply in replies:
                reply.cancel()
                with contextlib.suppress(BaseException):
                    await reply
            for _, writer in header_tricklers + body_tricklers:
                writer.close()
