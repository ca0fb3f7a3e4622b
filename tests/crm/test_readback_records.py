"""What read-back does with what a CRM record says: records it cannot store, amounts it cannot
read, a protected status adopted (and the conflict it makes), statuses that differ only in case
(issue 24, items 5, 9, 13 and 14). Fake OpenCRM on a real port."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service.crm.readiness import readiness_problems
from service.crm.tasks import ReadBackTask, build_readback
from tests.crm.e2e import crm_settings
from tests.support.factories import add_invoice, load, reconcile, settle, si
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.keys import READ_KEY, auth
from tests.support.queries import scalar


def readback(
    engine: AsyncEngine, database_url: str, fake: FakeOpenCrm, http: httpx.AsyncClient
) -> ReadBackTask:
    settings = crm_settings(database_url, fake, crm_readback_seconds=300)
    return build_readback(settings, engine, http)


async def scan(reader: ReadBackTask) -> int:
    for passes in range(100):
        if await reader.run_once() == 0:
            return passes
    raise AssertionError("the read-back never went idle")


async def crm_views(engine: AsyncEngine) -> dict[str, tuple[str | None, Decimal | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT invoice_number, status, outstanding FROM crm_invoices")
        )
        return {r.invoice_number: (r.status, r.outstanding) for r in rows}


async def status_of(engine: AsyncEngine, number: str) -> str:
    value: str = await scalar(
        engine, "SELECT status FROM invoices WHERE invoice_number = :n", n=number
    )
    return value


async def warnings_of(engine: AsyncEngine, database_url: str, fake: FakeOpenCrm) -> str:
    settings = crm_settings(database_url, fake, crm_readback_seconds=300)
    async with engine.connect() as conn:
        _, warnings = await readiness_problems(conn, settings.crm, None)
    return " | ".join(warnings)


def readback_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("ledgerlink_crm_readback_total", {"outcome": outcome})
    return value or 0.0


async def test_records_that_cannot_be_stored_are_skipped_and_reported_and_the_page_goes_on(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    """Issue 24, item 5: one such record failed every pass on a database error; the cursor
    never moved and a person's Written Off on the same page was never adopted."""
    for number in ("INV-1", "INV-2", "INV-3", "INV-4", "INV-5", "INV-6"):
        await add_invoice(engine, number, gross="100.00")
    fake_crm.add_invoice("INV-1", status="S" * 66)
    fake_crm.add_invoice("INV-2", status="Unpaid\u0000")
    fake_crm.add_invoice("INV-3", status="Unpaid\ud800")
    fake_crm.add_invoice("INV-4", status="Part Paid", outstanding=str(10**15))
    fake_crm.add_invoice("INV-5", status="Written Off")
    fake_crm.add_invoice("INV-6", status="Part Paid", outstanding="40.00")
    fake_crm.add_invoice("INV-\u0007", status="Part Paid")
    skipped_before = readback_count("skipped")

    assert await scan(readback(engine, database_url, fake_crm, http)) == 1

    assert await status_of(engine, "INV-5") == "Written Off"
    # A balance past numeric(14,2) is unreadable (NULL); the record is kept.
    assert await crm_views(engine) == {
        "INV-4": ("Part Paid", None),
        "INV-5": ("Written Off", Decimal("0.00")),
        "INV-6": ("Part Paid", Decimal("40.00")),
    }
    async with engine.connect() as conn:
        state = (await conn.execute(sa.text("SELECT * FROM crm_readback_state"))).one()
    assert state.failures == 0
    assert state.scan_started_at is None
    assert state.last_completed_at is not None
    assert state.skipped == 4
    assert readback_count("skipped") - skipped_before == 4
    warnings = await warnings_of(engine, database_url, fake_crm)
    assert "CRM read-back skipped 4 record(s)" in warnings
    assert "\x00" not in warnings
    assert "\ud800" not in warnings


async def test_unreadable_amounts_are_null_not_guessed(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, http: httpx.AsyncClient
) -> None:
    """Issue 24, item 14: "1e400" was read as 1400.00 and {"amount": 5} as 5.00."""
    numbers = ["INV-1", "INV-2", "INV-3", "INV-4", "INV-5"]
    for number in numbers:
        await add_invoice(engine, number, gross="100.00")
    amounts: list[Any] = ["1e400", {"amount": 5}, True, "£1,040.5", 12]
    for number, amount in zip(numbers, amounts, strict=True):
        fake_crm.add_record(
            {"invoice_no": number, "invoicestatus": "Part Paid", "amount_outstanding": amount}
        )
    assert await scan(readback(engine, database_url, fake_crm, http)) == 1
    views = await crm_views(engine)
    assert {n: v[1] for n, v in views.items()} == {
        "INV-1": None,
        "INV-2": None,
        "INV-3": None,
        "INV-4": Decimal("1040.50"),
        "INV-5": Decimal("12.00"),
    }


async def test_a_protected_status_adopted_from_the_crm_queues_the_invoice_and_shows_the_conflict(
    engine: AsyncEngine,
    database_url: str,
    fake_crm: FakeOpenCrm,
    http: httpx.AsyncClient,
    client: httpx.AsyncClient,
) -> None:
    """Issue 24, item 9: a CRM "WRITTEN OFF" on an invoice Sage says is paid was adopted and
    protected, but no conflict showed until some later sync."""
    settings = crm_settings(database_url, fake_crm, crm_readback_seconds=300)
    await load(engine, settings, si(501, "INV-501", "120.00"))
    await load(engine, settings, settle(502, "SR", [(501, "120.00")]))
    await reconcile(engine, settings)
    assert await status_of(engine, "INV-501") == "Paid"
    fake_crm.add_invoice("INV-501", status="WRITTEN OFF", outstanding="0.00")

    assert await scan(readback(engine, database_url, fake_crm, http)) == 1

    assert await status_of(engine, "INV-501") == "Written Off"
    queued = await scalar(
        engine, "SELECT count(*) FROM dirty_invoices WHERE invoice_number = 'INV-501'"
    )
    assert queued == 1
    await reconcile(engine, settings)
    shown = (await client.get("/v1/invoices/INV-501", headers=auth(READ_KEY))).json()
    assert (shown["status"], shown["protected"]) == ("Written Off", True)
    assert [h["source"] for h in shown["history"]] == ["sync", "crm"]
    assert "Paid" in shown["conflict"]
    conflicts = await client.get("/v1/reconciliation/report?kind=conflicts", headers=auth(READ_KEY))
    assert [i["invoice_number"] for i in conflicts.json()["items"]] == ["INV-501"]


async def test_statuses_differing_only_in_case_are_not_drift(
    engine: AsyncEngine,
    database_url: str,
    fake_crm: FakeOpenCrm,
    http: httpx.AsyncClient,
    client: httpx.AsyncClient,
) -> None:
    """Issue 24, item 13: adoption ignores case, drift did not ("Written Off" vs "WRITTEN
    OFF" listed as drift, which the docs say cannot happen)."""
    await add_invoice(engine, "INV-1", status="Written Off", outstanding="0.00")
    await add_invoice(engine, "INV-2", status="Paid", outstanding="0.00")
    await add_invoice(engine, "INV-3", status="Paid", outstanding="0.00")
    fake_crm.add_invoice("INV-1", status="WRITTEN OFF", outstanding="0.00")
    fake_crm.add_invoice("INV-2", status="paid", outstanding="0.00")
    fake_crm.add_invoice("INV-3", status="Part Paid", outstanding="0.00")
    assert await scan(readback(engine, database_url, fake_crm, http)) == 1
    drift = await client.get("/v1/reconciliation/report?kind=crm_drift", headers=auth(READ_KEY))
    assert [i["invoice_number"] for i in drift.json()["items"]] == ["INV-3"]
