"""POST /v1/sync/trigger, GET /v1/sync/runs/{id}, GET /v1/reconciliation/report."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.reconcile import runs, tasks
from service.settings import Settings
from tests.support.factories import WRITE_OFF, load, reconcile, set_status, settle, si
from tests.support.keys import ADMIN_KEY, READ_KEY, WRITE_KEY, auth
from tests.support.queries import execute, history, invoice, outbox
from tests.support.settings import make_settings


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Small batches, so runs of a handful of invoices take several batches and pages.
    return make_settings(database_url, worker_batch_size=2)


async def _drain_requested_runs(engine: AsyncEngine, settings: Settings) -> None:
    """What the worker does with requested runs, pass after pass, until none is left."""
    executing = tasks.RunBeingExecuted()
    while await tasks.advance_requested_run(engine, settings, executing):
        pass


async def _company(engine: AsyncEngine, settings: Settings) -> None:
    await load(
        engine,
        settings,
        si(1, "INV-1", "100.00", account="ACME01"),
        si(2, "INV-2", "200.00", account="ACME01"),
        si(3, "INV-3", "300.00", account="ACME01"),
        si(4, "INV-4", "400.00", account="OTHER1"),
        si(5, "INV-5", "500.00", account="OTHER1"),
    )
    await reconcile(engine, settings)
    await load(
        engine,
        settings,
        settle(11, "SR", [(1, "100.00"), (2, "50.00")], account="ACME01"),
        settle(12, "SC", [(3, "300.00")], account="ACME01", reference="BADDBT", **WRITE_OFF),
        settle(13, "SR", [(4, "400.00")], account="OTHER1"),
    )


async def test_trigger_queues_a_run_the_worker_executes(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await _company(engine, settings)
    response = await client.post(
        "/v1/sync/trigger", json={"scope": "dirty"}, headers=auth(WRITE_KEY)
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == f"/v1/sync/runs/{body['run_id']}"
    queued = await client.get(f"/v1/sync/runs/{body['run_id']}", headers=auth(READ_KEY))
    assert queued.json()["status"] == "queued"

    await _drain_requested_runs(engine, settings)
    run = (await client.get(f"/v1/sync/runs/{body['run_id']}", headers=auth(READ_KEY))).json()
    assert run["status"] == "succeeded"
    assert (run["trigger"], run["dry_run"], run["actor"]) == ("api", False, "writer")
    assert run["counts"] == {
        "examined": 4,
        "changed": 4,
        "unchanged": 0,
        "skipped_protected": 0,
        "conflicts": 0,
    }
    assert run["changes"] == [
        {
            "invoice_number": "INV-1",
            "from_status": "Unpaid",
            "to_status": "Paid",
            "from_outstanding": "100.00",
            "to_outstanding": "0.00",
        },
        {
            "invoice_number": "INV-2",
            "from_status": "Unpaid",
            "to_status": "Part Paid",
            "from_outstanding": "200.00",
            "to_outstanding": "150.00",
        },
        {
            "invoice_number": "INV-3",
            "from_status": "Unpaid",
            "to_status": "Written Off",
            "from_outstanding": "300.00",
            "to_outstanding": "0.00",
        },
        {
            "invoice_number": "INV-4",
            "from_status": "Unpaid",
            "to_status": "Paid",
            "from_outstanding": "400.00",
            "to_outstanding": "0.00",
        },
    ]
    assert run["next_changes_cursor"] is None
    written = await history(engine, "INV-3")
    assert (written[-1]["actor"], str(written[-1]["run_id"])) == ("writer", body["run_id"])


async def test_wait_true_answers_with_the_finished_run_and_pages_changes(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await _company(engine, settings)
    response = await client.post(
        "/v1/sync/trigger?wait=true", json={"scope": "all"}, headers=auth(WRITE_KEY)
    )
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "succeeded"
    assert run["counts"]["examined"] == 5
    assert run["counts"]["changed"] == 4
    assert run["counts"]["unchanged"] == 1

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"changes_limit": 3}
        if cursor:
            params["changes_cursor"] = cursor
        page = (
            await client.get(
                f"/v1/sync/runs/{run['run_id']}", params=params, headers=auth(READ_KEY)
            )
        ).json()
        seen += [c["invoice_number"] for c in page["changes"]]
        cursor = page["next_changes_cursor"]
        if cursor is None:
            break
    assert seen == ["INV-1", "INV-2", "INV-3", "INV-4"]


async def test_dry_run_reports_every_change_and_writes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await _company(engine, settings)
    response = await client.post(
        "/v1/sync/trigger?wait=true",
        json={"scope": "dirty", "dry_run": True},
        headers=auth(WRITE_KEY),
    )
    assert response.status_code == 200, response.text
    run = response.json()
    assert (run["dry_run"], run["counts"]["changed"]) == (True, 4)
    assert [c["to_status"] for c in run["changes"]] == ["Paid", "Part Paid", "Written Off", "Paid"]
    row = await invoice(engine, "INV-3")
    assert (row["status"], row["outstanding"]) == ("Unpaid", Decimal("300.00"))
    assert row["dirty_since"] is not None
    assert len(await history(engine, "INV-3")) == 0
    assert len(await outbox(engine, "INV-3")) == 1  # only the first reconcile's


async def test_scope_narrowed_by_account_and_invoice_numbers(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await _company(engine, settings)
    by_account = await client.post(
        "/v1/sync/trigger?wait=true",
        json={"scope": "all", "account_ref": "OTHER1"},
        headers=auth(WRITE_KEY),
    )
    assert [c["invoice_number"] for c in by_account.json()["changes"]] == ["INV-4"]
    assert by_account.json()["counts"]["examined"] == 2
    by_list = await client.post(
        "/v1/sync/trigger?wait=true",
        json={"scope": "all", "invoice_numbers": ["INV-2", "INV-3", "NOPE"]},
        headers=auth(WRITE_KEY),
    )
    assert [c["invoice_number"] for c in by_list.json()["changes"]] == ["INV-2", "INV-3"]
    assert (await invoice(engine, "INV-1"))["status"] == "Unpaid"  # out of both scopes


async def test_protected_invoice_is_counted_as_skipped_and_conflict(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await _company(engine, settings)
    await set_status(engine, "INV-4", "Written Off")
    run = (
        await client.post(
            "/v1/sync/trigger?wait=true",
            json={"scope": "all", "account_ref": "OTHER1"},
            headers=auth(WRITE_KEY),
        )
    ).json()
    assert run["counts"] == {
        "examined": 2,
        "changed": 0,
        "unchanged": 1,
        "skipped_protected": 1,
        "conflicts": 1,
    }


async def test_a_run_interrupted_by_its_deadline_resumes_from_its_cursor(
    engine: AsyncEngine, settings: Settings
) -> None:
    await _company(engine, settings)
    run_id = await tasks.request_run(
        engine, runs.RunScope(scope="all"), dry_run=False, actor="alice", running=True
    )
    assert not await tasks.execute_run(engine, settings, run_id, deadline=time.monotonic())
    await tasks.requeue_run(engine, run_id)
    async with engine.connect() as conn:
        half = await runs.get_run(conn, run_id)
    assert half is not None
    assert (half.status, half.examined, half.cursor) == ("queued", 2, "INV-2")

    await _drain_requested_runs(engine, settings)
    async with engine.connect() as conn:
        done = await runs.get_run(conn, run_id)
    assert done is not None
    assert (done.status, done.examined, done.changed) == ("succeeded", 5, 4)


async def test_an_abandoned_run_is_taken_over(engine: AsyncEngine, settings: Settings) -> None:
    await _company(engine, settings)
    run_id = await tasks.request_run(
        engine, runs.RunScope(scope="all"), dry_run=False, actor="alice", running=True
    )
    await execute(
        engine,
        "UPDATE sync_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = :id",
        id=run_id,
    )
    executing = tasks.RunBeingExecuted()
    assert await tasks.advance_requested_run(engine, settings, executing)
    assert executing.run_id == run_id


async def test_a_failing_run_is_recorded_as_failed(
    engine: AsyncEngine, settings: Settings, client: httpx.AsyncClient
) -> None:
    run_id = await tasks.request_run(
        engine, runs.RunScope(scope="all"), dry_run=False, actor="alice", running=False
    )
    # A scope no code path can execute (say, written by a future version): the run fails
    # with its error recorded instead of being retried forever.
    await execute(
        engine, """UPDATE sync_runs SET scope = '{"scope": "all", "invoice_numbers": 7}'"""
    )
    await _drain_requested_runs(engine, settings)
    run = (await client.get(f"/v1/sync/runs/{run_id}", headers=auth(READ_KEY))).json()
    assert run["status"] == "failed"
    assert run["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"scope": "everything"},
        {"scope": "all", "unexpected": 1},
        {"scope": "all", "invoice_numbers": []},
        {"scope": "all", "invoice_numbers": ["x" * 31]},
        {"scope": "all", "account_ref": ""},
        {"scope": "all", "dry_run": "yes"},
    ],
)
async def test_trigger_rejects_bad_bodies(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await client.post("/v1/sync/trigger", json=body, headers=auth(WRITE_KEY))
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_auth_and_unknown_runs(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/sync/trigger", json={})).status_code == 401
    assert (
        await client.post("/v1/sync/trigger", json={}, headers=auth(READ_KEY))
    ).status_code == 403
    missing = await client.get(f"/v1/sync/runs/{uuid.uuid4()}", headers=auth(READ_KEY))
    assert missing.status_code == 404
    assert (await client.get("/v1/sync/runs/not-a-uuid", headers=auth(READ_KEY))).status_code == 422
    accepted = await client.post("/v1/sync/trigger", json={}, headers=auth(ADMIN_KEY))
    assert accepted.status_code == 202
    bad_cursor = await client.get(
        f"/v1/sync/runs/{accepted.json()['run_id']}",
        params={"changes_cursor": "!!!"},
        headers=auth(READ_KEY),
    )
    assert bad_cursor.status_code == 422


async def _report_company(engine: AsyncEngine, settings: Settings) -> None:
    await load(
        engine,
        settings,
        si(1, "INV-1", "100.00"),
        si(2, "INV-2", "100.00", outstanding="0.00"),  # mismatch: we hold no allocation
        si(3, "INV-3", "100.00"),
        si(4, "INV-4", "10.00"),
        si(5, "INV-5", "10.00"),
        si(6, "INV-5", "10.00"),  # a duplicate invoice number
        settle(11, "SR", [(3, "120.00")]),  # overpaid
        settle(12, "SC", [(4, "10.00")], **WRITE_OFF),
    )
    await reconcile(engine, settings)
    await set_status(engine, "INV-1", "Paid/Written Off")  # protected, postings say Unpaid
    await execute(
        engine, "UPDATE invoices SET status = '=HYPERLINK(1)' WHERE invoice_number = 'INV-4'"
    )
    await reconcile(engine, settings)


async def test_reports_in_json(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await _report_company(engine, settings)

    async def kind(name: str) -> dict[str, list[str]]:
        response = await client.get(
            "/v1/reconciliation/report", params={"kind": name}, headers=auth(READ_KEY)
        )
        assert response.status_code == 200, response.text
        return {item["invoice_number"]: item["reasons"] for item in response.json()["items"]}

    assert await kind("conflicts") == {"INV-1": ["conflict"]}
    assert await kind("mismatches") == {"INV-2": ["mismatch"]}
    assert await kind("divergent") == {
        "INV-3": ["overpaid"],
        "INV-4": ["status_differs"],
        "INV-5": ["duplicate"],
    }
    full = (
        await client.get(
            "/v1/reconciliation/report", params={"kind": "conflicts"}, headers=auth(READ_KEY)
        )
    ).json()["items"][0]
    assert (full["status"], full["expected_status"], full["protected"], full["outstanding"]) == (
        "Paid/Written Off",
        "Unpaid",
        True,
        "100.00",
    )


async def test_reports_page_and_speak_csv(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await _report_company(engine, settings)
    first = await client.get(
        "/v1/reconciliation/report",
        params={"kind": "divergent", "limit": 2},
        headers={**auth(READ_KEY), "Accept": "text/csv"},
    )
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(first.text)))
    assert [r["invoice_number"] for r in rows] == ["INV-3", "INV-4"]
    assert rows[0]["outstanding"] == "-20.00"  # a negative number stays a number
    assert rows[1]["status"] == "'=HYPERLINK(1)"  # a formula is defused
    link = first.headers["link"]
    assert link.endswith('rel="next"')
    second = await client.get(
        link[1 : link.index(">")], headers={**auth(READ_KEY), "Accept": "text/csv"}
    )
    assert [r["invoice_number"] for r in csv.DictReader(io.StringIO(second.text))] == ["INV-5"]
    assert "link" not in second.headers

    page = (
        await client.get(
            "/v1/reconciliation/report",
            params={"kind": "divergent", "limit": 2},
            headers=auth(READ_KEY),
        )
    ).json()
    assert page["next_cursor"] is not None
    rest = (
        await client.get(
            "/v1/reconciliation/report",
            params={"kind": "divergent", "limit": 2, "cursor": page["next_cursor"]},
            headers=auth(READ_KEY),
        )
    ).json()
    assert [i["invoice_number"] for i in rest["items"]] == ["INV-5"]
    assert rest["next_cursor"] is None
    bad = await client.get(
        "/v1/reconciliation/report", params={"kind": "other"}, headers=auth(READ_KEY)
    )
    assert bad.status_code == 422


@pytest.fixture
async def queued_app(database_url: str, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The service with its in-process worker on: a trigger without wait is executed."""
    app = create_app(make_settings(database_url, run_worker=True, worker_sweep_seconds=0.05))
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_in_process_worker_executes_a_queued_run(
    queued_app: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, si(1, "INV-1", "100.00"), settle(2, "SR", [(1, "100.00")]))
    response = await queued_app.post(
        "/v1/sync/trigger", json={"scope": "all"}, headers=auth(WRITE_KEY)
    )
    run_id = response.json()["run_id"]
    status = "queued"
    for _ in range(500):
        run = (await queued_app.get(f"/v1/sync/runs/{run_id}", headers=auth(READ_KEY))).json()
        status = run["status"]
        if status == "succeeded":
            break
        await asyncio.sleep(0.02)
    assert status == "succeeded"
    assert (await invoice(engine, "INV-1"))["status"] == "Paid"
