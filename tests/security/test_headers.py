"""Security headers on every kind of response; /docs and the schema can be switched off."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.settings import load_settings
from tests.support.factories import deliver, si
from tests.support.keys import ADMIN_KEY, READ_KEY, auth
from tests.support.settings import make_settings

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def assert_secure(response: httpx.Response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (name, response.request.url)
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "default-src 'self'" in policy
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", response.headers["x-request-id"])


@pytest.fixture
async def unreachable_db(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a database that does not answer: every data endpoint is a 503."""
    settings = make_settings("postgresql://nobody@127.0.0.1:9/nothing")
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_every_kind_of_response_carries_the_headers(
    client: httpx.AsyncClient, unreachable_db: httpx.AsyncClient
) -> None:
    body = {"status": "Paid", "invoice_numbers": ["X"]}
    responses = {
        200: await client.get("/v1/invoices", headers=auth(READ_KEY)),
        202: await deliver(client, si(1, "INV-1")),
        "probe": await client.get("/healthz"),
        "metrics": await client.get("/metrics"),
        "docs": await client.get("/docs"),
        "schema": await client.get("/openapi.json"),
        400: await client.put(
            "/v1/picklists/invoice-status",
            content=b"\x80\xff\xff",
            headers=auth(ADMIN_KEY) | {"content-type": "application/json"},
        ),
        401: await client.get("/v1/invoices"),
        403: await client.post("/v1/invoices/bulk-status", json=body, headers=auth(READ_KEY)),
        404: await client.get("/no/such/page"),
        405: await client.delete("/v1/invoices"),
        413: await client.put(
            "/v1/picklists/invoice-status",
            content=b"x" * (11 * 1024 * 1024),
            headers=auth(ADMIN_KEY),
        ),
        422: await client.get("/v1/invoices?limit=0", headers=auth(READ_KEY)),
        503: await unreachable_db.get("/v1/invoices", headers=auth(READ_KEY)),
        "not ready": await unreachable_db.get("/readyz"),
    }
    for expected, response in responses.items():
        if isinstance(expected, int):
            assert response.status_code == expected, (expected, response.text[:200])
        assert_secure(response)
    assert responses[503].headers["retry-after"].isdigit()
    assert responses["not ready"].status_code == 503


async def test_a_request_id_is_echoed_only_when_it_is_safe(client: httpx.AsyncClient) -> None:
    safe = await client.get("/healthz", headers={"X-Request-ID": "abc-123.def:4"})
    assert safe.headers["x-request-id"] == "abc-123.def:4"
    for hostile in ("<script>alert(1)</script>", "a" * 500, "id with spaces", "é"):
        response = await client.get("/healthz", headers=[(b"x-request-id", hostile.encode())])
        assert response.headers["x-request-id"] != hostile
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_the_docs_use_no_third_party_assets(client: httpx.AsyncClient) -> None:
    """The page works under the CSP ('self' only) because its assets are served locally."""
    page = await client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert assets
    assert all(url.startswith("/") for url in assets), assets


@pytest.fixture
async def production(database_url: str, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, docs_enabled=False)
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_docs_and_schema_can_be_switched_off(production: httpx.AsyncClient) -> None:
    for path in ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"):
        response = await production.get(path)
        assert response.status_code == 404, path
        assert_secure(response)
    # The API itself is unaffected.
    assert (await production.get("/v1/invoices", headers=auth(READ_KEY))).status_code == 200


def test_the_docs_switch_is_an_environment_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERLINK_DOCS_ENABLED", "false")
    assert load_settings().docs_enabled is False
    monkeypatch.setenv("LEDGERLINK_DOCS_ENABLED", "true")
    assert load_settings().docs_enabled is True
