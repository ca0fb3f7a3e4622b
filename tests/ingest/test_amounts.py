"""Amounts are exact: a JSON number is read as written (never rounded through a binary
float), a JSON string only as plain ASCII digits; anything else is a 422 naming the field."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ingest.amounts import (
    CENTS,
    CHECKED_PATH,
    NONZERO_CENTS,
    SIGNED_CENTS,
    AmountsRead,
    Money,
    PositiveMoney,
    SignedMoney,
    without_plain_path,
)
from service.ingest.schemas import PostingBatch
from tests.support.factories import WEBHOOK, settle, si
from tests.support.queries import scalar
from tests.support.webhooks import signed_request

PLACEHOLDER = "__amount__"


def _body(raw_amount: str, *, field: str = "net_amount") -> bytes:
    """A batch whose `field` holds `raw_amount` verbatim (a JSON token, not a Python value)."""
    invoice = si(1001, "INV-1")
    receipt = settle(1002, "SR", [(1001, "10.00")])
    if field == "amount":
        receipt["allocations"][0]["amount"] = PLACEHOLDER
    else:
        invoice[field] = PLACEHOLDER
    body = orjson.dumps({"source": "tests", "postings": [invoice, receipt]})
    return body.replace(f'"{PLACEHOLDER}"'.encode(), raw_amount.encode())


async def _post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    content, headers = signed_request(body)
    return await client.post(WEBHOOK, content=content, headers=headers)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("1.00999999999999999999", "net_amount"),
        ("100.0000000000000001", "gross_amount"),
        ("1e-400", "tax_amount"),
        ("0.001", "outstanding"),
        ("10.000000000000000001", "amount"),
        ('"1_000"', "net_amount"),
        ('" 100.00"', "net_amount"),
        ('"100.00 "', "net_amount"),
        ('"\u0661\u0660\u0660"', "net_amount"),
        ('"\uff11\uff10"', "net_amount"),
        ('"1e2"', "net_amount"),
        ('"+5"', "net_amount"),
        ('"0x10"', "net_amount"),
        ('"100.00\\n"', "net_amount"),
        ('"-0.01"', "net_amount"),
        ('"1000000000000"', "gross_amount"),
        ('"0.00"', "amount"),
    ],
)
async def test_an_amount_that_is_not_exactly_cents_is_a_422_naming_it(
    client: httpx.AsyncClient, engine: AsyncEngine, raw: str, field: str
) -> None:
    response = await _post(client, _body(raw, field=field))
    assert response.status_code == 422, response.text
    fields = [e["field"] for e in response.json()["errors"]]
    expected = "postings[1].allocations[0].amount" if field == "amount" else f"postings[0].{field}"
    assert fields == [expected]
    assert await scalar(engine, "SELECT count(*) FROM postings") == 0
    assert await scalar(engine, "SELECT count(*) FROM webhook_deliveries") == 0


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("120", "120.00"),
        ("0.07", "0.07"),
        ("999999999999.99", "999999999999.99"),
        ("1.2e2", "120.00"),
        ("100.000", "100.00"),
        ('"0.07"', "0.07"),
        ('"120.5"', "120.50"),
    ],
)
async def test_exact_amounts_as_numbers_or_strings_are_stored_as_sent(
    client: httpx.AsyncClient, engine: AsyncEngine, raw: str, stored: str
) -> None:
    response = await _post(client, _body(raw))
    assert response.status_code == 202, response.text
    net = await scalar(engine, "SELECT net_amount FROM postings WHERE tran_number = 1001")
    assert net == Decimal(stored)


async def test_a_string_that_only_looks_like_a_long_number_is_not_an_amount_error(
    client: httpx.AsyncClient,
) -> None:
    invoice = si(1001, "INV-1", details="v1.2345 and 6E7")
    content, headers = signed_request({"source": "tests", "postings": [invoice]})
    response = await client.post(WEBHOOK, content=content, headers=headers)
    assert response.status_code == 202, response.text


async def test_foreign_amounts_are_exact_too(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The currency fields go through the same exactness check as the base amounts."""
    invoice = si(1001, "INV-1")
    invoice.update(
        currency="USD",
        exchange_rate="1.25",
        foreign_net_amount="__net__",
        foreign_tax_amount="25.00",
        foreign_gross_amount="150.00",
    )
    receipt = settle(1002, "SR", [(1001, "10.00")])
    receipt.update(currency="USD", foreign_net_amount="12.50", foreign_gross_amount="12.50")
    receipt["allocations"][0]["foreign_amount"] = "__paid__"
    body = orjson.dumps({"source": "tests", "postings": [invoice, receipt]})
    body = body.replace(b'"__net__"', b"125.000000000000000001").replace(
        b'"__paid__"', b"12.5000000000000000001"
    )
    response = await _post(client, body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [
        "postings[0].foreign_net_amount",
        "postings[1].allocations[0].foreign_amount",
    ]
    assert await scalar(engine, "SELECT count(*) FROM postings") == 0


@pytest.mark.parametrize(
    ("where", "day"),
    [("posting", "0001-01-01"), ("posting", "9999-12-31"), ("allocation", "0001-01-01")],
)
async def test_a_date_outside_the_calendar_sage_holds_is_a_422_naming_it(
    client: httpx.AsyncClient, engine: AsyncEngine, where: str, day: str
) -> None:
    """asyncpg would store date.min and date.max as -infinity and infinity, and every date
    difference on them fails later: refused at the door instead."""
    invoice = si(1001, "INV-1")
    receipt = settle(1002, "SR", [(1001, "10.00")])
    if where == "posting":
        invoice["date"] = day
    else:
        receipt["allocations"][0]["date"] = day
    response = await _post(
        client, orjson.dumps({"source": "tests", "postings": [invoice, receipt]})
    )
    assert response.status_code == 422, response.text
    expected = "postings[0].date" if where == "posting" else "postings[1].allocations[0].date"
    assert [e["field"] for e in response.json()["errors"]] == [expected]
    assert await scalar(engine, "SELECT count(*) FROM postings") == 0


@pytest.mark.parametrize(
    ("raw", "field", "as_numbers"),
    [
        ('"10.00"', "net_amount", False),
        ("10.00", "net_amount", True),
        ("10", "outstanding", True),
        ("10.00", "amount", True),
    ],
)
def test_the_body_is_read_again_only_for_amounts_sent_as_json_numbers(
    raw: str, field: str, as_numbers: bool
) -> None:
    """String amounts are exact as read; only a JSON number sends the body to the exactness
    check, wherever it is (an allocation's included)."""
    amounts = AmountsRead()
    PostingBatch.model_validate_json(_body(raw, field=field), strict=True, context=amounts)
    assert amounts.as_numbers is as_numbers


def _checked_path(money: Any) -> SchemaValidator:
    """The amount's checked path alone (the one that words errors), from its own schema."""
    schema = TypeAdapter(money).core_schema
    choices = schema["json_schema"]["choices"]
    [checked] = [choice for choice, label in choices if label == CHECKED_PATH]
    return SchemaValidator(checked)


@pytest.mark.parametrize(
    ("money", "plain"),
    [(Money, CENTS), (PositiveMoney, NONZERO_CENTS), (SignedMoney, SIGNED_CENTS)],
)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_text_taken_plain_is_what_the_checked_path_accepts_unchanged(
    money: Any, plain: str, data: st.DataObject
) -> None:
    """The plain path skips the decimal checks: only sound if whatever text it takes, the
    checked path takes too, as the same Decimal (digits and exponent alike)."""
    text = data.draw(st.from_regex(plain, fullmatch=True))
    value = _checked_path(money).validate_json(json.dumps(text), strict=True)
    assert value.as_tuple() == Decimal(text).as_tuple()
    assert TypeAdapter(money).validate_json(json.dumps(text), strict=True).as_tuple() == (
        value.as_tuple()
    )


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money, "-0.01"),
        (Money, "1000000000000"),
        (Money, "1.001"),
        (Money, "1.100"),
        (PositiveMoney, "0"),
        (PositiveMoney, "000.00"),
        (SignedMoney, "-1000000000000"),
        (SignedMoney, "1.1000000000000000000000000000001"),
    ],
)
def test_text_outside_the_plain_path_is_judged_by_the_checked_one(money: Any, text: str) -> None:
    """Refused or not, such text gets the checked path's answer, errors located at the field."""
    adapter = TypeAdapter(money)
    try:
        expected: Any = _checked_path(money).validate_json(json.dumps(text), strict=True)
    except ValidationError as exc:
        expected = [(e["type"], e["msg"]) for e in exc.errors()]
    try:
        got: Any = adapter.validate_json(json.dumps(text), strict=True)
    except ValidationError as exc:
        errors = without_plain_path(exc.errors())
        assert [e["loc"] for e in errors] == [()]
        got = [(e["type"], e["msg"]) for e in errors]
    assert got == expected
