"""Finding invoices in a real-sized CRM: paging past the first 100, two names for the number
field, a misconfigured field, and a firewall 403 (dispatcher and fake OpenCRM on a real port)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.crm.opencrm.connector import OpenCrmConnector
from service.crm.readiness import readiness_problems
from tests.crm.e2e import crm_settings
from tests.crm.support import Clocks, dispatcher
from tests.crm.support import opencrm_connector as connector_for
from tests.support.factories import add_invoice, add_message
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.queries import messages, scalar

COUNT = 260
NUMBERS = [f"INV-{i:04d}" for i in range(COUNT)]
TARGET = NUMBERS[230]


@pytest.fixture
def renamed_crm() -> Iterator[FakeOpenCrm]:
    """A CRM whose invoice number is `invoice_number` in a query_string, `invoice_no` in records."""
    fake = FakeOpenCrm(query_names={"invoice_number": "invoice_no"})
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


async def company(engine: AsyncEngine, fake: FakeOpenCrm) -> None:
    for number in NUMBERS:
        await add_invoice(engine, number, gross="100.00")
        fake.add_invoice(number, status="Unpaid", outstanding="100.00")


def connector(fake: FakeOpenCrm, http: httpx.AsyncClient, **fields: str) -> OpenCrmConnector:
    return connector_for(http, base_url=fake.base_url, **fields)  # type: ignore[arg-type]


def list_calls(fake: FakeOpenCrm) -> list[dict[str, str]]:
    return [c.params for c in fake.calls("get_invoice_list")]


async def readiness(engine: AsyncEngine, database_url: str, fake: FakeOpenCrm) -> tuple[str, str]:
    settings = crm_settings(database_url, fake, crm_readback_seconds=300)
    async with engine.connect() as conn:
        fatal, warnings = await readiness_problems(conn, settings.crm, None)
    return " | ".join(fatal), " | ".join(warnings)


async def test_an_invoice_beyond_the_first_page_is_found_and_updated_when_the_filter_is_ignored(
    engine: AsyncEngine, fake_crm: FakeOpenCrm, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    await company(engine, fake_crm)
    message = await add_message(engine, TARGET, "Paid", "0.00")
    # A query name the CRM does not know: it answers with every invoice, 100 at a time.
    wrong_query = connector(
        fake_crm, http, number_query="sage_invoice_no", number_record="invoice_no"
    )
    assert await dispatcher(engine, wrong_query, clocks=clocks).run_once() == 1

    assert (await messages(engine))[message].state == "delivered"
    assert [(e.status, e.outstanding) for e in fake_crm.edits_for(TARGET)] == [("Paid", "0.00")]
    assert len(fake_crm.edits) == 1
    # What the CRM shows now is remembered for the crm_drift report.
    async with engine.connect() as conn:
        view = (
            await conn.execute(
                sa.text("SELECT status, outstanding FROM crm_invoices WHERE invoice_number = :n"),
                {"n": TARGET},
            )
        ).one()
    assert tuple(view) == ("Paid", Decimal("0.00"))
    calls = list_calls(fake_crm)
    assert [(c["limit_start"], c["limit_end"]) for c in calls] == [
        ("0", "100"),
        ("100", "200"),
        ("200", "300"),
    ]
    # Every invoice met on the way is cached: the next change of any of them needs no search.
    assert await scalar(engine, "SELECT count(*) FROM invoices WHERE crm_id IS NOT NULL") == COUNT
    await add_message(engine, NUMBERS[150], "Paid", "0.00")
    clocks.advance(1)
    assert await dispatcher(engine, wrong_query, clocks=clocks).run_once() == 1
    assert len(list_calls(fake_crm)) == 3
    assert [e.status for e in fake_crm.edits_for(NUMBERS[150])] == ["Paid"]


async def test_two_names_for_the_number_field_find_the_invoice_with_one_filtered_call(
    engine: AsyncEngine, renamed_crm: FakeOpenCrm, http: httpx.AsyncClient, clocks: Clocks
) -> None:
    await company(engine, renamed_crm)
    await add_message(engine, TARGET, "Part Paid", "60.00")
    both = connector(renamed_crm, http, number_query="invoice_number", number_record="invoice_no")
    assert await dispatcher(engine, both, clocks=clocks).run_once() == 1
    assert [c["query_string"] for c in list_calls(renamed_crm)] == ["invoice_number|=|INV-0230"]
    assert [e.status for e in renamed_crm.edits_for(TARGET)] == ["Part Paid"]


async def test_records_without_the_number_field_halt_with_one_clear_error_not_dead_letters(
    engine: AsyncEngine,
    database_url: str,
    renamed_crm: FakeOpenCrm,
    http: httpx.AsyncClient,
    clocks: Clocks,
) -> None:
    await company(engine, renamed_crm)
    ids = [await add_message(engine, n, "Paid", "0.00") for n in NUMBERS[:3]]
    # The query name is right, but it is also taken as the record key: records do not carry it.
    only_query = connector(renamed_crm, http, number_query="invoice_number")
    d = dispatcher(engine, only_query, clocks=clocks)
    assert await d.run_once() == 0
    rows = await messages(engine)
    assert [(rows[i].state, rows[i].attempts) for i in ids] == [("pending", 0)] * 3
    assert renamed_crm.edits == []
    assert d.halted_reason is not None
    assert "carry no field 'invoice_number'" in d.halted_reason
    assert "LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD" in d.halted_reason
    assert "invoice_no" in d.halted_reason  # the fields it does carry are named
    fatal, _ = await readiness(engine, database_url, renamed_crm)
    assert "LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD" in fatal


async def test_a_firewall_403_is_reported_as_such_not_as_refused_credentials(
    engine: AsyncEngine,
    database_url: str,
    fake_crm: FakeOpenCrm,
    http: httpx.AsyncClient,
    clocks: Clocks,
) -> None:
    fake_crm.add_invoice("INV-1")
    await add_invoice(engine, "INV-1", gross="100.00")
    message = await add_message(engine, "INV-1", "Paid", "0.00")
    # httpx's own user agent, "python-httpx/...": OpenCRM's firewall turns it away.
    blocked = connector(fake_crm, http, user_agent=f"python-httpx/{httpx.__version__}")
    d = dispatcher(engine, blocked, clocks=clocks)
    assert await d.run_once() == 1
    assert fake_crm.calls()[-1].answered == 403
    row = (await messages(engine))[message]
    assert (row.state, row.attempts) == ("pending", 1)
    assert "firewall" in row.last_error
    assert "not a credentials error" in row.last_error
    assert "python-httpx" in row.last_error
    assert d.halted_reason is None
    fatal, warnings = await readiness(engine, database_url, fake_crm)
    assert fatal == ""
    assert "firewall" in warnings
    assert "LEDGERLINK_OPENCRM_KEY" not in warnings


async def test_a_crm_ignoring_paging_fails_the_delivery_with_backoff_and_readiness_says_so(
    engine: AsyncEngine,
    database_url: str,
    fake_crm: FakeOpenCrm,
    http: httpx.AsyncClient,
    clocks: Clocks,
) -> None:
    """Issue 24, item 3: the filter ignored and `limit_start` too, the lookup of an invoice
    past the first page paged for ever with the message's transaction open."""
    await company(engine, fake_crm)
    fake_crm.ignore_paging = True
    message = await add_message(engine, TARGET, "Paid", "0.00")
    wrong_query = connector(
        fake_crm, http, number_query="sage_invoice_no", number_record="invoice_no"
    )
    assert await dispatcher(engine, wrong_query, clocks=clocks).run_once() == 1
    row = (await messages(engine))[message]
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.next_attempt_at > clocks.now
    assert "ignores paging" in row.last_error
    assert len(list_calls(fake_crm)) == 2
    assert fake_crm.edits == []
    fatal, warnings = await readiness(engine, database_url, fake_crm)
    assert fatal == ""
    assert "ignores paging" in warnings
