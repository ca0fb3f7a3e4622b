"""The invoice status picklist: GET, PUT (409 in use), verification, repair, readiness."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import create_engine
from service.main import create_app
from service.migrate import upgrade_to_head
from service.picklist.service import readiness_warnings, required_values, verify
from tests.support.database import DEFAULT_PICKLIST, scratch_database
from tests.support.factories import add_invoice
from tests.support.keys import ADMIN_KEY, READ_KEY, WRITE_KEY, auth
from tests.support.queries import scalar
from tests.support.settings import make_settings

URL = "/v1/picklists/invoice-status"
WITHOUT_WRITE_OFFS = [v for v in DEFAULT_PICKLIST if v not in ("Written Off", "Paid/Written Off")]


async def _values(client: httpx.AsyncClient) -> list[str]:
    response = await client.get(URL, headers=auth(READ_KEY))
    assert response.status_code == 200
    values: list[str] = response.json()["values"]
    return values


async def _put(client: httpx.AsyncClient, values: Any) -> httpx.Response:
    return await client.put(URL, json={"values": values}, headers=auth(ADMIN_KEY))


async def test_the_initial_migration_seeds_the_default_list() -> None:
    """The tests start from DEFAULT_PICKLIST; a freshly migrated database holds the same."""
    async with scratch_database() as url:
        await asyncio.to_thread(upgrade_to_head, url)
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                seeded = await conn.execute(
                    sa.text("SELECT value FROM picklist_values ORDER BY position")
                )
                assert tuple(seeded.scalars()) == DEFAULT_PICKLIST
        finally:
            await engine.dispose()


async def test_get_returns_the_seeded_list_in_order(client: httpx.AsyncClient) -> None:
    values = await _values(client)
    assert values == list(DEFAULT_PICKLIST)
    assert "Written Off" in values
    assert "Paid/Written Off" in values


async def test_put_replaces_the_list_in_the_given_order(client: httpx.AsyncClient) -> None:
    new = ["Paid/Written Off", "Written Off", "Paid", "Part Paid", "Unpaid", "On Hold"]
    response = await _put(client, new)
    assert response.status_code == 200, response.text
    assert response.json() == {"values": new}
    assert await _values(client) == new


async def test_put_is_409_when_a_value_in_use_would_disappear(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_invoice(engine, "INV-1", status="Sent")
    await add_invoice(engine, "INV-2", status="Cancelled")
    response = await _put(
        client, ["Unpaid", "Part Paid", "Paid", "Written Off", "Paid/Written Off"]
    )
    assert response.status_code == 409
    problem = response.json()
    assert problem["in_use"] == ["Cancelled", "Sent"]
    assert "'Cancelled'" in problem["detail"]
    assert await _values(client) == list(DEFAULT_PICKLIST)


async def test_put_is_409_when_a_queued_global_update_targets_the_value(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO jobs (id, kind, status, request, request_sha256, expires_at) "
                "VALUES (gen_random_uuid(), 'bulk_status', 'queued', "
                "'{\"status\": \"Credit Invoice\"}', '\\x00', now())"
            )
        )
    response = await _put(client, [v for v in DEFAULT_PICKLIST if v != "Credit Invoice"])
    assert response.status_code == 409
    assert response.json()["in_use"] == ["Credit Invoice"]


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        ["x" * 65],
        ["Paid", "Paid"],
        [" Paid"],
        ["Paid\n"],
        ["Pa\u0000id"],
        "Paid",
        [1, 2],
        None,
    ],
)
async def test_put_validates(client: httpx.AsyncClient, engine: AsyncEngine, values: Any) -> None:
    response = await _put(client, values)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"][:2] == ["body", "values"]
    assert await _values(client) == list(DEFAULT_PICKLIST)


async def test_put_refuses_unknown_fields(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    response = await client.put(
        URL, json={"values": ["Paid"], "mode": "append"}, headers=auth(ADMIN_KEY)
    )
    assert response.status_code == 422


async def test_verification_ok_on_the_seeded_list(client: httpx.AsyncClient) -> None:
    body = (await client.get(f"{URL}/verification", headers=auth(READ_KEY))).json()
    assert body["ok"] is True
    assert body["missing"] == []
    assert body["required"] == ["Written Off", "Paid/Written Off", "Unpaid", "Part Paid", "Paid"]


async def test_verification_lists_what_is_missing_and_what_the_crm_shows(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    assert (await _put(client, WITHOUT_WRITE_OFFS)).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO crm_observed_statuses (value) VALUES ('Paid'), ('Overdue'), "
                "('Written Off')"
            )
        )
    body = (await client.get(f"{URL}/verification", headers=auth(READ_KEY))).json()
    assert body["ok"] is False
    assert body["missing"] == ["Written Off", "Paid/Written Off"]
    assert body["observed_in_crm"] == ["Overdue", "Paid", "Written Off"]
    assert body["observed_not_in_picklist"] == ["Overdue", "Written Off"]


async def test_required_follows_the_settings(engine: AsyncEngine, database_url: str) -> None:
    settings = make_settings(
        database_url,
        protected_statuses="Bad Debt,Written Off",
        status_labels='{"paid_written_off": "Paid - Written Off", "paid": "Settled"}',
    )
    assert required_values(settings) == [
        "Bad Debt",
        "Written Off",
        "Unpaid",
        "Part Paid",
        "Settled",
        "Paid - Written Off",
    ]
    async with engine.connect() as conn:
        result = await verify(conn, settings)
    assert result.missing == ["Bad Debt", "Settled", "Paid - Written Off"]


async def test_repair_adds_what_is_missing_at_the_end(client: httpx.AsyncClient) -> None:
    await _put(client, WITHOUT_WRITE_OFFS)
    response = await client.post(f"{URL}/repair", headers=auth(ADMIN_KEY))
    assert response.status_code == 200
    assert response.json() == {"added": ["Written Off", "Paid/Written Off"], "ok": True}
    assert await _values(client) == [*WITHOUT_WRITE_OFFS, "Written Off", "Paid/Written Off"]
    again = await client.post(f"{URL}/repair", headers=auth(ADMIN_KEY))
    assert again.json() == {"added": [], "ok": True}
    verification = (await client.get(f"{URL}/verification", headers=auth(READ_KEY))).json()
    assert verification["ok"] is True


async def test_readiness_reports_a_failed_verification_without_failing(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    async with engine.connect() as conn:
        assert await readiness_warnings(conn, make_settings(database_url)) == []
    await _put(client, WITHOUT_WRITE_OFFS)
    response = await client.get("/readyz")
    assert response.status_code == 200
    [warning] = [w for w in response.json()["warnings"] if "picklist" in w]
    assert "'Written Off', 'Paid/Written Off'" in warning
    assert "POST /v1/picklists/invoice-status/repair" in warning


async def test_startup_logs_a_failed_verification_once(
    engine: AsyncEngine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "DELETE FROM picklist_values WHERE value IN ('Written Off', 'Paid/Written Off')"
            )
        )
    capsys.readouterr()
    app = create_app(make_settings(database_url))
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/readyz")
            await client.get("/readyz")
    # create_app sends logs to stderr (its own handler), as in production.
    logged = [
        line for line in capsys.readouterr().err.splitlines() if "picklist.verification" in line
    ]
    assert len(logged) == 1
    assert "picklist.verification.failed" in logged[0]
    assert "'Written Off', 'Paid/Written Off'" in logged[0]


async def test_scopes(client: httpx.AsyncClient) -> None:
    assert (await client.get(URL)).status_code == 401
    assert (await client.get(f"{URL}/verification")).status_code == 401
    for key in (READ_KEY, WRITE_KEY):
        put = await client.put(URL, json={"values": ["Paid"]}, headers=auth(key))
        assert put.status_code == 403
        assert (await client.post(f"{URL}/repair", headers=auth(key))).status_code == 403
    assert (await client.post(f"{URL}/repair")).status_code == 401
    verification = await client.get(f"{URL}/verification", headers=auth(READ_KEY))
    assert verification.status_code == 200


async def _lock_waiters(engine: AsyncEngine, count: int) -> None:
    for _ in range(500):
        waiting = await scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} sessions waiting for a lock")


async def test_put_waits_for_an_edit_in_flight_then_sees_the_value_in_use(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A PATCH to 'Cancelled' is in flight (it holds the value) while a PUT drops 'Cancelled':
    the PUT waits for it, then refuses. The picklist never loses a value an invoice carries."""
    await add_invoice(engine, "INV-1", status="Paid")
    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(
            sa.text("SELECT 1 FROM invoices WHERE invoice_number = 'INV-1' FOR UPDATE")
        )
        edit = asyncio.create_task(
            client.patch(
                "/v1/invoices/INV-1", json={"status": "Cancelled"}, headers=auth(WRITE_KEY)
            )
        )
        await _lock_waiters(engine, 1)
        put = asyncio.create_task(_put(client, [v for v in DEFAULT_PICKLIST if v != "Cancelled"]))
        await _lock_waiters(engine, 2)
        await holder.rollback()
    edited, replaced = await asyncio.wait_for(asyncio.gather(edit, put), timeout=30)
    assert edited.status_code == 200
    assert replaced.status_code == 409
    assert replaced.json()["in_use"] == ["Cancelled"]
    assert "Cancelled" in await _values(client)
