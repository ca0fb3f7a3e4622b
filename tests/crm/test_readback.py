"""Read-back from a fake OpenCRM on a real port: paging, adopting, drift, the cursor, throttling."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.crm import tasks as crm_tasks
from service.crm.readiness import readiness_problems
from service.crm.repository import views
from service.crm.tasks import ReadBackTask, build_readback
from tests.crm.e2e import crm_settings
from tests.crm.support import policy
from tests.support import fake_opencrm
from tests.support.factories import add_invoice, add_message
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.keys import READ_KEY, auth
from tests.support.queries import invoice, scalar

COUNT = 250
NUMBERS = [f"INV-{i:04d}" for i in range(COUNT)]


async def company(engine: AsyncEngine, fake: FakeOpenCrm, count: int = COUNT) -> None:
    """The same invoices in ledgerlink and in the CRM, all Unpaid, 100.00 outstanding."""
    for number in NUMBERS[:count]:
        await add_invoice(engine, number, status="Unpaid", gross="100.00")
        fake.add_invoice(number, status="Unpaid", outstanding="100.00")


def readback(
    engine: AsyncEngine, database_url: str, fake: FakeOpenCrm, http: httpx.AsyncClient, **extra: Any
) -> ReadBackTask:
    settings = crm_settings(database_url, fake, crm_readback_seconds=300, **extra)
    return build_readback(settings, engine, http)


async def scan(reader: ReadBackTask) -> int:
    """Run the task until it goes idle; return how many passes did something."""
    for passes in range(100):
        if await reader.run_once() == 0:
            return passes
    raise AssertionError("the read-back never went idle")


async def make_due(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE crm_readback_state SET last_completed_at = now() - interval '1 hour', "
                "next_run_at = now()"
            )
        )


def list_calls(fake: FakeOpenCrm) -> list[dict[str, str]]:
    return [c.params for c in fake.calls() if c.method.startswith("get_invoice_list")]


async def test_a_scan_pages_through_every_invoice_adopts_protected_and_records_drift(
    engine: AsyncEngine,
    database_url: str,
    fake_crm: FakeOpenCrm,
    http: httpx.AsyncClient,
    client: httpx.AsyncClient,
) -> None:
    await company(engine, fake_crm)
    # People at work in OpenCRM's screens, with no Sage activity at all.
    fake_crm.set_by_person(NUMBERS[7], invoicestatus="Written Off")
    fake_crm.set_by_person(NUMBERS[230], invoicestatus="Paid/Written Off")
    fake_crm.set_by_person(NUMBERS[180], invoicestatus="Part Paid", amount_outstanding="40.00")

    assert await scan(readback(engine, database_url, fake_crm, http)) == 3

    calls = list_calls(fake_crm)
    assert [(c["limit_start"], c["limit_end"]) for c in calls] == [
        ("0", "100"),
        ("100", "200"),
        ("200", "300"),
    ]
    assert all("query_string" not in c for c in calls)
    assert fake_crm.calls("edit_invoice") == []
    for number, status in ((NUMBERS[7], "Written Off"), (NUMBERS[230], "Paid/Written Off")):
        adopted = await invoice(engine, number)
        assert (adopted["status"], adopted["outstanding"]) == (status, 100)
        shown = (await client.get(f"/v1/invoices/{number}", headers=auth(READ_KEY))).json()
        assert (shown["status"], shown["protected"]) == (status, True)
        assert shown["history"][0]["source"] == "crm"
        assert shown["history"][0]["actor"] == "opencrm"
        assert shown["history"][0]["from_status"] == "Unpaid"
    # An unprotected difference is reported, not adopted and not overwritten.
    assert (await invoice(engine, NUMBERS[180]))["status"] == "Unpaid"
    drift = await client.get("/v1/reconciliation/report?kind=crm_drift", headers=auth(READ_KEY))
    assert drift.status_code == 200, drift.text
    items = drift.json()["items"]
    assert [i["invoice_number"] for i in items] == [NUMBERS[180]]
    assert (items[0]["crm_status"], items[0]["crm_outstanding"]) == ("Part Paid", "40.00")
    assert (items[0]["status"], items[0]["outstanding"]) == ("Unpaid", "100.00")
    assert "crm_drift" in items[0]["reasons"]
    as_csv = await client.get(
        "/v1/reconciliation/report?kind=crm_drift",
        headers={**auth(READ_KEY), "Accept": "text/csv"},
    )
    lines = as_csv.text.splitlines()
    header = lines[0].split(",")
    assert len(lines) == 2
    row = dict(zip(header, lines[1].split(","), strict=False))
    assert (row["invoice_number"], row["crm_status"], row["crm_outstanding"]) == (
        NUMBERS[180],
        "Part Paid",
        "40.00",
    )
    # Every record id is cached; the picklist check shows what the CRM really holds.
    assert await scalar(engine, "SELECT count(*) FROM invoices WHERE crm_id IS NOT NULL") == COUNT
    verification = await client.get(
        "/v1/picklists/invoice-status/verification", headers=auth(READ_KEY)
    )
    assert verification.json()["observed_in_crm"] == [
        "Paid/Written Off",
        "Part Paid",
        "Unpaid",
        "Written Off",
    ]


async def test_nothing_is_read_again_before_the_interval_and_a_new_scan_starts_after_it(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm, count=5)
    reader = readback(engine, database_url, fake_crm, http)
    assert await scan(reader) == 1
    assert await scan(reader) == 0
    assert len(list_calls(fake_crm)) == 1
    await make_due(engine)
    assert await scan(reader) == 1
    assert len(list_calls(fake_crm)) == 2


async def test_a_throttled_page_waits_for_retry_after_and_the_scan_resumes_there(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm)
    reader = readback(engine, database_url, fake_crm, http)
    assert await reader.run_once() == 100
    fake_crm.fail_next(1, 429, retry_after="120")
    assert await reader.run_once() == 0
    state = await state_row(engine)
    assert (state.page_start, state.failures) == (100, 1)
    assert "HTTP 429" in state.last_error
    wait = await scalar(
        engine, "SELECT extract(epoch FROM next_run_at - now()) FROM crm_readback_state"
    )
    assert 100 < wait <= 120
    calls = len(fake_crm.calls())
    assert await reader.run_once() == 0  # still waiting: not a single call
    assert len(fake_crm.calls()) == calls
    # Another worker (a restart) picks the cursor up where it stopped once the wait is over.
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE crm_readback_state SET next_run_at = now()"))
    other = readback(engine, database_url, fake_crm, http)
    assert await other.run_once() == 100
    assert list_calls(fake_crm)[-1]["limit_start"] == "100"
    assert await scan(other) == 1
    state = await state_row(engine)
    assert (state.page_start, state.failures, state.scan_started_at) == (0, 0, None)
    assert state.last_completed_at is not None


async def test_one_reader_at_a_time(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm, count=3)
    reader = readback(engine, database_url, fake_crm, http)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO crm_readback_state (id) VALUES (1) ON CONFLICT DO NOTHING")
        )
    async with engine.connect() as holder, holder.begin():
        await holder.execute(sa.text("SELECT 1 FROM crm_readback_state FOR UPDATE"))
        # The cursor is locked by a reader mid-page: the other skips instead of waiting.
        assert await asyncio.wait_for(reader.run_once(), timeout=10) == 0
    assert list_calls(fake_crm) == []
    assert await reader.run_once() == 3


async def test_a_change_a_person_made_in_ledgerlink_is_not_undone_by_an_older_crm_status(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm, count=2)
    fake_crm.set_by_person(NUMBERS[0], invoicestatus="Written Off")
    fake_crm.set_by_person(NUMBERS[1], invoicestatus="Written Off")
    # A person released NUMBERS[0] in ledgerlink; the change is on its way to the CRM.
    await add_message(engine, NUMBERS[0], "Paid", "0.00", source="manual")
    assert await scan(readback(engine, database_url, fake_crm, http)) == 1
    assert (await invoice(engine, NUMBERS[0]))["status"] == "Unpaid"
    assert (await invoice(engine, NUMBERS[1]))["status"] == "Written Off"


async def test_with_a_modified_field_later_scans_ask_only_for_recent_changes(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    fake_crm.clock = fake_crm.clock.replace(day=18)
    await company(engine, fake_crm)
    fake_crm.clock = fake_crm.clock.replace(day=19)
    fake_crm.set_by_person(NUMBERS[3], invoicestatus="Part Paid")
    reader = readback(
        engine, database_url, fake_crm, http, opencrm_modified_field=fake_opencrm.MODIFIED_FIELD
    )
    assert await scan(reader) == 3  # the first scan reads everything
    assert (await state_row(engine)).last_modified.startswith("2026-11-19")
    fake_crm.clock = fake_crm.clock.replace(day=22)
    fake_crm.set_by_person(NUMBERS[42], invoicestatus="Written Off")
    await make_due(engine)
    before = len(list_calls(fake_crm))
    await scan(reader)
    asked = list_calls(fake_crm)[before:]
    days = [c["query_string"] for c in asked]
    assert days[:4] == [f"modifiedtime|BEGINS|2026-11-{day}" for day in (19, 20, 21, 22)]
    # One short page a day: the 248 invoices untouched since the 18th are not read again.
    assert all(c["limit_start"] == "0" for c in asked)
    assert (await invoice(engine, NUMBERS[42]))["status"] == "Written Off"
    assert (await state_row(engine)).last_modified.startswith("2026-11-22")


async def test_a_modified_filter_the_crm_ignores_ends_as_one_full_scan(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm)
    fake_crm.set_by_person(NUMBERS[240], invoicestatus="Written Off")
    reader = readback(engine, database_url, fake_crm, http, opencrm_modified_field="modified_on")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO crm_readback_state (id, last_modified) VALUES (1, '2026-11-01')")
        )
    await scan(reader)
    asked = list_calls(fake_crm)
    assert [c["limit_start"] for c in asked] == ["0", "100", "200"]
    assert (await invoice(engine, NUMBERS[240]))["status"] == "Written Off"


async def state_row(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text("SELECT * FROM crm_readback_state"))).one()


async def test_the_task_reads_nothing_when_off_or_in_local_mode(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm, count=2)
    for settings in (
        crm_settings(database_url, fake_crm, crm_readback_seconds=0),
        crm_settings(database_url, fake_crm, crm_mode="local"),
    ):
        ctx = WorkerContext(settings=settings, engine=engine, http=http)
        assert await crm_tasks.read_back(ctx)() == 0
    assert fake_crm.calls() == []
    on = crm_settings(database_url, fake_crm, crm_readback_seconds=60)
    ctx = WorkerContext(settings=on, engine=engine, http=http)
    assert await crm_tasks.read_back(ctx)() == 2


async def test_a_reader_killed_mid_page_leaves_the_cursor_for_the_next_one(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm)
    reader = readback(engine, database_url, fake_crm, http)
    assert await reader.run_once() == 100
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        stuck = build_readback(
            crm_settings(
                database_url,
                fake_crm,
                crm_readback_seconds=300,
                opencrm_base_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            ),
            engine,
            http,
        )
        task = asyncio.create_task(stuck.run_once())
        await asyncio.sleep(0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    state = await state_row(engine)
    assert (state.page_start, state.failures) == (100, 0)
    assert await reader.run_once() == 100
    assert list_calls(fake_crm)[-1]["limit_start"] == "100"


async def open_transactions(engine: AsyncEngine) -> int:
    """Sessions of this test database sitting in an open transaction, waiting on something."""
    count: int = await scalar(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    return count


async def test_no_transaction_is_open_while_a_page_is_read_and_the_lease_keeps_others_off(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    """Issue 24, items 3 and 7: the cursor row stayed locked, its transaction idle, for as
    long as the CRM took to answer."""
    await company(engine, fake_crm, count=3)
    hold = fake_crm.hold_next_list()
    reading = asyncio.create_task(readback(engine, database_url, fake_crm, http).run_once())
    try:
        assert await asyncio.to_thread(hold.reached.wait, 30), "no list call reached the CRM"
        assert await open_transactions(engine) == 0
        # Another worker finds the cursor leased: it reads nothing and does not wait.
        assert await readback(engine, database_url, fake_crm, http).run_once() == 0
    finally:
        hold.release.set()
    assert await reading == 3
    assert len(list_calls(fake_crm)) == 1
    state = await state_row(engine)
    assert state.lease_token is None
    assert state.last_completed_at is not None


async def test_a_lease_left_by_a_killed_reader_is_taken_over_once_it_runs_out(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm, count=3)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO crm_readback_state (id, lease_token, next_run_at) "
                "VALUES (1, gen_random_uuid(), now() + interval '1 minute')"
            )
        )
    reader = readback(engine, database_url, fake_crm, http)
    assert await reader.run_once() == 0
    assert list_calls(fake_crm) == []
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE crm_readback_state SET next_run_at = now()"))
    assert await reader.run_once() == 3


async def test_a_crm_ignoring_paging_fails_the_scan_with_backoff_instead_of_reading_for_ever(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    """Issue 24, item 3: the same first page whatever `limit_start` says: 786 list calls in
    20 s and the cursor past a million, with /readyz ready and silent."""
    await company(engine, fake_crm)
    fake_crm.set_by_person(NUMBERS[7], invoicestatus="Written Off")
    fake_crm.ignore_paging = True
    reader = readback(engine, database_url, fake_crm, http)
    reader.readback.policy = policy(base=30.0)
    assert await scan(reader) == 1
    assert len(list_calls(fake_crm)) == 2
    state = await state_row(engine)
    assert (state.page_start, state.failures) == (100, 1)
    assert "ignores paging" in state.last_error
    wait = await scalar(
        engine, "SELECT extract(epoch FROM next_run_at - now()) FROM crm_readback_state"
    )
    assert 20 < wait <= 30  # the backoff after one failure
    # What the first page taught is kept.
    assert (await invoice(engine, NUMBERS[7]))["status"] == "Written Off"
    settings = crm_settings(database_url, fake_crm, crm_readback_seconds=300)
    async with engine.connect() as conn:
        _, warnings = await readiness_problems(conn, settings.crm, None)
    assert any("CRM read-back failing" in w and "ignores paging" in w for w in warnings)


async def test_a_page_that_cannot_be_stored_backs_off_and_is_reported(
    engine: AsyncEngine,
    database_url: str,
    fake_crm: FakeOpenCrm,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 24, item 5: a database error on a page failed every pass, the CRM polled every
    2 s without backoff, and readiness said nothing."""
    await company(engine, fake_crm, count=3)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise sa.exc.DataError("INSERT INTO crm_invoices ...", {}, Exception("value too long"))

    monkeypatch.setattr(views, "remember_crm_views", broken)
    reader = readback(engine, database_url, fake_crm, http)
    reader.readback.policy = policy(base=30.0)
    assert await reader.run_once() == 0
    state = await state_row(engine)
    assert (state.page_start, state.failures) == (0, 1)
    assert "value too long" in state.last_error
    assert "INSERT" not in state.last_error
    wait = await scalar(
        engine, "SELECT extract(epoch FROM next_run_at - now()) FROM crm_readback_state"
    )
    assert 20 < wait <= 30  # the backoff after one failure
    assert await reader.run_once() == 0  # backing off: the CRM is not asked again
    assert len(list_calls(fake_crm)) == 1
    settings = crm_settings(database_url, fake_crm, crm_readback_seconds=300)
    async with engine.connect() as conn:
        _, warnings = await readiness_problems(conn, settings.crm, None)
    assert any("CRM read-back failing" in w and "value too long" in w for w in warnings)


async def test_a_scan_past_the_page_cap_fails_and_starts_over(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    await company(engine, fake_crm)
    reader = readback(engine, database_url, fake_crm, http, opencrm_max_pages=2)
    assert await scan(reader) == 2
    state = await state_row(engine)
    assert (state.scan_started_at, state.page_start, state.pages) == (None, 0, 0)
    assert state.failures == 1
    assert "more than 2 pages" in state.last_error
    assert state.last_completed_at is None
    assert len(list_calls(fake_crm)) == 2
