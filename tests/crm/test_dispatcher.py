"""The outbox dispatcher on a real database, with OpenCRM mocked by respx."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.crm.connector import Change, LocalConnector, Outcome
from service.crm.repository import adoption, health, outbox, outbox_admin
from tests.crm.support import BASE_URL, Clocks, dispatcher, opencrm_connector, policy
from tests.support.factories import add_invoice, add_message
from tests.support.queries import history, messages, scalar

API = f"{BASE_URL}/api/rest"


class FakeCrm:
    """respx routes over a dict of records keyed by crmid; `answers` scripts failures."""

    def __init__(self, records: dict[str, dict[str, str]]) -> None:
        self.records = records
        self.answers: list[httpx.Response] = []
        self.edits: list[dict[str, str]] = []
        respx.post(url__regex=rf"{API}/\w+").mock(side_effect=self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.answers:
            return self.answers.pop(0)
        method = request.url.path.rsplit("/", 1)[-1]
        params = dict(parse_qsl(request.content.decode(), keep_blank_values=True))
        if method == "get_invoice_list":
            field, _, value = params["query_string"].partition("|=|")
            return httpx.Response(
                200, json=[r for r in self.records.values() if r.get(field) == value]
            )
        record = self.records.get(params.get("crmid", ""))
        if record is None:
            return httpx.Response(200, json={"error": "Record not found"})
        if method == "edit_invoice":
            fields = {k: v for k, v in params.items() if k not in ("key", "passkey", "crmid")}
            record.update(fields)
            self.edits.append({"crmid": params["crmid"], **fields})
            return httpx.Response(200, json={"success": True})
        return httpx.Response(200, json=record)


def crm_invoice(
    number: str, crm_id: str, status: str = "Unpaid", outstanding: str = "100.00"
) -> dict[str, str]:
    return {
        "crmid": crm_id,
        "invoice_no": number,
        "invoicestatus": status,
        "amount_outstanding": outstanding,
    }


# Local mode ----------------------------------------------------------------------------------


async def test_local_mode_marks_messages_delivered_through_the_same_path(
    engine: AsyncEngine,
) -> None:
    await add_invoice(engine, "INV-1", gross="100.00")
    first = await add_message(engine, "INV-1", "Part Paid", "40.00")
    second = await add_message(engine, "INV-1", "Paid", "0.00")
    other = await add_message(engine, "INV-2", "Paid", "0.00")
    done = await dispatcher(engine, LocalConnector()).run_once()
    assert done == 3
    rows = await messages(engine)
    assert rows[first].state == "superseded"
    assert (rows[second].state, rows[second].attempts) == ("delivered", 1)
    assert rows[second].delivered_at is not None
    assert rows[other].state == "delivered"
    assert await dispatcher(engine, LocalConnector()).run_once() == 0
    # Local mode never writes the shared dispatcher state: readiness has nothing to report.
    assert await scalar(engine, "SELECT count(*) FROM crm_dispatcher_state") == 0


# Delivery, order and coalescing ----------------------------------------------------------------


@respx.mock
async def test_delivers_the_newest_change_per_invoice_and_caches_the_record_id(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42"), "43": crm_invoice("INV-2", "43")})
    await add_invoice(engine, "INV-1", gross="100.00")
    await add_invoice(engine, "INV-2", gross="100.00")
    ids = [
        await add_message(engine, "INV-1", "Part Paid", "60.00"),
        await add_message(engine, "INV-2", "Paid", "0.00"),
        await add_message(engine, "INV-1", "Part Paid", "30.00"),
        await add_message(engine, "INV-1", "Paid", "0.00"),
    ]
    assert await dispatcher(engine, opencrm_connector(http)).run_once() == 4
    assert crm.edits == [
        {"crmid": "42", "invoicestatus": "Paid", "amount_outstanding": "0.00"},
        {"crmid": "43", "invoicestatus": "Paid", "amount_outstanding": "0.00"},
    ]
    rows = await messages(engine)
    assert [rows[i].state for i in ids] == ["superseded", "delivered", "superseded", "delivered"]
    cached = await scalar(
        engine, "SELECT string_agg(crm_id, ',' ORDER BY invoice_number) FROM invoices"
    )
    assert cached == "42,43"
    observed = await scalar(
        engine, "SELECT times_seen FROM crm_observed_statuses WHERE value = 'Unpaid'"
    )
    assert observed == 2


@respx.mock
async def test_a_newer_change_waits_while_an_older_one_is_backing_off(
    engine: AsyncEngine, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42")})
    await add_invoice(engine, "INV-1", gross="100.00")
    older = await add_message(engine, "INV-1", "Part Paid", "60.00")
    crm.answers = [httpx.Response(500)]
    d = dispatcher(engine, opencrm_connector(http), clocks=clocks)
    assert await d.run_once() == 1
    newer = await add_message(engine, "INV-1", "Paid", "0.00")
    clocks.mono += 10  # the pause is over, but not the older message's backoff
    assert await d.run_once() == 0
    assert crm.edits == []
    clocks.advance(2)
    assert await d.run_once() == 2
    rows = await messages(engine)
    assert (rows[older].state, rows[newer].state) == ("superseded", "delivered")
    assert crm.edits == [{"crmid": "42", "invoicestatus": "Paid", "amount_outstanding": "0.00"}]


async def test_a_claimed_invoice_is_invisible_to_another_dispatcher(engine: AsyncEngine) -> None:
    await add_message(engine, "INV-1", "Part Paid", "60.00")
    await add_message(engine, "INV-1", "Paid", "0.00")
    await add_message(engine, "INV-2", "Paid", "0.00")
    async with engine.connect() as first, first.begin():
        groups = await outbox.claim(first, limit=1, now=None)
        assert [(g.invoice_number, len(g.messages)) for g in groups] == [("INV-1", 2)]
        async with engine.connect() as second, second.begin():
            others = await outbox.claim(second, limit=10, now=None)
            assert [g.invoice_number for g in others] == ["INV-2"]


async def test_a_requeued_dead_letter_older_than_a_delivery_is_never_resent(
    engine: AsyncEngine,
) -> None:
    dead = await add_message(engine, "INV-1", "Part Paid", "60.00", state="dead", attempts=5)
    later = await add_message(engine, "INV-1", "Paid", "0.00", state="delivered", attempts=1)
    async with engine.begin() as conn:
        await outbox_admin.requeue_dead(conn, dead)
    delivered: list[Change] = []

    class Recording(LocalConnector):
        async def deliver(self, change: Change) -> Outcome:
            delivered.append(change)
            return await super().deliver(change)

    assert await dispatcher(engine, Recording()).run_once() == 1
    rows = await messages(engine)
    assert (rows[dead].state, rows[later].state) == ("superseded", "delivered")
    assert delivered == []


# Failures, retries, dead letters ---------------------------------------------------------------


@respx.mock
async def test_a_5xx_is_retried_with_backoff_and_the_batch_waits(
    engine: AsyncEngine, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42"), "43": crm_invoice("INV-2", "43")})
    first = await add_message(engine, "INV-1", "Paid", "0.00")
    second = await add_message(engine, "INV-2", "Paid", "0.00")
    crm.answers = [httpx.Response(503)]
    d = dispatcher(engine, opencrm_connector(http), clocks=clocks, retry=policy(base=2.0))
    assert await d.run_once() == 1
    rows = await messages(engine)
    assert rows[first].state == "pending"
    assert rows[first].attempts == 1
    assert rows[first].next_attempt_at == clocks.now + timedelta(seconds=2)
    assert "HTTP 503" in rows[first].last_error
    # The CRM is failing: the other invoice was not tried, so it burnt no attempt.
    assert rows[second].attempts == 0
    assert await d.run_once() == 0  # paused for the backoff
    clocks.advance(2)
    assert await d.run_once() == 2
    rows = await messages(engine)
    assert (rows[first].state, rows[first].attempts, rows[first].last_error) == (
        "delivered",
        2,
        None,
    )
    assert rows[second].state == "delivered"
    # Due messages go in the order they fell due: INV-2's has waited since it was written.
    assert [e["crmid"] for e in crm.edits] == ["43", "42"]


@respx.mock
async def test_backoff_doubles_up_to_its_cap(
    engine: AsyncEngine, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42")})
    message = await add_message(engine, "INV-1", "Paid", "0.00")
    d = dispatcher(
        engine, opencrm_connector(http), clocks=clocks, retry=policy(max_attempts=10, cap=5.0)
    )
    delays = []
    for _ in range(4):
        crm.answers = [httpx.Response(500)]
        before = clocks.now
        assert await d.run_once() == 1
        due = (await messages(engine))[message].next_attempt_at
        delays.append((due - before).total_seconds())
        clocks.advance(delays[-1])
    assert delays == [2.0, 4.0, 5.0, 5.0]


@respx.mock
async def test_429_retry_after_is_honoured(
    engine: AsyncEngine, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42"), "43": crm_invoice("INV-2", "43")})
    first = await add_message(engine, "INV-1", "Paid", "0.00")
    await add_message(engine, "INV-2", "Paid", "0.00")
    crm.answers = [httpx.Response(429, headers={"Retry-After": "30"})]
    d = dispatcher(engine, opencrm_connector(http), clocks=clocks)
    assert await d.run_once() == 1
    row = (await messages(engine))[first]
    assert row.next_attempt_at == clocks.now + timedelta(seconds=30)
    assert "HTTP 429" in row.last_error
    clocks.advance(29)
    assert await d.run_once() == 0  # the whole dispatcher respects the CRM's request
    assert len(respx.calls) == 1
    clocks.advance(1)
    assert await d.run_once() == 2
    assert len(crm.edits) == 2


@respx.mock
async def test_after_the_last_attempt_a_message_is_a_dead_letter(
    engine: AsyncEngine, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    FakeCrm({})  # the invoice is not in the CRM: every attempt is rejected
    message = await add_message(engine, "INV-404", "Paid", "0.00")
    d = dispatcher(engine, opencrm_connector(http), clocks=clocks, retry=policy(max_attempts=3))
    states = []
    for _ in range(3):
        assert await d.run_once() == 1
        row = (await messages(engine))[message]
        states.append((row.state, row.attempts))
        clocks.advance(60)
    assert states == [("pending", 1), ("pending", 2), ("dead", 3)]
    assert "no OpenCRM invoice has invoice_no=INV-404" in row.last_error
    assert await d.run_once() == 0
    gets = [c for c in respx.calls if c.request.url.path.endswith("get_invoice_list")]
    assert len(gets) == 3


@respx.mock
async def test_an_unexpected_error_costs_an_attempt_instead_of_blocking_the_outbox(
    engine: AsyncEngine, clocks: Clocks
) -> None:
    class Broken(LocalConnector):
        async def deliver(self, change: Change) -> Outcome:
            raise KeyError("surprise")

    message = await add_message(engine, "INV-1", "Paid", "0.00")
    other = await add_message(engine, "INV-2", "Paid", "0.00")
    assert await dispatcher(engine, Broken(), clocks=clocks).run_once() == 2
    rows = await messages(engine)
    assert (rows[message].state, rows[message].attempts) == ("pending", 1)
    assert "unexpected KeyError" in rows[message].last_error
    assert rows[other].attempts == 1


@respx.mock
async def test_refused_credentials_halt_the_dispatcher_without_burning_attempts(
    engine: AsyncEngine, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42")})
    message = await add_message(engine, "INV-1", "Paid", "0.00")
    await add_message(engine, "INV-2", "Paid", "0.00")
    crm.answers = [httpx.Response(200, json={"error": "Unauthorized"})]
    d = dispatcher(engine, opencrm_connector(http), clocks=clocks)
    assert await d.run_once() == 0
    row = (await messages(engine))[message]
    assert (row.state, row.attempts, row.last_error) == ("pending", 0, None)
    assert d.halted_reason is not None
    assert "Unauthorized" in d.halted_reason
    async with engine.connect() as conn:
        state, _ = await health.read_state(conn)
    assert state.halted_reason == d.halted_reason
    assert state.halted_at is not None
    calls = len(respx.calls)
    clocks.advance(59)
    assert await d.run_once() == 0
    assert len(respx.calls) == calls  # halted: not a single call
    clocks.advance(1)  # the periodic re-check finds the credentials accepted again
    assert await d.run_once() == 2
    assert d.halted_reason is None
    async with engine.connect() as conn:
        state, _ = await health.read_state(conn)
    assert (state.halted_reason, state.halted_at) == (None, None)
    assert state.last_success_at is not None


@respx.mock
async def test_a_fresh_dispatcher_tries_at_once_and_clears_a_halt_left_by_another(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    FakeCrm({"42": crm_invoice("INV-1", "42")})
    async with engine.begin() as conn:
        await health.record_halt(conn, "OpenCRM refused the API credentials")
    await add_message(engine, "INV-1", "Paid", "0.00")
    assert await dispatcher(engine, opencrm_connector(http)).run_once() == 1
    assert await scalar(engine, "SELECT halted_reason FROM crm_dispatcher_state") is None


@respx.mock
async def test_an_unreachable_crm_is_recorded_for_readiness(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    respx.post(url__regex=rf"{API}/\w+").mock(side_effect=httpx.ConnectError("refused"))
    await add_message(engine, "INV-1", "Paid", "0.00")
    assert await dispatcher(engine, opencrm_connector(http)).run_once() == 1
    async with engine.connect() as conn:
        state, _ = await health.read_state(conn)
    assert state.halted_reason is None
    assert state.last_error is not None
    assert "ConnectError" in state.last_error


# A person's status in the CRM ------------------------------------------------------------------


@respx.mock
async def test_a_protected_status_set_in_the_crm_is_kept_and_recorded(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42", status="Written Off", outstanding="0.00")})
    await add_invoice(engine, "INV-1", status="Paid", outstanding="0.00")
    message = await add_message(engine, "INV-1", "Paid", "0.00", source="sync")
    assert await dispatcher(engine, opencrm_connector(http)).run_once() == 1
    assert crm.edits == []
    row = (await messages(engine))[message]
    assert row.state == "skipped"
    assert "protected status 'Written Off'" in row.last_error
    status = await scalar(engine, "SELECT status FROM invoices WHERE invoice_number = 'INV-1'")
    assert status == "Written Off"
    [entry] = await history(engine, "INV-1")
    assert (entry["from_status"], entry["to_status"], entry["source"], entry["actor"]) == (
        "Paid",
        "Written Off",
        "crm",
        "opencrm",
    )
    assert entry["from_outstanding"] == entry["to_outstanding"]
    assert "in OpenCRM" in entry["reason"]
    seen = await scalar(
        engine, "SELECT times_seen FROM crm_observed_statuses WHERE value = 'Written Off'"
    )
    assert seen == 1
    # No outbox row for a change that came from the CRM.
    assert await scalar(engine, "SELECT count(*) FROM outbox") == 1


@respx.mock
async def test_a_manual_change_overrides_the_crm_protected_status(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42", status="Written Off", outstanding="0.00")})
    await add_invoice(engine, "INV-1", status="Unpaid", gross="100.00")
    message = await add_message(engine, "INV-1", "Unpaid", "100.00", source="manual")
    assert await dispatcher(engine, opencrm_connector(http)).run_once() == 1
    assert crm.edits == [{"crmid": "42", "invoicestatus": "Unpaid", "amount_outstanding": "100.00"}]
    assert (await messages(engine))[message].state == "delivered"
    assert await history(engine, "INV-1") == []


async def test_a_later_change_made_in_ledgerlink_is_not_undone_by_the_crm_status(
    engine: AsyncEngine,
) -> None:
    await add_invoice(engine, "INV-1", status="Cancelled", gross="100.00")
    sync = await add_message(engine, "INV-1", "Paid", "0.00", source="sync")
    await add_message(engine, "INV-1", "Cancelled", "0.00", source="manual")
    async with engine.begin() as conn:
        outcome = await adoption.keep_crm_status(
            conn, invoice_number="INV-1", message_id=sync, crm_status="Written Off", reason="x"
        )
    assert outcome == "person_decided_later"
    assert await scalar(engine, "SELECT status FROM invoices") == "Cancelled"
    assert await history(engine, "INV-1") == []


@pytest.mark.parametrize("payload_status", ["", None])
async def test_a_message_without_anything_to_send_is_skipped(
    engine: AsyncEngine, payload_status: str | None
) -> None:
    message = await add_message(engine, "INV-1", payload_status, None)
    assert await dispatcher(engine, LocalConnector()).run_once() == 1
    row = (await messages(engine))[message]
    assert row.state == "skipped"
    assert "nothing to send" in row.last_error


async def test_a_requeued_dead_letter_cannot_be_claimed_while_its_invoice_is_in_flight(
    engine: AsyncEngine,
) -> None:
    dead = await add_message(engine, "INV-1", "Part Paid", "60.00", state="dead", attempts=5)
    await add_message(engine, "INV-1", "Paid", "0.00")
    async with engine.connect() as first, first.begin():
        [group] = await outbox.claim(first, limit=10, now=None)
        assert [m.id for m in group.messages] == [dead + 1]
        async with engine.begin() as conn:
            await outbox_admin.requeue_dead(conn, dead)
        async with engine.connect() as second, second.begin():
            # Without the invoice lock this claim would wait on the first one: fail, not hang.
            await second.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            # The old message is now the oldest pending one, but its invoice is being delivered.
            assert await outbox.claim(second, limit=10, now=None) == []


@respx.mock
async def test_a_protected_status_kept_from_the_crm_queues_the_invoice_for_reconciliation(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    """Issue 24, item 9: the conflict with Sage must show at once, not at some later sync."""
    FakeCrm({"42": crm_invoice("INV-1", "42", status="written off", outstanding="0.00")})
    await add_invoice(engine, "INV-1", status="Paid", outstanding="0.00")
    await add_message(engine, "INV-1", "Paid", "0.00", source="sync")
    assert await dispatcher(engine, opencrm_connector(http)).run_once() == 1
    assert await scalar(engine, "SELECT status FROM invoices") == "Written Off"
    assert await scalar(engine, "SELECT count(*) FROM dirty_invoices") == 1


@respx.mock
async def test_a_crm_record_holding_what_no_column_can_store_is_still_delivered_to(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    crm = FakeCrm({"42": crm_invoice("INV-1", "42", status="Unpaid\x00" + "x" * 70)})
    await add_invoice(engine, "INV-1", crm_id="42", gross="100.00")
    message = await add_message(engine, "INV-1", "Paid", "0.00")
    assert await dispatcher(engine, opencrm_connector(http)).run_once() == 1
    assert (await messages(engine))[message].state == "delivered"
    assert crm.edits == [{"crmid": "42", "invoicestatus": "Paid", "amount_outstanding": "0.00"}]
    assert await scalar(engine, "SELECT count(*) FROM crm_observed_statuses") == 0
