"""Secrets never appear in logs, errors, /metrics, readiness, the schema or the database.

The app runs with distinctive secrets (API keys, webhook secret, OpenCRM key and passkey, a
database password), is exercised on every path that reports something (bad keys, bad
signatures, validation errors, a CRM that refuses and echoes our credentials back, a CRM that
is down, a database that is unreachable), and everything it said is searched for them.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.crm import tasks as crm_tasks
from service.deps import runtime_of
from service.main import create_app
from service.reconcile.tasks import reconcile_all_dirty
from service.settings import Settings
from tests.security.support import next_tran
from tests.support.factories import WEBHOOK, settle, si
from tests.support.settings import make_settings
from tests.support.webhooks import signed_request

API_KEY = "sk-SECRET-admin-key-5e1f0c2b9a7d"
READ_ONLY_KEY = "sk-SECRET-read-key-77aa31c90b12"
WEBHOOK_KEY = b"SECRET-webhook-key-material-3f9d"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
CRM_KEY = "crmkey-SECRET-0a1b2c3d4e"
CRM_PASSKEY = "crmpass-SECRET-9f8e7d6c5b"
DB_PASSWORD = "dbpass-SECRET-4b5c6d7e8f"
CRM_URL = "https://crm.example.test"

SECRETS = [
    API_KEY,
    READ_ONLY_KEY,
    WEBHOOK_SECRET,
    WEBHOOK_SECRET.removeprefix("whsec_"),
    WEBHOOK_KEY.decode(),
    CRM_KEY,
    CRM_PASSKEY,
    DB_PASSWORD,
]


def secret_settings(database_url: str, **overrides: Any) -> Settings:
    with_password = make_url(database_url).set(password=DB_PASSWORD)
    values: dict[str, Any] = {
        "api_keys": json.dumps({API_KEY: ["admin"], READ_ONLY_KEY: ["read"]}),
        "webhook_secrets": WEBHOOK_SECRET,
        "crm_mode": "opencrm",
        "opencrm_base_url": CRM_URL,
        "opencrm_key": CRM_KEY,
        "opencrm_passkey": CRM_PASSKEY,
        "crm_retry_base_seconds": 0.01,
        "crm_retry_max_seconds": 0.01,
        "log_level": "DEBUG",
        "log_format": "json",
    }
    values.update(overrides)
    return make_settings(with_password.render_as_string(hide_password=False), **values)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything the service logs, rendered exactly as in production (JSON lines)."""
    root = logging.getLogger()
    level = root.level
    yield io.StringIO()
    root.setLevel(level)


def _attach(buffer: io.StringIO) -> logging.Handler:
    """Attach after create_app (which configures logging) with its formatter."""
    root = logging.getLogger()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    return handler


@pytest.fixture
async def secret_app(
    database_url: str, engine: AsyncEngine, captured_logs: io.StringIO
) -> AsyncIterator[FastAPI]:
    app = create_app(secret_settings(database_url))
    handler = _attach(captured_logs)
    try:
        async with LifespanManager(app):
            yield app
    finally:
        logging.getLogger().removeHandler(handler)


def _said(response: httpx.Response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{response.status_code}\n{headers}\n{response.text}"


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} appears in {where}"
    assert "SECRET" not in text, f"something secret-looking appears in {where}"


async def _crm_pass(app: FastAPI, http: httpx.AsyncClient) -> None:
    runtime = runtime_of(app)
    ctx = WorkerContext(settings=runtime.settings, engine=runtime.engine, http=http)
    await crm_tasks.dispatcher(ctx).run_once()


async def crm_failures(
    app: FastAPI, engine: AsyncEngine, error: str, call: Callable[..., Awaitable[Any]]
) -> None:
    """Three delivery passes against a CRM that answers `error` with 200, then with 500,
    then does not answer at all; readiness read after each."""
    async with httpx.AsyncClient() as http:
        for answer in (
            httpx.Response(200, json={"error": error}),
            httpx.Response(500, json={"error": error}),
            httpx.ConnectError(error),
        ):
            with respx.mock(base_url=CRM_URL, assert_all_called=False) as crm:
                route = crm.post(path__regex=r"/api/rest/.*")
                if isinstance(answer, Exception):
                    route.mock(side_effect=answer)
                else:
                    route.mock(return_value=answer)
                await _crm_pass(app, http)
            await call("GET", "/readyz")
            # Clear the halt, so that the next pass calls the CRM again.
            async with engine.begin() as conn:
                await conn.execute(sa.text("DELETE FROM crm_dispatcher_state"))


async def test_no_secret_is_ever_said(
    secret_app: FastAPI, engine: AsyncEngine, captured_logs: io.StringIO
) -> None:
    said: list[str] = []
    transport = httpx.ASGITransport(app=secret_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = await client.request(method, path, **kwargs)
            said.append(_said(response))
            return response

        admin = {"Authorization": f"Bearer {API_KEY}"}
        # Keys: near misses of the real ones, the wrong scope, no key.
        for wrong in (API_KEY + "x", API_KEY[:-1], READ_ONLY_KEY.upper(), "Basic " + API_KEY):
            header = wrong if wrong.startswith("Basic") else f"Bearer {wrong}"
            response = await call("GET", "/v1/invoices", headers={"Authorization": header})
            assert response.status_code == 401
        response = await call(
            "PUT",
            "/v1/picklists/invoice-status",
            json={"values": ["Unpaid"]},
            headers={"Authorization": f"Bearer {READ_ONLY_KEY}"},
        )
        assert response.status_code == 403
        # The webhook: signed with a near miss of the secret, stale, then properly.
        batch = {"postings": [si(next_tran(), "SEC-1"), si(next_tran(), "SEC-2")]}
        near = "whsec_" + base64.b64encode(WEBHOOK_KEY + b"x").decode()
        body, headers = signed_request(batch, secret=near)
        assert (await call("POST", WEBHOOK, content=body, headers=headers)).status_code == 401
        body, headers = signed_request(batch, secret=WEBHOOK_SECRET, timestamp=1)
        assert (await call("POST", WEBHOOK, content=body, headers=headers)).status_code == 401
        body, headers = signed_request(batch, secret=WEBHOOK_SECRET)
        assert (await call("POST", WEBHOOK, content=body, headers=headers)).status_code == 202
        paid = {
            "postings": [
                settle(next_tran(), "SR", [(batch["postings"][0]["tran_number"], "120.00")])
            ]
        }
        body, headers = signed_request(paid, secret=WEBHOOK_SECRET)
        assert (await call("POST", WEBHOOK, content=body, headers=headers)).status_code == 202
        # Validation errors and a 404 echo input: never a secret.
        invalid = {"postings": [si(1, "SEC-3", details=API_KEY + "\n")]}
        body, headers = signed_request(invalid, secret=WEBHOOK_SECRET)
        assert (await call("POST", WEBHOOK, content=body, headers=headers)).status_code == 422
        await call("GET", "/v1/invoices/NOPE", headers=admin)
        await call("GET", "/v1/invoices?limit=0", headers=admin)
        await reconcile_all_dirty(engine, runtime_of(secret_app).settings)

        # A CRM that refuses our credentials, then one failing with 500s, then one down.
        await crm_failures(secret_app, engine, "Unauthorized", call)
        await call("GET", "/readyz")
        await call("GET", "/v1/crm/outbox", headers=admin)
        await call("GET", "/v1/reconciliation/report", headers=admin)
        await call("GET", "/metrics")
        await call("GET", "/openapi.json")
        assert any("CRM" in text for text in said if text.startswith("503"))

    for index, text in enumerate(said):
        assert_no_secret(text, f"response {index}: {text[:120]}")
    assert_no_secret(captured_logs.getvalue(), "the logs")
    async with engine.connect() as conn:
        stored = await conn.execute(
            sa.text(
                "SELECT coalesce(string_agg(x, E'\\n'), '') FROM ("
                " SELECT last_error AS x FROM outbox"
                " UNION ALL SELECT concat_ws(' ', halted_reason, last_error)"
                "   FROM crm_dispatcher_state"
                " UNION ALL SELECT concat_ws(' ', actor, reason) FROM status_history"
                " UNION ALL SELECT concat_ws(' ', actor, error) FROM sync_runs"
                ") AS t"
            )
        )
        assert_no_secret(stored.scalar_one(), "the database")
    assert "crm" in captured_logs.getvalue().lower()


async def test_a_crm_echoing_our_credentials_does_not_make_us_repeat_them(
    secret_app: FastAPI, engine: AsyncEngine, captured_logs: io.StringIO
) -> None:
    """Some APIs quote the request in their errors. What OpenCRM says is shown to operators
    (readiness, the outbox, logs): our own credentials must not come back that way."""
    said: list[str] = []
    transport = httpx.ASGITransport(app=secret_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = await client.request(method, path, **kwargs)
            said.append(_said(response))
            return response

        body, headers = signed_request(
            {"postings": [si(next_tran(), "SEC-9")]}, secret=WEBHOOK_SECRET
        )
        assert (await call("POST", WEBHOOK, content=body, headers=headers)).status_code == 202
        await reconcile_all_dirty(engine, runtime_of(secret_app).settings)
        echo = f"Unauthorized: key {CRM_KEY} with passkey {CRM_PASSKEY} is not valid"
        await crm_failures(secret_app, engine, echo, call)
        await call("GET", "/v1/crm/outbox", headers={"Authorization": f"Bearer {API_KEY}"})
    for index, text in enumerate(said):
        assert_no_secret(text, f"response {index}: {text[:120]}")
    assert_no_secret(captured_logs.getvalue(), "the logs")
    async with engine.connect() as conn:
        errors = await conn.execute(
            sa.text("SELECT coalesce(string_agg(last_error, E'\\n'), '') FROM outbox")
        )
        assert_no_secret(errors.scalar_one(), "the outbox")


async def test_an_unreachable_database_does_not_reveal_its_password(
    database_url: str, engine: AsyncEngine, captured_logs: io.StringIO
) -> None:
    url = make_url(database_url).set(host="127.0.0.1", port=9, query={})
    app = create_app(secret_settings(url.render_as_string(hide_password=False)))
    handler = _attach(captured_logs)
    try:
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                admin = {"Authorization": f"Bearer {API_KEY}"}
                responses = [
                    await client.get("/readyz"),
                    await client.get("/v1/invoices", headers=admin),
                    await client.get("/metrics"),
                ]
                body, headers = signed_request({"postings": [si(1, "X")]}, secret=WEBHOOK_SECRET)
                responses.append(await client.post(WEBHOOK, content=body, headers=headers))
    finally:
        logging.getLogger().removeHandler(handler)
    assert [r.status_code for r in responses] == [503, 503, 200, 503]
    for response in responses:
        assert_no_secret(_said(response), str(response.request.url))
    assert_no_secret(captured_logs.getvalue(), "the logs")


def test_settings_never_print_their_secrets(database_url: str) -> None:
    settings = secret_settings(database_url)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert_no_secret(text, "the settings")
    assert "**********" in repr(settings)
