from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.keys import READ_KEY, auth
from tests.support.metrics import exported


async def test_healthz_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_ready_when_database_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": "ok", "migrations": "ok"}


async def test_readyz_503_when_migrations_behind(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        head = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0001'"))
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["migrations"] == "behind"
        assert any("migrations not at head" in p for p in response.json()["problems"])
        # What the ReadinessFailing alert reads.
        assert "\nledgerlink_ready 0.0\n" in (await client.get("/metrics")).text
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": head})


async def test_metrics_expose_request_counts_by_route_template(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'ledgerlink_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "process_resident_memory_bytes" in text
    assert "ledgerlink_dirty_invoices" in text
    assert "\nledgerlink_ready 1.0\n" in text
    assert "\nledgerlink_crm_dispatcher_halted 0.0\n" in text
    assert "\nledgerlink_db_pool_max_connections 10.0\n" in text  # pool size 5, overflow 5
    assert 'ledgerlink_db_pool_connections{state="in_use"}' in text


async def test_request_id_is_honoured_and_returned(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32


async def test_hostile_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"


async def test_security_headers_present(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


async def test_docs_served_without_cdn(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text
    asset = await client.get("/static-offline-docs/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.content) > 100_000


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope", headers=auth(READ_KEY))
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_need_no_key(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200


GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()


async def test_operations_guide_lists_exactly_the_metrics_exported(
    client: httpx.AsyncClient,
) -> None:
    documented = dict(re.findall(r"^\| `(ledgerlink_\w+)` \| (\w+) \|", GUIDE, re.MULTILINE))
    assert exported((await client.get("/metrics")).text) == documented
