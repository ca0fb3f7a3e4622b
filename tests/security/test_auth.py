"""Every endpoint's scope, from one table; keys compared in constant time.

The table is checked against the app's own routes: an endpoint added without a row here
fails the first test.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth import find_key
from service.ingest import signature
from service.ingest.signature import SignedHeaders, Verifier
from service.main import create_app
from service.settings import Settings
from tests.support.factories import WEBHOOK, si
from tests.support.keys import ADMIN_KEY, READ_KEY, WRITE_KEY, auth
from tests.support.settings import make_settings
from tests.support.webhooks import OLD_SECRET, TEST_SECRET, signed_request

JOB = "00000000-0000-4000-8000-000000000001"
RUN = "00000000-0000-4000-8000-000000000002"

# (method, route template) -> (scope, a concrete path, a JSON body a key with the scope may
# send). "public": no key needed; "signature": the webhook, signed instead of a key.
ENDPOINTS: dict[tuple[str, str], tuple[str, str, Any]] = {
    ("GET", "/healthz"): ("public", "/healthz", None),
    ("GET", "/readyz"): ("public", "/readyz", None),
    ("GET", "/metrics"): ("public", "/metrics", None),
    ("POST", WEBHOOK): ("signature", WEBHOOK, None),
    ("POST", "/v1/sync/trigger"): ("write", "/v1/sync/trigger", {"scope": "dirty"}),
    ("GET", "/v1/sync/runs/{run_id}"): ("read", f"/v1/sync/runs/{RUN}", None),
    ("GET", "/v1/reconciliation/report"): ("read", "/v1/reconciliation/report", None),
    ("GET", "/v1/invoices"): ("read", "/v1/invoices", None),
    ("GET", "/v1/reports/bad-debts"): ("read", "/v1/reports/bad-debts", None),
    ("POST", "/v1/invoices/bulk-status"): (
        "write",
        "/v1/invoices/bulk-status",
        {"status": "Paid", "invoice_numbers": ["NOPE-1"], "dry_run": True},
    ),
    ("GET", "/v1/invoices/{invoice_number}"): ("read", "/v1/invoices/NOPE-1", None),
    ("PATCH", "/v1/invoices/{invoice_number}"): (
        "write",
        "/v1/invoices/NOPE-1",
        {"status": "Paid", "reason": "auth table"},
    ),
    ("GET", "/v1/jobs/{job_id}"): ("read", f"/v1/jobs/{JOB}", None),
    ("GET", "/v1/picklists/invoice-status"): ("read", "/v1/picklists/invoice-status", None),
    ("PUT", "/v1/picklists/invoice-status"): (
        "admin",
        "/v1/picklists/invoice-status",
        {
            "values": [
                "Unpaid",
                "Part Paid",
                "Paid",
                "Written Off",
                "Paid/Written Off",
                "Sent",
                "Cancelled",
            ]
        },
    ),
    ("GET", "/v1/picklists/invoice-status/verification"): (
        "read",
        "/v1/picklists/invoice-status/verification",
        None,
    ),
    ("POST", "/v1/picklists/invoice-status/repair"): (
        "admin",
        "/v1/picklists/invoice-status/repair",
        None,
    ),
    ("GET", "/v1/crm/outbox"): ("read", "/v1/crm/outbox", None),
    ("POST", "/v1/crm/outbox/{message_id}/retry"): ("admin", "/v1/crm/outbox/1/retry", None),
}
KEYS = {"read": READ_KEY, "write": WRITE_KEY, "admin": ADMIN_KEY}
RANK = {"read": 0, "write": 1, "admin": 2}
PROTECTED = [
    pytest.param(route, spec, id=f"{route[0]} {route[1]}")
    for route, spec in ENDPOINTS.items()
    if spec[0] in RANK
]


async def _call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


def test_the_table_covers_every_endpoint() -> None:
    app = create_app(make_settings("postgresql://unused@localhost/unused"))
    operations = {
        (method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item
    }
    assert operations == set(ENDPOINTS)
    # And the OpenAPI document says the same as the table about who needs a key.
    for (method, path), (scope, _, _) in ENDPOINTS.items():
        secured = bool(app.openapi()["paths"][path][method.lower()].get("security"))
        assert secured == (scope in RANK), (method, path)


@pytest.mark.parametrize(("route", "spec"), PROTECTED)
async def test_each_key_reaches_exactly_what_its_scope_allows(
    client: httpx.AsyncClient, route: tuple[str, str], spec: tuple[str, str, Any]
) -> None:
    method = route[0]
    scope, path, body = spec
    for name, key in KEYS.items():
        response = await _call(client, method, path, body, auth(key))
        if RANK[name] >= RANK[scope]:
            assert response.status_code not in (401, 403), (name, response.text)
        else:
            assert response.status_code == 403, (name, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert f"'{scope}' scope" in response.json()["detail"]


@pytest.mark.parametrize(("route", "spec"), PROTECTED)
async def test_no_key_or_a_wrong_one_is_401(
    client: httpx.AsyncClient, route: tuple[str, str], spec: tuple[str, str, Any]
) -> None:
    method = route[0]
    _, path, body = spec
    near_misses = [
        ADMIN_KEY[:-1],  # a prefix
        ADMIN_KEY + "0",  # an extension
        ADMIN_KEY.upper(),
        ADMIN_KEY.replace("-", "_"),
        "",
        "x" * 10_000,
    ]
    attempts: list[dict[str, str]] = [{}]
    attempts += [{"Authorization": f"Bearer {key}"} for key in near_misses]
    attempts += [
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": ADMIN_KEY},
        {"X-API-Key": ADMIN_KEY},
        {"Authorization": f"Bearer {READ_KEY}x", "X-Forwarded-User": "admin"},
    ]
    for headers in attempts:
        response = await _call(client, method, path, body, headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["status"] == 401


async def test_the_webhook_takes_a_signature_not_a_key(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    batch = {"postings": [si(1, "INV-1")]}
    body, headers = signed_request(batch)
    unsigned = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    assert (
        await client.post(WEBHOOK, content=body, headers=unsigned | auth(ADMIN_KEY))
    ).status_code == 401
    # Signed with a secret that is not configured.
    body, wrong = signed_request(batch, secret=OLD_SECRET)
    assert (await client.post(WEBHOOK, content=body, headers=wrong)).status_code == 401
    # The right signature over other bytes.
    body, headers = signed_request(batch)
    tampered = body.replace(b"INV-1", b"INV-2")
    assert (await client.post(WEBHOOK, content=tampered, headers=headers)).status_code == 401
    assert (await client.post(WEBHOOK, content=body, headers=headers)).status_code == 202


@pytest.fixture
async def keyless_client(
    database_url: str, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, api_keys=None)
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


@pytest.mark.parametrize(("route", "spec"), PROTECTED)
async def test_with_no_keys_configured_everything_protected_is_401(
    keyless_client: httpx.AsyncClient, route: tuple[str, str], spec: tuple[str, str, Any]
) -> None:
    _, path, body = spec
    response = await _call(keyless_client, route[0], path, body, auth(ADMIN_KEY))
    assert response.status_code == 401
    assert "LEDGERLINK_API_KEYS" in response.json()["detail"]


_compare_digest = hmac.compare_digest


class CountingCompare:
    """hmac.compare_digest, counting its calls (patched on the hmac module itself)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls += 1
        return _compare_digest(a, b)


def _settings_with_keys(count: int) -> tuple[Settings, list[str]]:
    keys = [f"constant-time-key-{i:04d}-xxxxxxxx" for i in range(count)]
    settings = make_settings(
        "postgresql://unused@localhost/unused",
        api_keys=json.dumps({k: ["read"] for k in keys}),
    )
    return settings, keys


@pytest.mark.parametrize(
    "which",
    [lambda keys: keys[0], lambda keys: keys[-1], lambda keys: "not-a-key-at-all-000000"],
    ids=["first key", "last key", "no key"],
)
def test_api_keys_are_all_compared_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch, which: Callable[[list[str]], str]
) -> None:
    """The first key, the last, or none: the same number of constant-time comparisons, so the
    time taken says nothing about which key (or how much of one) matched."""
    settings, keys = _settings_with_keys(7)
    counter = CountingCompare()
    monkeypatch.setattr("service.auth.hmac.compare_digest", counter)
    presented = which(keys)
    found = find_key(settings, presented)
    assert counter.calls == len(keys)
    assert (found is not None) == (presented in keys)


@pytest.mark.parametrize("matching", [0, 1, None], ids=["current", "old", "none"])
def test_webhook_signatures_are_all_compared_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch, matching: int | None
) -> None:
    secrets = [TEST_SECRET, OLD_SECRET]
    configured = make_settings("postgresql://u@h/d", webhook_secrets=",".join(secrets))
    verifier = Verifier(configured.webhook_secrets, 300)
    body = b'{"postings": []}'
    signatures = []
    for index, secret in enumerate(secrets):
        _, signed = signed_request(body, secret=secret, webhook_id="msg_1", timestamp=1000)
        if index == matching:
            signatures.append(signed["webhook-signature"])
    signatures.append("v1,AAAA")  # never matches
    parsed = signature._v1_signatures(" ".join(signatures))
    counter = CountingCompare()
    monkeypatch.setattr("service.ingest.signature.hmac.compare_digest", counter)
    headers = SignedHeaders("msg_1", 1000, parsed)
    if matching is None:
        with pytest.raises(signature.SignatureRejected):
            verifier.verify(headers, body)
    else:
        verifier.verify(headers, body)
    assert counter.calls == len(secrets) * len(parsed)
