"""One batch, many spellings: PostgreSQL is handed the postings array as the sender wrote it
(`received_postings`), so every spelling the webhook accepts must store the same rows and the
same content hash as the postings validated and serialised again."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ingest.parsing import received_postings
from service.ingest.schemas import PostingBatch
from tests.support.database import reset_database
from tests.support.factories import WEBHOOK, allocation, in_currency, settle, si
from tests.support.webhooks import signed_request


def _postings() -> list[dict[str, Any]]:
    """Every kind of field: text to escape, optional and defaulted fields, allocations with and
    without a date, deleted ones, and a foreign-currency receipt (without an exchange rate)."""
    invoice = si(1, "INV-1", details='Café "Ünïcode" \\ ☕ 𝄞', outstanding="120.00")
    other = si(2, "INV-2", "80.50", deleted=True)
    receipt = settle(3, "SR", [(1, "100.00"), (2, "20.50")])
    receipt["allocations"][0]["date"] = "2026-02-03"
    receipt["allocations"][1]["deleted"] = True
    foreign = settle(
        4, "SR", [allocation(1, "10.00", foreign_amount="12.50")], **in_currency("12.50")
    )
    return [invoice, other, receipt, foreign]


def _exporter(postings: list[dict[str, Any]]) -> bytes:
    """What the exporter sends: sorted keys (postings before source), compact, UTF-8."""
    body = {"source": "sage50", "postings": postings}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _spelled_otherwise(postings: list[dict[str, Any]]) -> bytes:
    """The same values another way: source first, indented, \\u escapes (in keys too), amounts
    as JSON numbers of every form or with leading zeros, defaults written out or left out."""
    respelled = json.loads(json.dumps(postings))
    invoice, other, receipt, foreign = respelled
    invoice.update(net_amount=120, tax_amount=0.0, gross_amount=1.2e2, outstanding="0120.000")
    other.update(net_amount=80.50, gross_amount="80.5", nominal_code="4000", allocations=[])
    del invoice["reference"]
    invoice["reference"] = "INV-1"
    receipt.update(outstanding=None, deleted=False, net_amount=120.500, gross_amount=12050e-2)
    receipt["allocations"][0]["amount"] = 100
    receipt["allocations"][1].update(amount=20.5, date=None, foreign_amount=None)
    foreign.update(foreign_net_amount=12.5, foreign_gross_amount="12.50")
    foreign["allocations"][0].update(foreign_amount=1250e-2, deleted=False)
    text = json.dumps({"source": "elsewhere", "postings": respelled}, indent=2)
    return text.replace('"account_ref"', '"account\\u005fref"').encode()


def _serialised_path(postings: list[dict[str, Any]]) -> bytes:
    """A layout received_postings does not cut (an escaped "postings" key): serialised again."""
    return json.dumps({"postings": postings}).replace('"postings"', '"p\\u006fstings"').encode()


SPELLINGS = {
    "exporter": _exporter,
    "otherwise": _spelled_otherwise,
    "serialised": _serialised_path,
}


async def _deliver(client: httpx.AsyncClient, body: bytes) -> dict[str, Any]:
    content, headers = signed_request(body)
    response = await client.post(WEBHOOK, content=content, headers=headers)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _stored(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    """Every stored column but the delivery's id and the timestamps."""
    async with engine.connect() as conn:
        postings = (
            await conn.execute(
                sa.text(
                    "SELECT tran_number, type, account_ref, reference, date, details, "
                    "nominal_code, net_amount::text, tax_amount::text, gross_amount::text, "
                    "outstanding::text, currency, exchange_rate::text, "
                    "foreign_net_amount::text, foreign_tax_amount::text, "
                    "foreign_gross_amount::text, foreign_outstanding::text, deleted, "
                    "content_hash FROM postings ORDER BY tran_number"
                )
            )
        ).all()
        allocations = (
            await conn.execute(
                sa.text(
                    "SELECT posting_tran_number, seq, invoice_tran_number, amount::text, "
                    "foreign_amount::text, date, deleted FROM allocations "
                    "ORDER BY posting_tran_number, seq"
                )
            )
        ).all()
    return [tuple(row) for row in postings], [tuple(row) for row in allocations]


def test_the_spellings_take_the_paths_they_are_meant_to() -> None:
    """Otherwise this file would compare one path with itself."""
    postings = _postings()
    for name, spell in SPELLINGS.items():
        body = spell(postings)
        batch = PostingBatch.model_validate_json(body, strict=True)
        cut = received_postings(body, batch)
        if name == "serialised":
            assert cut is None
        else:
            assert cut is not None
            assert json.loads(cut) == json.loads(body)["postings"]


async def test_every_spelling_stores_the_same_rows_and_hash(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    postings = _postings()
    stored = {}
    for name, spell in SPELLINGS.items():
        await reset_database(engine)
        answer = await _deliver(client, spell(postings))
        assert answer["postings_applied"] == len(postings), name
        stored[name] = await _stored(engine)
    assert stored["otherwise"] == stored["exporter"]
    assert stored["serialised"] == stored["exporter"]
    assert stored["exporter"][0][0][5] == 'Café "Ünïcode" \\ ☕ 𝄞'


@pytest.mark.parametrize("first", list(SPELLINGS))
async def test_a_resend_in_another_spelling_is_unchanged(
    client: httpx.AsyncClient, engine: AsyncEngine, first: str
) -> None:
    postings = _postings()
    await _deliver(client, SPELLINGS[first](postings))
    for name, spell in SPELLINGS.items():
        answer = await _deliver(client, spell(postings))
        assert (answer["postings_applied"], answer["postings_unchanged"]) == (0, 4), name


@pytest.mark.parametrize(
    "body",
    [
        # The source's text holds what the end of the array looks like.
        '{"postings": %s, "source": "a],\\"source\\":\\"b\\"}"}',
        '{"source": "]}", "postings": %s}',
        '{"postings": %s ,\n "source" :\tnull }\n',
        '{"postings":%s}',
    ],
)
def test_the_array_is_cut_exactly_whatever_the_source_holds(body: str) -> None:
    postings = _postings()
    raw = body.replace("%s", json.dumps(postings)).encode()
    cut = received_postings(raw, PostingBatch.model_validate_json(raw, strict=True))
    assert cut is not None
    assert json.loads(cut) == postings


def test_a_batch_with_an_exchange_rate_is_serialised() -> None:
    """pydantic and PostgreSQL read some rates differently ("1_000", a long JSON number)."""
    posting = si(1, "INV-1", currency="USD", exchange_rate="1_000", foreign_gross_amount="1.00")
    raw = json.dumps({"postings": [posting]}).encode()
    assert received_postings(raw, PostingBatch.model_validate_json(raw, strict=True)) is None


async def test_exchange_rates_are_stored_as_pydantic_read_them(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Spellings of a rate PostgreSQL would read otherwise, or not at all, from the body."""
    stored = set()
    for rate in ('"1_000.5"', "1000.5", '"\u0661000.5"', "1000.50000000000000000001"):
        posting = si(1, "INV-1", currency="USD", exchange_rate="__rate__")
        posting["foreign_gross_amount"] = "1.00"
        raw = json.dumps({"postings": [posting]}).replace('"__rate__"', rate).encode()
        await _deliver(client, raw)
        async with engine.connect() as conn:
            stored.add(
                (await conn.execute(sa.text("SELECT exchange_rate FROM postings"))).scalar_one()
            )
    assert stored == {Decimal("1000.5")}
