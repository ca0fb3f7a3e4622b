"""Money as Sage keeps it, through the webhook and the worker: foreign-currency invoices in
their own currency, Sage's automatic exchange revaluations (REVAL) as exchange adjustments,
contras, and base-currency invoices exactly as before.

The postings are shaped as Sage 50 UK writes them (Zynk's published schema: AUDIT_HEADER's
GROSS_AMOUNT / OUTSTANDING in pounds beside FOREIGN_GROSS_AMOUNT / FOREIGN_OUTSTANDING,
FOREIGN_RATE in dollars per pound, AUDIT_USAGE.AMOUNT in pounds beside FOREIGN_AMOUNT; the
revaluation and contra entries as Sage's knowledge base describes them, docs/CURRENCY.md).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.reconcile import tasks
from service.settings import Settings
from tests.support.factories import Posting, allocation, deliver, in_currency, posting, settle, si
from tests.support.keys import READ_KEY, auth
from tests.support.queries import outbox

ACCOUNT = "YANK01"  # a customer whose Sage record is in US dollars


def usd_invoice(tran: int, ref: str, dollars: str, pounds: str, sage: tuple[str, str]) -> Posting:
    """Export sales: zero-rated, so net = gross; sales nominal 4000. `sage` is Sage's
    (OUTSTANDING, FOREIGN_OUTSTANDING)."""
    return si(
        tran,
        ref,
        pounds,
        account=ACCOUNT,
        day="2026-08-01",
        details="Consultancy (USD)",
        outstanding=sage[0],
        **in_currency(dollars, rate="1.25", outstanding=sage[1]),
    )


def usd_receipt(
    tran: int, pounds: str, dollars: str, rate: str, to: list[tuple[int, str, str]]
) -> Posting:
    """Into the US dollar bank account (1210 here), at the day's rate; each of `to` is
    (invoice tran_number, AUDIT_USAGE.AMOUNT, AUDIT_USAGE.FOREIGN_AMOUNT)."""
    return settle(
        tran,
        "SR",
        [allocation(invoice, amount, foreign_amount=foreign) for invoice, amount, foreign in to],
        gross=pounds,
        account=ACCOUNT,
        day="2026-09-01",
        reference="BACS",
        nominal="1210",
        details="Sales Receipt",
        **in_currency(dollars, rate=rate),
    )


def revaluation(
    tran: int, type_: str, pounds: str, to: str, allocations: list[tuple[int, str, str]]
) -> Posting:
    """Sage's automatic revaluation: REVAL, exchange rate variance nominal 7906, T9, dated
    with the receipt; it moves pounds only (no dollars)."""
    return posting(
        tran,
        type_,
        pounds,
        account=ACCOUNT,
        day="2026-09-01",
        reference="REVAL",
        nominal="7906",
        details=f"Currency Reval {pounds} to {to}",
        allocations=[
            allocation(invoice, amount, foreign_amount=foreign)
            for invoice, amount, foreign in allocations
        ],
        **in_currency("0.00", rate="1.28"),
    )


async def run_worker(engine: AsyncEngine, settings: Settings, database_url: str) -> None:
    async with httpx.AsyncClient() as http:
        ctx = WorkerContext(settings=settings, engine=engine, http=http)
        reconcile = tasks.Reconcile(ctx)
        while await reconcile.run_once():
            pass


async def read(client: httpx.AsyncClient, number: str) -> dict[str, Any]:
    response = await client.get(f"/v1/invoices/{number}", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def sage_company(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, database_url: str
) -> None:
    postings = [
        # $2,000 at 1.25 = 1,600.00; $500 received at the same rate: $1,500 still owed.
        usd_invoice(1, "30001", "2000.00", "1600.00", sage=("1200.00", "1500.00")),
        usd_receipt(10, "400.00", "500.00", "1.25", [(1, "400.00", "500.00")]),
        # $1,600 at 1.25 = 1,280.00, paid in full at 1.28 = 1,250.00: Sage revalues the
        # 30.00 the receipt fell short by with an SC allocated to the invoice.
        usd_invoice(2, "30002", "1600.00", "1280.00", sage=("0.00", "0.00")),
        usd_receipt(11, "1250.00", "1600.00", "1.28", [(2, "1250.00", "1600.00")]),
        revaluation(12, "SC", "30.00", "SI 2", [(2, "30.00", "0.00")]),
        # $1,000 at 1.25 = 800.00, paid at 1.20 = 833.33: the receipt brought more pounds,
        # 33.33 is left on it, and Sage revalues that with an SI (not a customer invoice).
        usd_invoice(3, "30003", "1000.00", "800.00", sage=("0.00", "0.00")),
        usd_receipt(
            13, "833.33", "1000.00", "1.20", [(3, "800.00", "1000.00"), (14, "33.33", "0.00")]
        ),
        revaluation(14, "SI", "33.33", "SR 13", []),
    ]
    response = await deliver(client, *postings)
    assert response.status_code == 202, response.text
    await run_worker(engine, settings, database_url)


@pytest.mark.usefixtures("sage_company")
async def test_part_paid_dollar_invoice_owes_dollars(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = await read(client, "30001")
    assert (body["currency"], body["gross"], body["outstanding"]) == ("USD", "2000.00", "1500.00")
    assert body["amounts"] == {
        "paid": "500.00",
        "discounted": "0.00",
        "written_off": "0.00",
        "credited": "0.00",
    }
    assert body["base"] == {
        "currency": "GBP",
        "gross": "1600.00",
        "outstanding": "1200.00",
        "paid": "400.00",
        "discounted": "0.00",
        "written_off": "0.00",
        "credited": "0.00",
        "exchange_adjustment": "0.00",
    }
    assert (body["status"], body["derived_state"], body["mismatch"]) == (
        "Part Paid",
        "part_paid",
        False,
    )
    # The CRM's Amount Outstanding is what the customer owes, in the invoice's currency.
    messages = await outbox(engine, "30001")
    assert [m["payload"]["outstanding"] for m in messages] == ["1500.00"]
    assert "1500.00 USD" in body["history"][0]["reason"]


@pytest.mark.usefixtures("sage_company")
async def test_revaluation_is_an_exchange_adjustment_not_a_credit(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = await read(client, "30002")
    assert (body["currency"], body["gross"], body["outstanding"]) == ("USD", "1600.00", "0.00")
    assert body["amounts"]["paid"] == "1600.00"
    assert body["amounts"]["credited"] == "0.00"
    assert body["base"]["paid"] == "1250.00"
    assert body["base"]["credited"] == "0.00"
    assert body["base"]["exchange_adjustment"] == "30.00"
    assert body["base"]["outstanding"] == "0.00"
    assert (body["status"], body["mismatch"]) == ("Paid", False)
    assert [m["payload"]["outstanding"] for m in await outbox(engine, "30002")] == ["0.00"]


@pytest.mark.usefixtures("sage_company")
async def test_the_invoice_page_shows_a_revaluation_as_an_exchange_adjustment(
    client: httpx.AsyncClient,
) -> None:
    """The allocations listed on the invoice count as the reconcile counted them: Sage's
    REVAL SC is the exchange adjustment, not a credit."""
    body = await read(client, "30002")
    kinds = {(a["type"], a["reference"]): a["kind"] for a in body["allocations"]}
    assert kinds == {("SR", "BACS"): "paid", ("SC", "REVAL"): "exchange_adjustment"}


@pytest.mark.usefixtures("sage_company")
async def test_revaluation_si_is_not_an_invoice(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/invoices/REVAL", headers=auth(READ_KEY))
    assert response.status_code == 404
    body = await read(client, "30003")
    assert (body["outstanding"], body["amounts"]["paid"], body["status"]) == (
        "0.00",
        "1000.00",
        "Paid",
    )
    assert (body["base"]["paid"], body["base"]["exchange_adjustment"]) == ("800.00", "0.00")
    assert body["mismatch"] is False


@pytest.mark.usefixtures("sage_company")
async def test_a_revaluation_alone_changes_no_status_and_reports_show_both_currencies(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, database_url: str
) -> None:
    # The receipt deleted, only the REVAL is left allocated: the invoice is unpaid again,
    # 1,600 dollars owed. Sage's pounds are sent stale (0.00) to show a mismatch in pounds.
    receipt = usd_receipt(11, "1250.00", "1600.00", "1.28", [(2, "1250.00", "1600.00")])
    receipt["deleted"] = True
    sage = usd_invoice(2, "30002", "1600.00", "1280.00", sage=("0.00", "1600.00"))
    assert (await deliver(client, receipt, sage)).status_code == 202
    await run_worker(engine, settings, database_url)
    body = await read(client, "30002")
    assert (body["status"], body["outstanding"]) == ("Unpaid", "1600.00")
    assert body["base"]["exchange_adjustment"] == "30.00"
    # Sage's pounds (0.00) disagree with ours (1,250.00): a mismatch, its figures in both.
    report = await client.get(
        "/v1/reconciliation/report", params={"kind": "mismatches"}, headers=auth(READ_KEY)
    )
    [item] = report.json()["items"]
    assert item["currency"] == "USD"
    assert (item["computed_outstanding"], item["sage_outstanding"]) == ("1600.00", "1600.00")
    assert (item["computed_outstanding_base"], item["sage_outstanding_base"]) == (
        "1250.00",
        "0.00",
    )
    assert item["exchange_adjustment"] == "30.00"
    csv = await client.get(
        "/v1/reconciliation/report",
        params={"kind": "mismatches"},
        headers={**auth(READ_KEY), "Accept": "text/csv"},
    )
    header, row = csv.text.splitlines()
    assert "currency" in header.split(",")
    assert "exchange_adjustment" in header.split(",")
    assert ",USD," in row


async def test_contra_pays_the_invoice_like_any_receipt(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, database_url: str
) -> None:
    """A customer who is also a supplier: Sage's contra entry posts an SR to the customer
    (and a PP to the supplier, which the exporter does not send) on a contra bank account
    in the bank range 1200-1239; base currency only. Here a part contra (the purchase
    invoice was smaller), then the rest received."""
    invoice = si(20, "30020", "250.00", details="Hire", account="BOTH01")
    contra = settle(
        21,
        "SR",
        [(20, "200.00")],
        reference="Contra",
        nominal="1235",
        details="Contra Entry",
        account="BOTH01",
    )
    assert (await deliver(client, invoice, contra)).status_code == 202
    await run_worker(engine, settings, database_url)
    body = await read(client, "30020")
    assert (body["currency"], body["status"], body["outstanding"]) == ("GBP", "Part Paid", "50.00")
    assert body["amounts"]["paid"] == "200.00"

    rest = settle(
        22, "SR", [(20, "50.00")], reference="BACS", details="Sales Receipt", account="BOTH01"
    )
    assert (await deliver(client, rest)).status_code == 202
    await run_worker(engine, settings, database_url)
    body = await read(client, "30020")
    assert (body["status"], body["outstanding"], body["amounts"]["paid"]) == (
        "Paid",
        "0.00",
        "250.00",
    )


async def test_gbp_invoices_are_unchanged_with_or_without_currency_fields(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, database_url: str
) -> None:
    """Today's senders send no currency; a sender that fills Sage's FOREIGN_* columns of a
    base-currency row (the base amounts again, rate 1) gets exactly the same figures."""
    plain = [
        si(30, "30030", "120.00", details="Goods", account="UK01"),
        settle(
            31, "SR", [(30, "70.00")], reference="BACS", details="Sales Receipt", account="UK01"
        ),
        settle(
            32,
            "SC",
            [(30, "20.00")],
            reference="CN1",
            nominal="4000",
            details="Credit",
            account="UK01",
        ),
    ]
    explicit = [_with_base_currency_columns(p) for p in plain]
    assert (await deliver(client, *plain, *explicit)).status_code == 202
    await run_worker(engine, settings, database_url)
    before = await read(client, "30030")
    after = await read(client, "30030X")
    for body in (before, after):
        assert body["currency"] == "GBP"
        assert (body["gross"], body["outstanding"], body["status"]) == (
            "120.00",
            "30.00",
            "Part Paid",
        )
        assert body["amounts"] == {
            "paid": "70.00",
            "discounted": "0.00",
            "written_off": "0.00",
            "credited": "20.00",
        }
        base = {
            k: v for k, v in body["base"].items() if k not in ("currency", "exchange_adjustment")
        }
        assert base == {
            "gross": body["gross"],
            "outstanding": body["outstanding"],
            **body["amounts"],
        }
        assert body["base"]["exchange_adjustment"] == "0.00"
    assert before["history"][0]["reason"] == after["history"][0]["reason"]
    assert "USD" not in before["history"][0]["reason"]


def _with_base_currency_columns(plain: dict[str, Any]) -> dict[str, Any]:
    """The same transaction under another number, FOREIGN_* filled as Sage fills them on a
    base-currency row."""
    out = {**plain, "tran_number": plain["tran_number"] + 10}
    if plain["type"] == "SI":
        out["reference"] = plain["reference"] + "X"
    out.update(
        currency="GBP",
        exchange_rate="1",
        foreign_net_amount=plain["net_amount"],
        foreign_tax_amount=plain["tax_amount"],
        foreign_gross_amount=plain["gross_amount"],
    )
    out["allocations"] = [
        {**a, "invoice_tran_number": a["invoice_tran_number"] + 10, "foreign_amount": a["amount"]}
        for a in plain.get("allocations", [])
    ]
    return out
