"""Protected statuses are never changed by a sync; disagreements become conflicts. A derived
label missing from the picklist is never written."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from service.picklist.service import verify
from service.settings import Settings
from tests.support.factories import WRITE_OFF, load, reconcile, set_status, settle, si
from tests.support.queries import execute, history, invoice, outbox
from tests.support.settings import make_settings


async def test_protected_invoice_is_never_changed_and_cash_arriving_is_a_conflict(
    engine: AsyncEngine, settings: Settings
) -> None:
    # OpenCRM's manual process: a person set "Written Off" (step 4); later syncs ignore it.
    await load(engine, settings, si(1, "INV-1", "100.00"))
    await reconcile(engine, settings)
    await set_status(engine, "INV-1", "Written Off")
    await reconcile(engine, settings)
    before = await invoice(engine, "INV-1")
    messages_before = len(await outbox(engine, "INV-1"))

    await load(engine, settings, settle(2, "SR", [(1, "60.00")]))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-1")
    assert (row["status"], row["outstanding"], row["paid"]) == (
        "Written Off",
        before["outstanding"],
        before["paid"],
    )
    assert row["computed_outstanding"] == Decimal("40.00")
    assert "Part Paid" in (row["conflict"] or "")
    assert await history(engine, "INV-1") == []
    assert len(await outbox(engine, "INV-1")) == messages_before


async def test_write_off_deleted_after_the_sync_wrote_it_is_a_conflict(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(
        engine, settings, si(1, "INV-1", "100.00"), settle(2, "SC", [(1, "100.00")], **WRITE_OFF)
    )
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-1"))["status"] == "Written Off"

    # The accountant deletes the write-off in Sage: the status is protected now, so the sync
    # leaves it and lists the invoice for a human.
    await load(engine, settings, settle(2, "SC", [(1, "100.00")], deleted=True, **WRITE_OFF))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-1")
    assert (row["status"], row["outstanding"], row["written_off"]) == (
        "Written Off",
        Decimal("0.00"),
        Decimal("100.00"),
    )
    assert "Unpaid" in row["conflict"]

    # The person releases it (PATCH marks it dirty): the sync writes what the postings say
    # and the conflict goes away.
    await set_status(engine, "INV-1", "Unpaid")
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-1")
    assert (row["status"], row["outstanding"], row["conflict"]) == (
        "Unpaid",
        Decimal("100.00"),
        None,
    )


async def test_overpayment_on_top_of_a_write_off_is_a_conflict(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(
        engine,
        settings,
        si(1, "INV-1", "100.00"),
        settle(2, "SR", [(1, "50.00")]),
        settle(3, "SC", [(1, "50.00")], **WRITE_OFF),
    )
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-1"))["status"] == "Paid/Written Off"
    await load(engine, settings, settle(4, "SR", [(1, "50.00")]))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-1")
    assert row["status"] == "Paid/Written Off"
    assert "on top of the write-off" in row["conflict"]


async def test_custom_protected_status_is_left_alone_without_conflict(
    engine: AsyncEngine, database_url: str
) -> None:
    config = make_settings(
        database_url, protected_statuses="Written Off,Paid/Written Off,Cancelled"
    )
    await load(engine, config, si(1, "INV-1", "100.00"))
    await reconcile(engine, config)
    await set_status(engine, "INV-1", "Cancelled")
    await load(engine, config, settle(2, "SR", [(1, "100.00")]))
    await reconcile(engine, config)
    row = await invoice(engine, "INV-1")
    assert (row["status"], row["conflict"], row["derived_state"]) == ("Cancelled", None, "paid")


async def test_missing_picklist_label_falls_back_to_sagelink_with_a_warning(
    engine: AsyncEngine, settings: Settings
) -> None:
    await execute(engine, "DELETE FROM picklist_values WHERE value = 'Written Off'")
    async with engine.connect() as conn:
        assert (await verify(conn, settings)).missing == ["Written Off"]
    await load(
        engine, settings, si(1, "INV-1", "30.00"), settle(2, "SC", [(1, "30.00")], **WRITE_OFF)
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-1")
    assert (row["status"], row["derived_state"]) == ("Paid", "written_off")
    assert "Written Off is not in the status picklist" in row["warning"]
    assert (
        "Written Off is not in the status picklist" in (await history(engine, "INV-1"))[0]["reason"]
    )

    # Once the label is added, the next reconcile writes it and clears the warning.
    await execute(
        engine, "INSERT INTO picklist_values (value, position) VALUES ('Written Off', 50)"
    )
    await execute(
        engine, "INSERT INTO dirty_invoices (invoice_number) SELECT invoice_number FROM invoices"
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-1")
    assert (row["status"], row["warning"]) == ("Written Off", None)


async def test_label_and_fallback_both_missing_leaves_the_status(
    engine: AsyncEngine, settings: Settings
) -> None:
    await execute(engine, "DELETE FROM picklist_values WHERE value = 'Part Paid'")
    await load(engine, settings, si(1, "INV-1", "30.00"), settle(2, "SR", [(1, "10.00")]))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-1")
    # The balance is still true; the status cannot be written.
    assert (row["status"], row["outstanding"], row["derived_state"]) == (
        "Unpaid",
        Decimal("20.00"),
        "part_paid",
    )
    assert "status left as Unpaid" in row["warning"]
    assert await history(engine, "INV-1") == []
