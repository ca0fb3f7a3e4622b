"""Each reconciliation rule with realistic Sage postings (docs/EXPORTER.md,
"What Sage keeps"), loaded through ingestion
and reconciled by the worker's code path."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.support.factories import WRITE_OFF, allocation, load, reconcile, settle, si
from tests.support.queries import execute, history, invoice, outbox
from tests.support.settings import make_settings


async def test_wizard_write_off_of_one_invoice(engine: AsyncEngine, settings: Settings) -> None:
    # Customers > Write offs > "write off transactions": one SC per invoice, reference = the
    # invoice's own, details "Bad Debt Write Off", N/C 8100, T9, allocated in full.
    await load(engine, settings, si(1001, "INV-1001", "240.00"))
    await reconcile(engine, settings)
    await load(
        engine, settings, settle(2001, "SC", [(1001, "240.00")], reference="INV-1001", **WRITE_OFF)
    )
    await reconcile(engine, settings)

    row = await invoice(engine, "INV-1001")
    assert row["status"] == "Written Off"
    assert row["derived_state"] == "written_off"
    assert row["outstanding"] == Decimal("0.00")
    assert row["written_off"] == Decimal("240.00")
    assert (row["paid"], row["credited"], row["discounted"]) == (Decimal("0.00"),) * 3
    assert row["dirty_since"] is None
    changes = await history(engine, "INV-1001")
    assert [(h["from_status"], h["to_status"]) for h in changes] == [("Unpaid", "Written Off")]
    assert changes[0]["source"] == "sync"
    assert changes[0]["actor"] == "worker"
    assert changes[0]["run_id"] is not None
    assert "written off 240.00" in changes[0]["reason"]
    messages = await outbox(engine, "INV-1001")
    # First reconcile tells the CRM the balance; the write-off then changes the status.
    assert [m["payload"] for m in messages] == [
        {"status": "Unpaid", "outstanding": "240.00", "history_id": None, "source": "sync"},
        {
            "status": "Written Off",
            "outstanding": "0.00",
            "history_id": changes[0]["id"],
            "source": "sync",
        },
    ]
    assert all(m["source"] == "sync" for m in messages)


async def test_account_write_off_baddbt_across_several_invoices(
    engine: AsyncEngine, settings: Settings
) -> None:
    # "Write off account balance": payments on account are settled first, then ONE SC
    # reference BADDBT allocated across every remaining invoice.
    await load(
        engine,
        settings,
        si(11, "INV-11", "100.00"),
        si(12, "INV-12", "200.00"),
        si(13, "INV-13", "50.00"),
        settle(20, "SA", [(12, "80.00")], details="Payment on account"),
        settle(
            21,
            "SC",
            [(11, "100.00"), (12, "120.00"), (13, "50.00")],
            reference="BADDBT",
            **WRITE_OFF,
        ),
    )
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-11"))["status"] == "Written Off"
    inv12 = await invoice(engine, "INV-12")
    assert inv12["status"] == "Paid/Written Off"
    assert (inv12["paid"], inv12["written_off"]) == (Decimal("80.00"), Decimal("120.00"))
    assert (await invoice(engine, "INV-13"))["status"] == "Written Off"


async def test_manual_write_off_on_8105_with_free_text(
    engine: AsyncEngine, settings: Settings
) -> None:
    # A batch credit note on N/C 8105 whose details say nothing about bad debt: the nominal
    # code is the reliable signal.
    await load(
        engine,
        settings,
        si(31, "INV-31", "99.99"),
        settle(
            32,
            "SC",
            [(31, "99.99")],
            reference="CN0042",
            details="Customer in administration",
            nominal="8105",
        ),
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-31")
    assert (row["status"], row["written_off"]) == ("Written Off", Decimal("99.99"))


async def test_write_off_recognised_by_details_when_nominal_is_not_bad_debt(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(
        engine,
        settings,
        si(41, "INV-41", "10.00"),
        settle(42, "SC", [(41, "10.00")], details="write-off small balance", nominal="4000"),
    )
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-41"))["status"] == "Written Off"


async def test_credit_note_to_4000_is_a_credit_not_a_write_off(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(
        engine,
        settings,
        si(51, "INV-51", "300.00"),
        si(52, "INV-52", "300.00"),
        settle(
            53, "SC", [(51, "300.00")], reference="CN001", details="Returned goods", nominal="4000"
        ),
        settle(
            54,
            "SC",
            [(52, "100.00")],
            reference="CN002",
            details="Price adjustment",
            nominal="4000",
        ),
    )
    await reconcile(engine, settings)
    full = await invoice(engine, "INV-51")
    assert (full["status"], full["credited"], full["written_off"]) == (
        "Paid",
        Decimal("300.00"),
        Decimal("0.00"),
    )
    part = await invoice(engine, "INV-52")
    assert (part["status"], part["outstanding"]) == ("Part Paid", Decimal("200.00"))


async def test_credit_note_and_write_off_together_are_paid_written_off(
    engine: AsyncEngine, settings: Settings
) -> None:
    # An invoice of 100.00: the customer returns 40.00 of the goods (a credit note to sales,
    # 4000), and the 60.00 left is written off with the wizard (8100). Credited counts as
    # settled by the customer, so this is not a plain write-off.
    await load(
        engine,
        settings,
        si(91, "INV-91", "100.00"),
        settle(
            92, "SC", [(91, "40.00")], reference="CN091", details="Returned goods", nominal="4000"
        ),
        settle(93, "SC", [(91, "60.00")], reference="INV-91", **WRITE_OFF),
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-91")
    assert (row["status"], row["derived_state"]) == ("Paid/Written Off", "paid_written_off")
    assert (row["credited"], row["written_off"], row["outstanding"]) == (
        Decimal("40.00"),
        Decimal("60.00"),
        Decimal("0.00"),
    )
    assert (row["paid"], row["discounted"]) == (Decimal("0.00"), Decimal("0.00"))


async def test_credit_note_with_plain_details_but_reference_baddbt_is_a_write_off(
    engine: AsyncEngine, settings: Settings
) -> None:
    # A manual write-off keyed as an ordinary credit note: sales nominal, details that say
    # nothing, but the reference the wizard gives an account write-off (BADDBT).
    await load(
        engine,
        settings,
        si(95, "INV-95", "75.00"),
        settle(96, "SC", [(95, "75.00")], reference="BADDBT", details="Credit", nominal="4000"),
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-95")
    assert (row["status"], row["derived_state"]) == ("Written Off", "written_off")
    assert (row["written_off"], row["credited"], row["outstanding"]) == (
        Decimal("75.00"),
        Decimal("0.00"),
        Decimal("0.00"),
    )


async def test_receipt_plus_discount(engine: AsyncEngine, settings: Settings) -> None:
    await load(
        engine,
        settings,
        si(61, "INV-61", "100.00"),
        settle(62, "SR", [(61, "97.50")], details="BACS"),
        settle(63, "SD", [(61, "2.50")], details="Early settlement discount", nominal="4009"),
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-61")
    assert (row["status"], row["paid"], row["discounted"], row["outstanding"]) == (
        "Paid",
        Decimal("97.50"),
        Decimal("2.50"),
        Decimal("0.00"),
    )


async def test_overpayment_is_paid_and_reported_then_refund_settles_it(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, si(71, "INV-71", "100.00"), settle(72, "SR", [(71, "120.00")]))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-71")
    assert (row["status"], row["outstanding"]) == ("Paid", Decimal("-20.00"))

    # The refund (SP) allocated back reduces paid.
    await load(engine, settings, settle(73, "SP", [(71, "20.00")], details="Refund"))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-71")
    assert (row["status"], row["paid"], row["outstanding"]) == (
        "Paid",
        Decimal("100.00"),
        Decimal("0.00"),
    )
    # A balance-only change reaches the CRM without a history row.
    assert len(await history(engine, "INV-71")) == 1
    assert (await outbox(engine, "INV-71"))[-1]["payload"] == {
        "status": "Paid",
        "outstanding": "0.00",
        "history_id": None,
        "source": "sync",
    }


async def test_small_overpayment_write_off_si_is_not_an_invoice(
    engine: AsyncEngine, settings: Settings
) -> None:
    # The customer paid 100.03 on a 100.00 invoice; the wizard's "small overpayments" posts an
    # SI "Bad Debt Write Off" on 8100 against the receipt. It is not a customer invoice.
    await load(
        engine,
        settings,
        si(81, "INV-81", "100.00"),
        settle(82, "SR", [(81, "100.00")], gross="100.03"),
        si(83, "BADDBT", "0.03", nominal="8100", details="Bad Debt Write Off"),
    )
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-81"))["status"] == "Paid"
    with pytest.raises(AssertionError, match="no invoice BADDBT"):
        await invoice(engine, "BADDBT")


@pytest.mark.parametrize(
    ("mode", "status", "state"),
    [("classify", "Paid/Written Off", "paid_written_off"), ("sagelink", "Paid", "paid")],
)
async def test_part_payment_then_write_off_in_both_modes(
    engine: AsyncEngine, database_url: str, mode: str, status: str, state: str
) -> None:
    config = make_settings(database_url, write_off_mode=mode)
    await load(engine, config, si(91, "INV-91", "500.00"), settle(92, "SR", [(91, "300.00")]))
    await reconcile(engine, config)
    assert (await invoice(engine, "INV-91"))["status"] == "Part Paid"
    await load(engine, config, settle(93, "SC", [(91, "200.00")], reference="BADDBT", **WRITE_OFF))
    await reconcile(engine, config)
    row = await invoice(engine, "INV-91")
    assert (row["status"], row["derived_state"]) == (status, state)
    # The write-off is never hidden in the figures, whatever the mode shows.
    assert (row["paid"], row["written_off"]) == (Decimal("300.00"), Decimal("200.00"))


async def test_sagelink_mode_shows_a_write_off_as_paid(
    engine: AsyncEngine, database_url: str
) -> None:
    config = make_settings(database_url, write_off_mode="sagelink")
    await load(
        engine, config, si(95, "INV-95", "40.00"), settle(96, "SC", [(95, "40.00")], **WRITE_OFF)
    )
    await reconcile(engine, config)
    row = await invoice(engine, "INV-95")
    assert (row["status"], row["written_off"]) == ("Paid", Decimal("40.00"))
    assert "shown as in SageLink" in (await history(engine, "INV-95"))[0]["reason"]


async def test_a_posting_restored_or_retyped_in_sage_counts_as_it_is_now(
    engine: AsyncEngine, settings: Settings
) -> None:
    """An allocation's copy of its posting's type and deleted flag follows every re-send."""
    await load(engine, settings, si(111, "INV-111", "100.00"))
    await load(engine, settings, settle(112, "SR", [(111, "100.00")], deleted=True))
    await load(engine, settings, settle(112, "SR", [(111, "100.00")]))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-111")
    assert (row["status"], row["paid"], row["written_off"]) == (
        "Paid",
        Decimal("100.00"),
        Decimal("0.00"),
    )
    # The same transaction re-sent as a bad-debt write-off credit.
    await load(
        engine,
        settings,
        settle(112, "SC", [(111, "100.00")], **WRITE_OFF),
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-111")
    assert (row["status"], row["paid"], row["written_off"]) == (
        "Written Off",
        Decimal("0.00"),
        Decimal("100.00"),
    )


async def test_deleted_and_edited_receipts(engine: AsyncEngine, settings: Settings) -> None:
    await load(engine, settings, si(101, "INV-101", "100.00"), settle(102, "SR", [(101, "100.00")]))
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-101"))["status"] == "Paid"

    # Edited: the receipt is re-sent for 40.00 (same tran_number replaces it).
    await load(engine, settings, settle(102, "SR", [(101, "40.00")]))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-101")
    assert (row["status"], row["outstanding"]) == ("Part Paid", Decimal("60.00"))

    # Deleted in Sage: it counts for nothing.
    await load(engine, settings, settle(102, "SR", [(101, "40.00")], deleted=True))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-101")
    assert (row["status"], row["paid"], row["outstanding"]) == (
        "Unpaid",
        Decimal("0.00"),
        Decimal("100.00"),
    )
    # A deleted allocation on a live posting counts for nothing either.
    await load(engine, settings, settle(103, "SR", [allocation(101, "100.00", deleted=True)]))
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-101"))["status"] == "Unpaid"
    assert [h["to_status"] for h in await history(engine, "INV-101")] == [
        "Paid",
        "Part Paid",
        "Unpaid",
    ]


async def test_allocation_arriving_before_its_invoice(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, settle(111, "SR", [(110, "75.00")]))
    await reconcile(engine, settings)
    await load(engine, settings, si(110, "INV-110", "75.00"))
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-110"))["status"] == "Paid"


async def test_sage_outstanding_is_the_balance_and_a_difference_is_a_mismatch(
    engine: AsyncEngine, settings: Settings
) -> None:
    # Sage says 0 outstanding but we hold no allocation (e.g. cleared to history): Paid, and
    # the mismatch is recorded. Sage says the full gross while we hold a receipt: Unpaid.
    await load(
        engine,
        settings,
        si(121, "INV-121", "80.00", outstanding="0.00"),
        si(122, "INV-122", "80.00", outstanding="80.00"),
        si(123, "INV-123", "80.00", outstanding="30.00"),
        settle(124, "SR", [(122, "80.00"), (123, "50.00")]),
    )
    await reconcile(engine, settings)
    paid = await invoice(engine, "INV-121")
    assert (
        paid["status"],
        paid["outstanding"],
        paid["computed_outstanding"],
        paid["mismatch"],
    ) == (
        "Paid",
        Decimal("0.00"),
        Decimal("80.00"),
        True,
    )
    unpaid = await invoice(engine, "INV-122")
    assert (unpaid["status"], unpaid["outstanding"], unpaid["mismatch"]) == (
        "Unpaid",
        Decimal("80.00"),
        True,
    )
    agreed = await invoice(engine, "INV-123")
    assert (agreed["status"], agreed["outstanding"], agreed["mismatch"]) == (
        "Part Paid",
        Decimal("30.00"),
        False,
    )


async def test_deleted_invoice_is_left_as_it_was_with_a_warning(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, si(131, "INV-131", "10.00"), settle(132, "SR", [(131, "10.00")]))
    await reconcile(engine, settings)
    await load(engine, settings, si(131, "INV-131", "10.00", deleted=True))
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-131")
    assert (row["status"], row["outstanding"], row["deleted"]) == ("Paid", Decimal("0.00"), True)
    assert "deleted" in row["warning"]
    assert row["dirty_since"] is None


async def test_configured_labels_are_written(engine: AsyncEngine, database_url: str) -> None:
    config = make_settings(database_url, status_labels='{"written_off": "Bad Debt"}')
    await execute(engine, "INSERT INTO picklist_values (value, position) VALUES ('Bad Debt', 99)")
    await load(
        engine, config, si(141, "INV-141", "5.00"), settle(142, "SC", [(141, "5.00")], **WRITE_OFF)
    )
    await reconcile(engine, config)
    assert (await invoice(engine, "INV-141"))["status"] == "Bad Debt"


async def test_zero_value_invoice_is_paid(engine: AsyncEngine, settings: Settings) -> None:
    await load(engine, settings, si(151, "INV-151", "0.00"))
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-151"))["status"] == "Paid"


async def test_duplicate_reference_uses_the_later_si(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(
        engine,
        settings,
        si(161, "INV-161", "10.00"),
        si(162, "INV-161", "20.00"),
        settle(163, "SR", [(161, "10.00")]),
        settle(164, "SR", [(162, "5.00")]),
    )
    await reconcile(engine, settings)
    row = await invoice(engine, "INV-161")
    assert (row["sage_tran_number"], row["duplicate_of"]) == (162, 161)
    assert (row["status"], row["outstanding"]) == ("Part Paid", Decimal("15.00"))
