"""The webhook's currency fields: optional (absent = the base currency), validated as a whole
(422 naming the field, nothing stored), stored, and part of what makes a re-send a change."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.factories import deliver, in_currency, settle, si
from tests.support.queries import nothing_stored

USD: dict[str, Any] = {"currency": "USD", "exchange_rate": "1.25"}


def usd_si(tran: int, ref: str, dollars: str, pounds: str, **extra: Any) -> dict[str, Any]:
    return si(tran, ref, pounds, **{**in_currency(dollars, rate="1.25"), **extra})


INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("lower-case code", {"currency": "usd"}, "currency", "ISO 4217"),
    ("code too long", {"currency": "USDX"}, "currency", "ISO 4217"),
    ("rate zero", {"exchange_rate": "0"}, "exchange_rate", "greater than or equal"),
    ("rate negative", {"exchange_rate": "-1.25"}, "exchange_rate", "greater than or equal"),
    ("rate not a number", {"exchange_rate": "NaN"}, "exchange_rate", ""),
    ("foreign gross three decimals", {"foreign_gross_amount": "1.001"}, "foreign_gross_amount", ""),
    ("foreign gross negative", {"foreign_gross_amount": "-1.00"}, "foreign_gross_amount", ""),
    ("no foreign gross", {"foreign_gross_amount": None}, "foreign_gross_amount", "required"),
    (
        "outstanding without its foreign side",
        {"outstanding": "100.00"},
        "foreign_outstanding",
        "required with currency USD when outstanding",
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [(c, f, w) for _, c, f, w in INVALID],
    ids=[n for n, _, _, _ in INVALID],
)
async def test_bad_currency_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, engine: AsyncEngine, change: dict[str, Any], field: str, words: str
) -> None:
    bad = {k: v for k, v in {**usd_si(2, "INV2", "150.00", "120.00"), **change}.items() if v}
    response = await deliver(client, si(1, "INV1"), bad)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == f"postings[1].{field}"
    assert words in error["msg"]
    assert f"postings[1].{field}" in response.json()["detail"]
    assert await nothing_stored(engine)


@pytest.mark.parametrize(
    "field",
    [
        "exchange_rate",
        "foreign_net_amount",
        "foreign_tax_amount",
        "foreign_gross_amount",
        "foreign_outstanding",
    ],
)
async def test_a_foreign_figure_without_its_currency_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine, field: str
) -> None:
    response = await deliver(client, si(1, "INV1", **{field: "1.25"}))
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == f"postings[0].{field}"
    assert "without currency" in error["msg"]
    assert await nothing_stored(engine)


async def test_allocation_foreign_amount_goes_with_the_posting_currency(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    receipt = settle(2, "SR", [(1, "400.00")], **USD, foreign_gross_amount="500.00")
    missing = await deliver(client, usd_si(1, "INV1", "2000.00", "1600.00"), receipt)
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "postings[1].allocations[0].foreign_amount"
    assert "required with currency USD" in missing.json()["errors"][0]["msg"]

    gbp_receipt = settle(2, "SR", [(1, "400.00")])
    gbp_receipt["allocations"][0]["foreign_amount"] = "500.00"
    stray = await deliver(client, si(1, "INV1"), gbp_receipt)
    assert stray.status_code == 422
    assert stray.json()["errors"][0]["field"] == "postings[1].allocations[0].foreign_amount"
    assert "without currency" in stray.json()["errors"][0]["msg"]
    assert await nothing_stored(engine)


async def test_a_base_currency_posting_must_repeat_its_base_amounts(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Sage's base-currency rows carry the base values in FOREIGN_* at rate 1; a GBP posting
    (the default LEDGERLINK_BASE_CURRENCY) that says otherwise has two amounts for one
    figure."""
    bad = si(
        1,
        "INV1",
        "120.00",
        currency="GBP",
        exchange_rate="1.1",
        foreign_gross_amount="130.00",
    )
    response = await deliver(client, bad)
    assert response.status_code == 422, response.text
    fields = {e["field"]: e["msg"] for e in response.json()["errors"]}
    assert set(fields) == {"postings[0].exchange_rate", "postings[0].foreign_gross_amount"}
    assert "GBP is the base currency" in fields["postings[0].foreign_gross_amount"]
    assert "must equal gross_amount" in fields["postings[0].foreign_gross_amount"]
    assert await nothing_stored(engine)

    same = si(1, "INV1", "120.00", currency="GBP", exchange_rate="1", foreign_gross_amount="120")
    assert (await deliver(client, same)).status_code == 202


async def test_currency_fields_are_stored_and_a_change_to_them_is_applied(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    receipt = settle(2, "SR", [(1, "400.00")], **USD, foreign_gross_amount="500.00")
    receipt["allocations"][0]["foreign_amount"] = "500.00"
    first = await deliver(client, usd_si(1, "INV1", "2000.00", "1600.00"), receipt)
    assert first.status_code == 202, first.text
    async with engine.connect() as conn:
        posting = (
            (await conn.execute(sa.text("SELECT * FROM postings WHERE tran_number = 1")))
            .mappings()
            .one()
        )
        allocation = (await conn.execute(sa.text("SELECT * FROM allocations"))).mappings().one()
    assert posting["currency"] == "USD"
    assert posting["exchange_rate"] == Decimal("1.25")
    assert posting["foreign_gross_amount"] == Decimal("2000.00")
    assert posting["gross_amount"] == Decimal("1600.00")
    assert allocation["amount"] == Decimal("400.00")
    assert allocation["foreign_amount"] == Decimal("500.00")

    again = await deliver(client, usd_si(1, "INV1", "2000.00", "1600.00"), receipt)
    assert again.json()["postings_unchanged"] == 2
    receipt["allocations"][0]["foreign_amount"] = "499.00"
    edited = await deliver(
        client, usd_si(1, "INV1", "2000.00", "1600.00", exchange_rate="1.2"), receipt
    )
    assert (edited.json()["postings_applied"], edited.json()["postings_unchanged"]) == (2, 0)


async def test_a_sender_without_currency_fields_is_read_as_before(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await deliver(client, si(1, "INV1", "120.00"))
    assert response.status_code == 202
    async with engine.connect() as conn:
        row = (
            (await conn.execute(sa.text("SELECT currency, gross, gross_base FROM invoices")))
            .mappings()
            .one()
        )
    assert dict(row) == {
        "currency": None,
        "gross": Decimal("120.00"),
        "gross_base": Decimal("120.00"),
    }
