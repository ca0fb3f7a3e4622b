"""Hostile values in every filter, path, cursor and body field are data, never SQL.

Each is either refused (422) or matched literally: no 5xx, no rows it should not match, no
table touched by a read. Invoices whose own numbers and accounts are hostile strings are
stored and found exactly, and only they are.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.reconcile.tasks import reconcile_all_dirty
from service.settings import Settings
from tests.security.support import next_tran, seed_ledger
from tests.support.factories import deliver, si
from tests.support.keys import ADMIN_KEY, auth
from tests.support.queries import scalar, table_checksums

HOSTILE = [
    "' OR '1'='1",
    "'; DROP TABLE invoices; --",
    '" OR 1=1 --',
    "') OR ('a'='a",
    "1) UNION SELECT 1--",
    "ACME01' --",
    "*/ SELECT 1 /*",
    "%",
    "_",
    "SEC-%",
    "\\",
    "\\'",
    "$1",
    ":status",
    "{}",
    "\u2019 OR 1=1",
    "A' || pg_sleep(5) || '",
    "\u00b2",  # a digit to str.isdigit(), not to int()
    "\u0661\u0662",  # Arabic-Indic digits
]
# Invoices with hostile numbers and accounts, next to ordinary ones.
NASTY_INVOICES = ["' OR '1'='1", "x'; DROP TABLE postings;--", "%", "SEC-%", "a/b?c=d#e"]


@pytest.fixture
async def ledger(client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> list[str]:
    ordinary = await seed_ledger(client, invoices=8)
    nasty = [si(next_tran(), number, account_ref=f"ACC {number}"[:32]) for number in NASTY_INVOICES]
    assert (await deliver(client, *nasty)).status_code == 202
    await reconcile_all_dirty(engine, settings)
    return ordinary


def _items(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.mark.usefixtures("ledger")
async def test_filters_match_hostile_values_literally(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = await table_checksums(engine)
    everything = _items(await client.get("/v1/invoices?limit=500", headers=auth(ADMIN_KEY)))
    assert len(everything) == 8 + len(NASTY_INVOICES)
    for value in HOSTILE:
        for param in ("status", "account_ref"):
            response = await client.get(
                "/v1/invoices", params={param: value}, headers=auth(ADMIN_KEY)
            )
            assert response.status_code in (200, 422), (param, value, response.text)
            if response.status_code == 200:
                assert response.json()["items"] == [], (param, value)
        response = await client.get(
            "/v1/crm/outbox", params={"invoice_number": value}, headers=auth(ADMIN_KEY)
        )
        assert response.status_code in (200, 422), (value, response.text)
        if response.status_code == 200:
            listed = {item["invoice_number"] for item in response.json()["items"]}
            assert listed <= {value}, value
        for path in ("/v1/invoices", "/v1/reconciliation/report", "/v1/crm/outbox"):
            # A cursor the server did not issue is refused, or (the report's, a plain keyset)
            # read as "after this text": either way a page of real rows, at most.
            response = await client.get(path, params={"cursor": value}, headers=auth(ADMIN_KEY))
            assert response.status_code in (200, 422), (path, value, response.text)
            if response.status_code == 200:
                assert len(response.json()["items"]) <= len(everything)
        for path, param in (
            ("/v1/reconciliation/report", "kind"),
            ("/v1/invoices", "derived_state"),
            ("/v1/invoices", "updated_since"),
            ("/v1/invoices", "protected"),
        ):
            response = await client.get(path, params={param: value}, headers=auth(ADMIN_KEY))
            assert response.status_code == 422, (path, param, value, response.text)
    assert await table_checksums(engine) == before


@pytest.mark.usefixtures("ledger")
async def test_hostile_invoice_numbers_find_exactly_their_invoice(
    client: httpx.AsyncClient,
) -> None:
    for number in NASTY_INVOICES:
        response = await client.get(
            f"/v1/invoices/{quote(number, safe='')}", headers=auth(ADMIN_KEY)
        )
        assert response.status_code == 200, (number, response.text)
        assert response.json()["invoice_number"] == number
        by_account = _items(
            await client.get(
                "/v1/invoices",
                params={"account_ref": f"ACC {number}"[:32]},
                headers=auth(ADMIN_KEY),
            )
        )
        assert [item["invoice_number"] for item in by_account] == [number]
    for value in HOSTILE:
        if value in NASTY_INVOICES:
            continue
        response = await client.get(
            f"/v1/invoices/{quote(value, safe='')}", headers=auth(ADMIN_KEY)
        )
        assert response.status_code in (404, 422), (value, response.text)


async def test_unknown_sort_and_order_parameters_change_nothing(
    client: httpx.AsyncClient, ledger: list[str]
) -> None:
    """Refused (422 naming them: service/query_parameters.py), never read into SQL."""
    plain = _items(await client.get("/v1/invoices", headers=auth(ADMIN_KEY)))
    for param in ("sort", "order", "order_by", "sort_by", "orderBy"):
        for value in ("invoice_number; DROP TABLE invoices", "1 DESC, (SELECT 1)", "random()"):
            response = await client.get(
                "/v1/invoices", params={param: value}, headers=auth(ADMIN_KEY)
            )
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["field"] == f"query.{param}"
    assert _items(await client.get("/v1/invoices", headers=auth(ADMIN_KEY))) == plain


async def test_hostile_values_in_writes_are_refused_or_stored_as_text(
    client: httpx.AsyncClient, engine: AsyncEngine, ledger: list[str]
) -> None:
    invoices_before = await scalar(
        engine, "SELECT string_agg(invoice_number || status, ',' ORDER BY 1) FROM invoices"
    )
    for value in HOSTILE:
        edited = await client.patch(
            f"/v1/invoices/{quote(ledger[0], safe='')}",
            json={"status": value, "reason": value},
            headers=auth(ADMIN_KEY),
        )
        assert edited.status_code == 422, (value, edited.text)  # not in the picklist
        missing = await client.patch(
            f"/v1/invoices/{quote(value + '-none', safe='')}",
            json={"status": "Paid"},
            headers=auth(ADMIN_KEY),
        )
        assert missing.status_code in (404, 422), (value, missing.text)
        bulk = await client.post(
            "/v1/invoices/bulk-status",
            json={"status": "Paid", "account_ref": value, "reason": value},
            headers=auth(ADMIN_KEY),
        )
        assert bulk.status_code in (200, 422), (value, bulk.text)
        if bulk.status_code == 200:
            assert bulk.json()["matched"] == 0, value
        bulk = await client.post(
            "/v1/invoices/bulk-status",
            json={"status": "Paid", "invoice_numbers": [value], "current_status_in": [value]},
            headers=auth(ADMIN_KEY),
        )
        assert bulk.status_code in (200, 422), (value, bulk.text)
        if bulk.status_code == 200:
            assert bulk.json()["updated"] == 0, value
        run = await client.post(
            "/v1/sync/trigger?wait=true",
            json={"scope": "all", "account_ref": value, "invoice_numbers": [value]},
            headers=auth(ADMIN_KEY),
        )
        assert run.status_code in (200, 422), (value, run.text)
        if run.status_code == 200:
            assert run.json()["counts"]["examined"] == 0, value
    invoices_after = await scalar(
        engine, "SELECT string_agg(invoice_number || status, ',' ORDER BY 1) FROM invoices"
    )
    assert invoices_after == invoices_before

    current = (await client.get("/v1/picklists/invoice-status", headers=auth(ADMIN_KEY))).json()
    storable = [value for value in HOSTILE if len(value) <= 64]
    replaced = await client.put(
        "/v1/picklists/invoice-status",
        json={"values": current["values"] + storable},
        headers=auth(ADMIN_KEY),
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["values"] == current["values"] + storable
    reread = await client.get("/v1/picklists/invoice-status", headers=auth(ADMIN_KEY))
    assert reread.json()["values"] == current["values"] + storable
    verified = await client.get(
        "/v1/picklists/invoice-status/verification", headers=auth(ADMIN_KEY)
    )
    assert verified.status_code == 200
    # A hostile status that is now in the picklist is set as plain text, on one invoice only.
    edited = await client.patch(
        f"/v1/invoices/{quote(ledger[0], safe='')}",
        json={"status": HOSTILE[0]},
        headers=auth(ADMIN_KEY),
    )
    assert edited.status_code == 200, edited.text
    assert (
        await scalar(engine, "SELECT count(*) FROM invoices WHERE status = :s", s=HOSTILE[0]) == 1
    )
    assert await scalar(engine, "SELECT count(*) FROM invoices") == 8 + len(NASTY_INVOICES)
