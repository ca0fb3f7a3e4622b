"""Request bodies in flight: a budget for all of them together, no body read before a key is
shown, and a client that hangs up mid-upload recorded as its own doing (499), not our 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.metrics import HTTP_REQUESTS
from tests.support.factories import WEBHOOK
from tests.support.keys import WRITE_KEY
from tests.support.settings import make_settings
from tests.support.webhooks import signed_request

MIB = 1024 * 1024


@pytest.fixture
async def budget_app(database_url: str, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, max_body_bytes=MIB, max_inflight_body_bytes=MIB + MIB // 2
    )
    app = create_app(settings)
    async with LifespanManager(app):
        yield app


class Upload:
    """One request driven by hand at the ASGI level: the test decides when each chunk comes."""

    def __init__(self, app: FastAPI, method: str, path: str, headers: dict[str, str]) -> None:
        self.chunks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.reads = 0
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        self.reads += 1
        return await self.chunks.get()

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    def send(self, body: bytes, *, more: bool) -> None:
        self.chunks.put_nowait({"type": "http.request", "body": body, "more_body": more})

    def hang_up(self) -> None:
        self.chunks.put_nowait({"type": "http.disconnect"})

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    def header(self, name: bytes) -> bytes | None:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"]).get(name)


def _webhook_headers(length: int) -> dict[str, str]:
    _, headers = signed_request(b"{}")
    return {**headers, "content-length": str(length)}


async def test_bodies_past_the_budget_get_503_with_retry_after(budget_app: FastAPI) -> None:
    first = Upload(budget_app, "POST", WEBHOOK, _webhook_headers(MIB))
    first.send(b"x" * 1000, more=True)
    await asyncio.sleep(0.05)
    # The first holds a whole MiB of the 1.5: a second MiB does not fit, whoever sends it.
    second = Upload(budget_app, "POST", WEBHOOK, _webhook_headers(MIB))
    second.send(b"x" * 1000, more=True)
    await asyncio.wait_for(second.task, 5)
    assert second.status == 503
    assert second.header(b"retry-after") == b"2"
    first.send(b"x" * (MIB - 1000), more=False)
    await asyncio.wait_for(first.task, 5)
    assert first.status == 401  # a well-formed signature over other bytes
    # Given back: the next one is read again.
    third = Upload(budget_app, "POST", WEBHOOK, _webhook_headers(10))
    third.send(b"x" * 10, more=False)
    await asyncio.wait_for(third.task, 5)
    assert third.status == 401


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-key", f"Basic {WRITE_KEY}"],
    ids=["none", "unknown", "basic"],
)
async def test_a_rest_body_is_not_read_before_a_key_is_shown(
    budget_app: FastAPI, authorization: str | None
) -> None:
    headers = {"content-type": "application/json", "content-length": str(MIB)}
    if authorization:
        headers["authorization"] = authorization
    upload = Upload(budget_app, "PATCH", "/v1/invoices/INV-1", headers)
    await asyncio.wait_for(upload.task, 5)
    assert upload.status == 401
    assert upload.reads == 0
    assert upload.header(b"connection") == b"close"


async def test_with_a_key_the_rest_body_is_read(budget_app: FastAPI) -> None:
    body = b'{"status": "Paid"}'
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "authorization": f"Bearer {WRITE_KEY}",
    }
    upload = Upload(budget_app, "PATCH", "/v1/invoices/INV-404", headers)
    upload.send(body, more=False)
    await asyncio.wait_for(upload.task, 5)
    assert upload.status == 404
    assert upload.reads >= 1


def _count(status: str) -> float:
    value = HTTP_REQUESTS.labels(WEBHOOK, "POST", status)._value.get()
    return float(value)


async def test_a_client_hanging_up_mid_upload_is_a_499_logged_once_without_traceback(
    budget_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    before_499, before_500 = _count("499"), _count("500")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        upload = Upload(budget_app, "POST", WEBHOOK, _webhook_headers(100_000))
        upload.send(b"x" * 1000, more=True)
        upload.hang_up()
        await asyncio.wait_for(upload.task, 5)
    assert (_count("499") - before_499, _count("500") - before_500) == (1, 0)
    records = [r for r in caplog.records if r.name.startswith("service")]
    assert not [r for r in records if r.levelno >= logging.WARNING], records
    assert not [r for r in records if r.exc_info or "Traceback" in r.getMessage()]
    assert sum("http.client_disconnected" in r.getMessage() for r in records) == 1
