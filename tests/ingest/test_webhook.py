"""POST /v1/webhooks/sage/postings over HTTP, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.contracts import DIRTY_CHANNEL
from service.main import create_app
from tests.support.factories import WEBHOOK, deliver, settle, si
from tests.support.queries import dirty, invoice, nothing_stored, scalar
from tests.support.settings import make_settings
from tests.support.webhooks import OLD_SECRET, TEST_SECRET, sign, signed_request


async def count(engine: AsyncEngine, table: str) -> int:
    return int(await scalar(engine, f"SELECT count(*) FROM {table}"))


@pytest.fixture
async def client_for(database_url: str, engine: AsyncEngine) -> AsyncIterator[Any]:
    """A client of an app built with setting overrides."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def build(**overrides: object) -> httpx.AsyncClient:
        app = create_app(make_settings(database_url, **overrides))
        manager = LifespanManager(app, startup_timeout=30, shutdown_timeout=30)
        await manager.__aenter__()
        managers.append(manager)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.aclose()
    for manager in managers:
        await manager.__aexit__(None, None, None)


# --- signature ---------------------------------------------------------------------------


async def test_signed_batch_is_accepted_and_stored(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await deliver(client, si(1, "INV1"), settle(2, "SR", [(1, "20.00")]))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["postings_received"] == 2
    assert body["postings_applied"] == 2
    assert body["postings_unchanged"] == 0
    assert body["invoices_affected"] == 1
    assert await count(engine, "postings") == 2
    assert await count(engine, "allocations") == 1


async def test_wrong_signature_is_401_and_stores_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body, headers = signed_request({"postings": [si(1, "INV1")]})
    headers["webhook-signature"] = sign(TEST_SECRET, headers["webhook-id"], 1, body)
    response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["reason"] == "bad_signature"
    assert await nothing_stored(engine)


async def test_body_changed_after_signing_is_401(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body, headers = signed_request({"postings": [si(1, "INV1", "120.00")]})
    tampered = body.replace(b"120.00", b"999.00")
    response = await client.post(WEBHOOK, content=tampered, headers=headers)
    assert response.status_code == 401
    assert await nothing_stored(engine)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_missing_header_is_401_naming_it(
    client: httpx.AsyncClient, engine: AsyncEngine, header: str
) -> None:
    body, headers = signed_request({"postings": [si(1, "INV1")]})
    del headers[header]
    response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 401
    assert header in response.json()["detail"]
    assert response.json()["reason"] == "missing_headers"
    assert await nothing_stored(engine)


@pytest.mark.parametrize(
    ("offset", "reason"), [(-400, "stale_timestamp"), (400, "future_timestamp")]
)
async def test_timestamp_outside_tolerance_is_401(
    client: httpx.AsyncClient, engine: AsyncEngine, offset: int, reason: str
) -> None:
    response = await deliver(client, si(1, "INV1"), timestamp=int(time.time()) + offset)
    assert response.status_code == 401
    assert response.json()["reason"] == reason
    assert await nothing_stored(engine)


async def test_tolerance_setting_is_honoured(client_for: Any, engine: AsyncEngine) -> None:
    strict = await client_for(webhook_tolerance_seconds=10)
    late = await deliver(strict, si(1, "INV1"), timestamp=int(time.time()) - 60)
    assert late.status_code == 401
    on_time = await deliver(strict, si(1, "INV1"), timestamp=int(time.time()) - 5)
    assert on_time.status_code == 202


async def test_rotation_accepts_deliveries_signed_with_old_or_new_secret(
    client_for: Any, engine: AsyncEngine
) -> None:
    both = await client_for(webhook_secrets=f"{TEST_SECRET},{OLD_SECRET}")
    assert (await deliver(both, si(1, "INV1"), secret=TEST_SECRET)).status_code == 202
    assert (await deliver(both, si(2, "INV2"), secret=OLD_SECRET)).status_code == 202
    only_new = await client_for(webhook_secrets=TEST_SECRET)
    assert (await deliver(only_new, si(3, "INV3"), secret=OLD_SECRET)).status_code == 401
    assert await count(engine, "postings") == 2


async def test_without_a_secret_the_webhook_refuses_and_readiness_says_so(
    client_for: Any, engine: AsyncEngine
) -> None:
    unsigned = await client_for(webhook_secrets="")
    response = await deliver(unsigned, si(1, "INV1"))
    assert response.status_code == 503
    assert "LEDGERLINK_WEBHOOK_SECRETS" in response.json()["detail"]
    assert response.headers["retry-after"]
    plain = await unsigned.post(WEBHOOK, json={"postings": [si(1, "INV1")]})
    assert plain.status_code == 503
    assert await nothing_stored(engine)
    ready = (await unsigned.get("/readyz")).json()
    assert any("webhook secret" in w for w in ready["warnings"])


# --- size and shape ------------------------------------------------------------------------


async def test_oversize_body_is_413_from_content_length(
    client_for: Any, engine: AsyncEngine
) -> None:
    small = await client_for(max_body_bytes=2048)
    postings = [si(n, f"INV{n}") for n in range(1, 40)]
    body, headers = signed_request({"postings": postings})
    assert len(body) > 2048
    response = await small.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 413
    assert response.json()["reason"] == "too_large"
    assert await nothing_stored(engine)


async def test_oversize_streamed_body_is_cut_off_while_reading(
    client_for: Any, engine: AsyncEngine
) -> None:
    small = await client_for(max_body_bytes=2048)
    body, headers = signed_request({"postings": [si(n, f"INV{n}") for n in range(1, 40)]})
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            sent.append(start)
            yield body[start : start + 512]

    # No Content-Length: chunked, so only counting while reading can catch it.
    response = await small.post(WEBHOOK, content=chunks(), headers=headers)
    assert response.status_code == 413
    assert len(sent) < len(body) // 512, "the body was read whole before it was refused"
    assert await nothing_stored(engine)


async def test_body_that_is_not_json_is_400(client: httpx.AsyncClient) -> None:
    response = await deliver_raw(client, b"{not json")
    assert response.status_code == 400
    assert response.json()["reason"] == "invalid_json"


async def deliver_raw(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    body, headers = signed_request(body)
    return await client.post(WEBHOOK, content=body, headers=headers)


def _long(n: int) -> str:
    return "x" * n


INVALID_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("type", {"type": "SX"}, "type"),
    ("negative amount", {"net_amount": "-1.00"}, "net_amount"),
    ("three decimals", {"gross_amount": "1.005"}, "gross_amount"),
    ("float with more places", {"tax_amount": 0.30000000000000004}, "tax_amount"),
    ("amount not a number", {"gross_amount": "ten"}, "gross_amount"),
    ("amount infinite", {"gross_amount": "Infinity"}, "gross_amount"),
    ("amount too large", {"gross_amount": "1000000000000.00"}, "gross_amount"),
    ("empty account", {"account_ref": ""}, "account_ref"),
    ("long account", {"account_ref": _long(33)}, "account_ref"),
    ("long reference", {"reference": _long(31)}, "reference"),
    ("long details", {"details": _long(61)}, "details"),
    ("long nominal", {"nominal_code": _long(9)}, "nominal_code"),
    ("control character", {"details": "Bad\ndebt"}, "details"),
    ("date as number", {"date": 45000}, "date"),
    ("date malformed", {"date": "05/01/2026"}, "date"),
    ("date with time", {"date": "2026-01-05T10:00:00"}, "date"),
    ("tran_number zero", {"tran_number": 0}, "tran_number"),
    ("tran_number string", {"tran_number": "7"}, "tran_number"),
    ("tran_number too large", {"tran_number": 2**63}, "tran_number"),
    ("deleted not a bool", {"deleted": "yes"}, "deleted"),
    ("unknown field", {"colour": "red"}, "colour"),
    ("outstanding three decimals", {"outstanding": "1.001"}, "outstanding"),
]


@pytest.mark.parametrize(
    ("change", "field"),
    [(c, f) for _, c, f in INVALID_FIELDS],
    ids=[n for n, _, _ in INVALID_FIELDS],
)
async def test_each_validation_rule_is_422_naming_posting_and_field(
    client: httpx.AsyncClient, engine: AsyncEngine, change: dict[str, Any], field: str
) -> None:
    bad = {**si(3, "INV3"), **change}
    response = await deliver(client, si(1, "INV1"), si(2, "INV2"), bad)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["posting_index"] == 2
    assert problem["errors"][0]["field"] == f"postings[2].{field}"
    assert f"postings[2].{field}" in problem["detail"]
    assert await nothing_stored(engine)


@pytest.mark.parametrize(
    ("allocation", "field"),
    [
        ({"invoice_tran_number": 1, "amount": "0.00"}, "amount"),
        ({"invoice_tran_number": 1, "amount": "-5.00"}, "amount"),
        ({"invoice_tran_number": 0, "amount": "5.00"}, "invoice_tran_number"),
        ({"invoice_tran_number": 1, "amount": "5.001"}, "amount"),
        ({"invoice_tran_number": 1, "amount": "5.00", "date": 1}, "date"),
    ],
)
async def test_allocation_errors_name_the_allocation(
    client: httpx.AsyncClient, engine: AsyncEngine, allocation: dict[str, Any], field: str
) -> None:
    receipt = settle(2, "SR", [(1, "5.00")])
    receipt["allocations"] = [{"invoice_tran_number": 1, "amount": "1.00"}, allocation]
    response = await deliver(client, si(1, "INV1"), receipt)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == f"postings[1].allocations[1].{field}"
    assert await nothing_stored(engine)


async def test_batch_size_limits(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    empty = await deliver(client)
    assert empty.status_code == 422
    assert empty.json()["errors"][0]["field"] == "postings"
    too_many = await deliver(client, *[si(n, f"I{n}", "1.00") for n in range(1, 5002)])
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "postings"
    assert await nothing_stored(engine)
    most = await deliver(client, *[si(n, f"I{n}", "1.00") for n in range(1, 5001)])
    assert most.status_code == 202
    assert await count(engine, "postings") == 5000


@pytest.mark.parametrize(
    ("batch", "field"),
    [
        ({"postings": [si(1, "INV1")], "sorce": "exporter"}, "sorce"),
        (
            {"postings": [settle(2, "SR", [(1, "5.00")])]},
            "postings[0].allocations[0].amont",
        ),
    ],
    ids=["batch", "allocation"],
)
async def test_unknown_keys_at_every_level_are_422_naming_them(
    client: httpx.AsyncClient, engine: AsyncEngine, batch: dict[str, Any], field: str
) -> None:
    if "allocations" in field:
        batch["postings"][0]["allocations"][0]["amont"] = "5.00"
    body, headers = signed_request(batch)
    response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert await nothing_stored(engine)


async def test_a_query_parameter_is_422(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """The exporter sends none: one is a misconfigured sender, refused before anything is
    stored."""
    body, headers = signed_request({"postings": [si(1, "INV1")]})
    response = await client.post(f"{WEBHOOK}?dry_run=true", content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "query.dry_run"
    assert await nothing_stored(engine)


async def test_one_bad_posting_deep_in_a_batch_stores_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    postings = [settle(1000 + n, "SR", [(n, "1.00")]) for n in range(1, 1500)]
    postings[1234]["gross_amount"] = "1.234"
    response = await deliver(client, *[si(n, f"INV{n}") for n in range(1, 100)], *postings)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "postings[1333].gross_amount"
    assert response.json()["error_count"] == 1
    assert await nothing_stored(engine)


async def test_a_key_twice_in_an_object_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    posting = orjson.dumps(si(1, "INV1"))
    twice = posting.replace(b'"tran_number":1', b'"tran_number":1,"tran_number":2')
    response = await deliver_raw(client, b'{"postings":[' + twice + b"]}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "tran_number"
    assert await nothing_stored(engine)


async def test_a_key_twice_beside_colons_in_values_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The colons counted in text values must not make up for the repeated key's."""
    posting = orjson.dumps(si(1, "INV:1", details="Ref: 12:30"))
    twice = posting.replace(b'"tran_number":1', b'"tran_number":1,"tran_number":1')
    response = await deliver_raw(client, b'{"source":"x:y","postings":[' + twice + b"]}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "tran_number"
    assert await nothing_stored(engine)


async def test_colons_in_values_and_escaped_colons_are_not_mistaken_for_keys(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    plain = si(1, "INV:1", details="Ref: 12:30", nominal_code="40:00")
    escaped = orjson.dumps(si(2, "INV2", details="a_b")).replace(b"a_b", b"a\\u003ab")
    body = b'{"source":"x:y","postings":[' + orjson.dumps(plain) + b"," + escaped + b"]}"
    response = await deliver_raw(client, body)
    assert response.status_code == 202, response.text
    async with engine.connect() as conn:
        details = (
            await conn.execute(sa.text("SELECT details FROM postings WHERE tran_number = 2"))
        ).scalar_one()
    assert details == "a:b"


@pytest.mark.parametrize("source", ["a\x00b", "tab\there", "x" * 101])
async def test_source_is_checked_like_the_postings(
    client: httpx.AsyncClient, engine: AsyncEngine, source: str
) -> None:
    body, headers = signed_request({"source": source, "postings": [si(1, "INV1")]})
    response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "source"
    assert await nothing_stored(engine)


async def test_many_errors_are_capped_but_counted(client: httpx.AsyncClient) -> None:
    postings = [{**si(n, f"INV{n}"), "type": "XX"} for n in range(1, 201)]
    response = await deliver(client, *postings)
    problem = response.json()
    assert response.status_code == 422
    assert problem["error_count"] == 200
    assert len(problem["errors"]) == 50


async def test_same_tran_number_twice_in_a_batch_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await deliver(client, si(1, "INV1"), si(2, "INV2"), si(1, "INV9"))
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["field"] == "postings[2].tran_number"
    assert "postings[0]" in error["msg"]
    assert await nothing_stored(engine)


# --- idempotency ---------------------------------------------------------------------------


async def test_replay_with_same_body_returns_the_stored_answer(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body, headers = signed_request({"postings": [si(1, "INV1"), settle(2, "SR", [(1, "20.00")])]})
    first = await client.post(WEBHOOK, content=body, headers=headers)
    async with engine.connect() as conn:
        before = (await conn.execute(sa.text("SELECT updated_at FROM postings"))).all()
    # A retry is signed afresh (new timestamp) but carries the same id and body.
    again_body, again_headers = signed_request(body, webhook_id=headers["webhook-id"])
    again = await client.post(WEBHOOK, content=again_body, headers=again_headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.content == first.content
    async with engine.connect() as conn:
        after = (await conn.execute(sa.text("SELECT updated_at FROM postings"))).all()
    assert after == before
    assert await count(engine, "webhook_deliveries") == 1


async def test_same_id_with_a_different_body_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = await deliver(client, si(1, "INV1"), webhook_id="msg_reused")
    second = await deliver(client, si(1, "INV1", "99.00"), webhook_id="msg_reused")
    assert first.status_code == 202
    assert second.status_code == 422
    assert second.json()["reason"] == "id_reused"
    async with engine.connect() as conn:
        gross = (await conn.execute(sa.text("SELECT gross FROM invoices"))).scalar_one()
    assert gross == Decimal("120.00")


async def test_twenty_concurrent_deliveries_of_one_id_apply_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    postings = [si(n, f"INV{n}") for n in range(1, 1001)]
    postings += [settle(5000 + n, "SR", [(n, "10.00")]) for n in range(1, 1001)]
    body, headers = signed_request({"postings": postings}, webhook_id="msg_concurrent")
    responses = await asyncio.gather(
        *(client.post(WEBHOOK, content=body, headers=headers) for _ in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 1, statuses
    assert set(statuses) <= {200, 202, 409}
    for response in responses:
        if response.status_code == 200:
            assert response.content == next(r for r in responses if r.status_code == 202).content
        if response.status_code == 409:
            assert response.headers["retry-after"]
    assert await count(engine, "postings") == 2000
    assert await count(engine, "allocations") == 1000
    assert await count(engine, "invoices") == 1000
    assert await count(engine, "webhook_deliveries") == 1
    late_retry = await client.post(WEBHOOK, content=body, headers=headers)
    assert late_retry.status_code == 200


async def test_after_a_rejected_delivery_the_id_is_free(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    bad = await deliver(client, {**si(1, "INV1"), "type": "XX"}, webhook_id="msg_fixed")
    good = await deliver(client, si(1, "INV1"), webhook_id="msg_fixed")
    assert bad.status_code == 422
    assert good.status_code == 202


# --- postings, allocations, invoices --------------------------------------------------------


async def allocations_of(engine: AsyncEngine, posting: int) -> list[tuple[int, Decimal, bool]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT invoice_tran_number, amount, deleted FROM allocations "
                "WHERE posting_tran_number = :p ORDER BY seq"
            ),
            {"p": posting},
        )
        return [(r.invoice_tran_number, r.amount, r.deleted) for r in rows]


async def clean_all(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM dirty_invoices"))


async def test_new_invoice_is_mirrored_unpaid_and_dirty(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(1, "INV1", "250.00", outstanding="250.00", account_ref="ACME02"))
    row = await invoice(engine, "INV1")
    assert row["sage_tran_number"] == 1
    assert row["gross"] == Decimal("250.00")
    assert row["sage_outstanding"] == Decimal("250.00")
    assert row["account_ref"] == "ACME02"
    assert row["status"] == "Unpaid"
    assert row["derived_state"] is None
    assert row["dirty_since"] is not None
    assert row["deleted"] is False


async def test_edit_replaces_allocations_as_a_set_and_marks_old_and_new_invoices(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(1, "INV1"), si(2, "INV2"), si(3, "INV3"))
    await deliver(client, settle(10, "SR", [(1, "50.00"), (2, "20.00")]))
    await clean_all(engine)
    response = await deliver(client, settle(10, "SR", [(3, "30.00")]))
    assert response.json()["postings_applied"] == 1
    assert response.json()["invoices_affected"] == 3
    assert await allocations_of(engine, 10) == [(3, Decimal("30.00"), False)]
    assert await dirty(engine) == {"INV1", "INV2", "INV3"}


async def test_allocation_can_be_marked_deleted(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(1, "INV1"), settle(10, "SR", [(1, "50.00")]))
    await clean_all(engine)
    receipt = settle(10, "SR", [(1, "50.00")])
    receipt["allocations"][0]["deleted"] = True
    await deliver(client, receipt)
    assert await allocations_of(engine, 10) == [(1, Decimal("50.00"), True)]
    assert await dirty(engine) == {"INV1"}


async def test_deleted_posting_keeps_its_row_and_marks_its_invoices(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(1, "INV1"), settle(10, "SR", [(1, "50.00")]))
    await clean_all(engine)
    await deliver(client, settle(10, "SR", [(1, "50.00")], deleted=True))
    async with engine.connect() as conn:
        deleted = (
            await conn.execute(sa.text("SELECT deleted FROM postings WHERE tran_number = 10"))
        ).scalar_one()
    assert deleted is True
    assert await allocations_of(engine, 10) == [(1, Decimal("50.00"), False)]
    assert await dirty(engine) == {"INV1"}


async def test_deleted_si_deletes_its_invoice(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(1, "INV1"))
    await clean_all(engine)
    await deliver(client, si(1, "INV1", deleted=True))
    row = await invoice(engine, "INV1")
    assert row["deleted"] is True
    assert row["dirty_since"] is not None
    await deliver(client, si(1, "INV1"))
    assert (await invoice(engine, "INV1"))["deleted"] is False


async def test_unchanged_resend_is_counted_and_not_rewritten(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(1, "INV1"), settle(10, "SR", [(1, "50.00")]))
    await clean_all(engine)
    # Same content, other spelling: numbers instead of strings, defaults left out.
    resend = settle(10, "SR", [(1, "50.00")])
    resend.update(net_amount=50, gross_amount=50.0, tax_amount=0)
    response = await deliver(client, si(1, "INV1"), resend)
    body = response.json()
    assert (body["postings_applied"], body["postings_unchanged"]) == (0, 2)
    assert body["invoices_affected"] == 0
    assert await dirty(engine) == set()
    changed = await deliver(
        client, si(1, "INV1"), settle(10, "SR", [(1, "50.00")], details="Edited")
    )
    assert (changed.json()["postings_applied"], changed.json()["postings_unchanged"]) == (1, 1)


async def test_allocation_before_its_invoice_takes_effect_when_it_arrives(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    early = await deliver(client, settle(10, "SR", [(500, "40.00")]))
    assert early.status_code == 202
    assert early.json()["invoices_affected"] == 0
    assert await count(engine, "invoices") == 0
    late = await deliver(client, si(500, "INV500", "100.00"))
    assert late.json()["invoices_affected"] == 1
    assert (await invoice(engine, "INV500"))["dirty_since"] is not None
    async with engine.connect() as conn:
        settled = (
            await conn.execute(
                sa.text(
                    "SELECT sum(a.amount) FROM allocations a JOIN invoices i "
                    "ON i.sage_tran_number = a.invoice_tran_number "
                    "WHERE i.invoice_number = 'INV500'"
                )
            )
        ).scalar_one()
    assert settled == Decimal("40.00")


async def test_small_overpayment_write_off_si_is_not_an_invoice(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    write_off = si(7, "BADDBT", "0.45", details="Bad Debt Write Off", nominal_code="8100")
    by_text_only = si(8, "INV8", "0.20", details="bad debt write off", nominal_code="4000")
    response = await deliver(client, write_off, by_text_only, si(9, "INV9"))
    assert response.status_code == 202
    assert await count(engine, "postings") == 3
    async with engine.connect() as conn:
        numbers = set(
            (await conn.execute(sa.text("SELECT invoice_number FROM invoices"))).scalars()
        )
    assert numbers == {"INV9"}


async def test_si_without_reference_is_stored_but_not_mirrored(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await deliver(client, si(1, ""))
    assert response.status_code == 202
    assert await count(engine, "postings") == 1
    assert await count(engine, "invoices") == 0


async def test_duplicate_invoice_numbers_later_transaction_wins(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(20, "INV1", "200.00"))
    response = await deliver(client, si(10, "INV1", "100.00"))
    assert response.status_code == 202
    row = await invoice(engine, "INV1")
    assert (row["sage_tran_number"], row["gross"], row["duplicate_of"]) == (
        20,
        Decimal("200.00"),
        10,
    )
    both = await deliver(client, si(30, "INV2", "3.00"), si(31, "INV2", "4.00"))
    assert both.status_code == 202
    row = await invoice(engine, "INV2")
    assert (row["sage_tran_number"], row["duplicate_of"]) == (31, 30)


async def test_edited_reference_moves_the_si_to_its_new_invoice(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await deliver(client, si(1, "INV1"), si(2, "INV2"))
    # The two SIs swap invoice numbers in one batch, then one moves to a new number.
    swapped = await deliver(client, si(1, "INV2"), si(2, "INV1"))
    assert swapped.status_code == 202
    assert (await invoice(engine, "INV1"))["sage_tran_number"] == 2
    assert (await invoice(engine, "INV2"))["sage_tran_number"] == 1
    moved = await deliver(client, si(1, "INV3"))
    assert moved.status_code == 202
    old = await invoice(engine, "INV2")
    assert old["deleted"] is True
    assert old["dirty_since"] is not None
    new = await invoice(engine, "INV3")
    assert (new["sage_tran_number"], new["deleted"]) == (1, False)


async def test_money_is_exact(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    receipts = [
        {**settle(10, "SR", [(1, "0.10")]), "gross_amount": 0.1, "net_amount": 0.1},
        {**settle(11, "SR", [(1, "0.20")]), "gross_amount": 0.2, "net_amount": 0.2},
        {**settle(12, "SR", [(1, "0.03")]), "gross_amount": 0.03, "net_amount": 0.03},
    ]
    receipts[0]["allocations"][0]["amount"] = 0.1
    receipts[1]["allocations"][0]["amount"] = 0.2
    response = await deliver(client, si(1, "INV1", "0.33"), *receipts)
    assert response.status_code == 202
    async with engine.connect() as conn:
        gross = (
            await conn.execute(sa.text("SELECT sum(gross_amount) FROM postings WHERE type='SR'"))
        ).scalar_one()
        allocated = (
            await conn.execute(sa.text("SELECT sum(amount) FROM allocations"))
        ).scalar_one()
    assert gross == Decimal("0.33")
    assert allocated == Decimal("0.33")
    assert (await invoice(engine, "INV1"))["gross"] - allocated == Decimal("0.00")


async def test_affected_invoices_wake_the_worker_after_commit(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    import asyncpg

    from service.db import libpq_url

    listener = await asyncpg.connect(libpq_url(database_url))
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(DIRTY_CHANNEL, lambda *args: heard.put_nowait(args[2]))
    try:
        await deliver(client, si(1, "INV1"))
        await asyncio.wait_for(heard.get(), timeout=5)
        # Everything it touches is dirty already: nothing new to wake anyone for.
        await deliver(client, settle(10, "SR", [(1, "5.00")]))
        await asyncio.sleep(0.2)
        assert heard.empty()
        await clean_all(engine)
        await deliver(client, settle(11, "SR", [(1, "5.00")]))
        await asyncio.wait_for(heard.get(), timeout=5)
    finally:
        await listener.close()


# --- metrics and contract --------------------------------------------------------------------


async def test_metrics_count_postings_and_deliveries_by_outcome(
    client: httpx.AsyncClient,
) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "received": value("ledgerlink_postings_total", outcome="received"),
        "accepted": value("ledgerlink_webhook_deliveries_total", outcome="accepted", reason=""),
        "replayed": value("ledgerlink_webhook_deliveries_total", outcome="replayed", reason=""),
        "bad": value(
            "ledgerlink_webhook_deliveries_total", outcome="rejected", reason="bad_signature"
        ),
        "batches": value("ledgerlink_webhook_batch_postings_count"),
        "latency": value("ledgerlink_ingest_duration_seconds_count"),
    }
    await deliver(client, si(1, "INV1"), si(2, "INV2"), webhook_id="msg_m")
    await deliver(client, si(1, "INV1"), si(2, "INV2"), webhook_id="msg_m")
    await deliver(client, si(1, "INV1"), secret=OLD_SECRET)
    assert value("ledgerlink_postings_total", outcome="received") == before["received"] + 2
    assert (
        value("ledgerlink_webhook_deliveries_total", outcome="accepted", reason="")
        == before["accepted"] + 1
    )
    assert (
        value("ledgerlink_webhook_deliveries_total", outcome="replayed", reason="")
        == before["replayed"] + 1
    )
    assert (
        value("ledgerlink_webhook_deliveries_total", outcome="rejected", reason="bad_signature")
        == before["bad"] + 1
    )
    assert value("ledgerlink_webhook_batch_postings_count") == before["batches"] + 1
    assert value("ledgerlink_ingest_duration_seconds_count") == before["latency"] + 1


async def test_openapi_documents_the_webhook(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"][WEBHOOK]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    posting = schema["properties"]["postings"]["items"]
    assert {"tran_number", "type", "allocations"} <= set(posting["properties"])
    assert {"200", "202", "401", "409", "413", "422"} <= set(operation["responses"])
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}


async def test_response_is_the_ingest_result_shape(client: httpx.AsyncClient) -> None:
    response = await deliver(client, si(1, "INV1"), webhook_id="msg_shape")
    assert orjson.loads(response.content) == {
        "event_id": "msg_shape",
        "postings_received": 1,
        "postings_applied": 1,
        "postings_unchanged": 0,
        "invoices_affected": 1,
    }
