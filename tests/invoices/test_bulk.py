"""POST /v1/invoices/bulk-status (the Global Update) run within the request, and GET /v1/jobs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.factories import BULK_STATUS, add_invoice, add_many, bulk_update
from tests.support.keys import ADMIN_KEY, READ_KEY, WRITE_KEY, auth
from tests.support.queries import scalar, statuses, table_checksums


def _outcomes(job: dict[str, Any]) -> dict[str, str]:
    return {r["invoice_number"]: r["outcome"] for r in job["results"]}


@pytest.fixture
async def book(engine: AsyncEngine) -> None:
    """ACME01: settled, part paid, written off (protected); BETA02: settled, unpaid."""
    await add_invoice(engine, "A-1", account_ref="ACME01", status="Paid", outstanding="0.00")
    await add_invoice(engine, "A-2", account_ref="ACME01", status="Part Paid", outstanding="60.00")
    await add_invoice(engine, "A-3", account_ref="ACME01", status="Written Off", outstanding="0")
    await add_invoice(
        engine, "A-4", account_ref="ACME01", status="Paid/Written Off", outstanding="0.00"
    )
    await add_invoice(engine, "B-1", account_ref="BETA02", status="Paid", outstanding="0.00")
    await add_invoice(engine, "B-2", account_ref="BETA02", status="Unpaid")


@pytest.mark.usefixtures("book")
async def test_account_ref_selects_the_account(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await bulk_update(client, {"status": "Cancelled", "account_ref": "BETA02"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded"
    assert (job["matched"], job["updated"], job["unchanged"]) == (2, 2, 0)
    assert _outcomes(job) == {"B-1": "updated", "B-2": "updated"}
    assert job["progress"] == {"processed": 2, "total": 2}
    assert await statuses(engine, "B-1", "B-2", "A-1") == {
        "B-1": "Cancelled",
        "B-2": "Cancelled",
        "A-1": "Paid",
    }


@pytest.mark.usefixtures("book")
async def test_invoice_numbers_select_those_and_report_the_unknown(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {"status": "Written Off", "invoice_numbers": ["B-1", "A-1", "NOPE-9", "B-1"]}
    job = (await bulk_update(client, body)).json()
    assert job["results"] == [
        {
            "invoice_number": "A-1",
            "from_status": "Paid",
            "to_status": "Written Off",
            "outcome": "updated",
        },
        {
            "invoice_number": "B-1",
            "from_status": "Paid",
            "to_status": "Written Off",
            "outcome": "updated",
        },
        {
            "invoice_number": "NOPE-9",
            "from_status": None,
            "to_status": None,
            "outcome": "not_found",
        },
    ]
    assert (job["updated"], job["not_found"]) == (2, 1)
    assert await statuses(engine, "A-1", "B-1", "A-2") == {
        "A-1": "Written Off",
        "B-1": "Written Off",
        "A-2": "Part Paid",
    }


@pytest.mark.usefixtures("book")
async def test_both_selectors_combine_with_and(client: httpx.AsyncClient) -> None:
    body = {"status": "Cancelled", "account_ref": "ACME01", "invoice_numbers": ["A-1", "B-1"]}
    job = (await bulk_update(client, body)).json()
    assert _outcomes(job) == {"A-1": "updated", "B-1": "skipped"}
    assert (job["matched"], job["skipped"]) == (1, 1)


@pytest.mark.usefixtures("book")
async def test_current_status_in_filters(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = {"status": "Sent", "account_ref": "ACME01", "current_status_in": ["Part Paid"]}
    job = (await bulk_update(client, body)).json()
    assert _outcomes(job) == {
        "A-1": "skipped",
        "A-2": "updated",
        "A-3": "skipped",
        "A-4": "skipped",
    }
    assert await statuses(engine, "A-1", "A-2") == {"A-1": "Paid", "A-2": "Sent"}


@pytest.mark.usefixtures("book")
async def test_a_mistyped_current_status_in_is_422_and_nothing_is_queued(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = await table_checksums(engine)
    answer = await client.post(
        BULK_STATUS,
        json={"status": "Sent", "account_ref": "ACME01", "current_status_in": ["Part paid"]},
        headers=auth(WRITE_KEY),
    )
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["detail"].startswith("unknown status 'Part paid'; statuses are case-sensitive")
    assert problem["errors"][0]["field"] == "body.current_status_in"
    assert "Part Paid" in problem["allowed"]
    assert await table_checksums(engine) == before


@pytest.mark.usefixtures("book")
async def test_only_settled_leaves_invoices_with_a_balance(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {"status": "Paid/Written Off", "account_ref": "ACME01", "only_settled": True}
    job = (await bulk_update(client, body)).json()
    assert _outcomes(job) == {
        "A-1": "updated",
        "A-2": "skipped",  # 60.00 outstanding
        "A-3": "skipped_protected",  # a person set Written Off: left alone
        "A-4": "unchanged",
    }
    assert (job["matched"], job["updated"], job["unchanged"], job["skipped_protected"]) == (
        3,
        1,
        1,
        1,
    )
    assert await statuses(engine, "A-2", "A-3") == {"A-2": "Part Paid", "A-3": "Written Off"}


@pytest.mark.usefixtures("book")
async def test_protected_invoices_change_only_when_named_in_current_status_in(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {
        "status": "Paid/Written Off",
        "account_ref": "ACME01",
        "current_status_in": ["Written Off"],
    }
    job = (await bulk_update(client, body)).json()
    assert _outcomes(job)["A-3"] == "updated"
    assert await statuses(engine, "A-3") == {"A-3": "Paid/Written Off"}


@pytest.mark.usefixtures("book")
async def test_history_and_outbox_rows_carry_the_job(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {"status": "Written Off", "invoice_numbers": ["A-1", "B-1"], "reason": "BADDBT run"}
    job = (await bulk_update(client, body)).json()
    async with engine.connect() as conn:
        history = (await conn.execute(sa.text("SELECT * FROM status_history ORDER BY id"))).all()
        outbox = (await conn.execute(sa.text("SELECT * FROM outbox ORDER BY id"))).all()
    assert {h.invoice_number for h in history} == {"A-1", "B-1"}
    for h in history:
        assert (h.source, h.actor, h.reason, str(h.job_id)) == (
            "bulk",
            "writer",
            "BADDBT run",
            job["job_id"],
        )
        assert (h.from_status, h.to_status) == ("Paid", "Written Off")
    assert {(o.invoice_number, o.source) for o in outbox} == {("A-1", "bulk"), ("B-1", "bulk")}
    by_number = {h.invoice_number: h.id for h in history}
    for o in outbox:
        assert o.payload["status"] == "Written Off"
        assert o.payload["outstanding"] == "0.00"
        assert o.payload["history_id"] == by_number[o.invoice_number]
    detail = (await client.get("/v1/invoices/A-1", headers=auth(READ_KEY))).json()
    assert detail["history"][0]["job_id"] == job["job_id"]
    assert detail["history"][0]["source"] == "bulk"


@pytest.mark.usefixtures("book")
async def test_releasing_by_bulk_queues_reconciliation(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {"status": "Paid", "account_ref": "ACME01", "current_status_in": ["Written Off"]}
    await bulk_update(client, body)
    dirty = await scalar(engine, "SELECT array_agg(invoice_number) FROM dirty_invoices")
    assert dirty == ["A-3"]


@pytest.mark.usefixtures("book")
async def test_dry_run_reports_exactly_and_writes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {"status": "Written Off", "account_ref": "ACME01", "only_settled": True}
    before = await table_checksums(engine, exclude=("jobs", "job_results"))
    dry = (await bulk_update(client, {**body, "dry_run": True})).json()
    assert await table_checksums(engine, exclude=("jobs", "job_results")) == before
    assert dry["dry_run"] is True
    # The job record is the report; only it was stored.
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 1
    real = (await bulk_update(client, body)).json()
    keys = ("matched", "updated", "unchanged", "skipped", "skipped_protected", "not_found")
    assert {k: dry[k] for k in keys} == {k: real[k] for k in keys}
    assert dry["results"] == real["results"]
    assert real["updated"] == 1


@pytest.mark.usefixtures("book")
async def test_dry_run_takes_no_row_locks(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(
            sa.text("SELECT 1 FROM invoices WHERE invoice_number = 'A-1' FOR UPDATE")
        )
        # A dry run that locked would wait for the holder forever; fail instead of hanging.
        response = await asyncio.wait_for(
            bulk_update(
                client, {"status": "Written Off", "invoice_numbers": ["A-1"], "dry_run": True}
            ),
            timeout=30,
        )
        await holder.rollback()
    assert response.status_code == 200
    assert _outcomes(response.json()) == {"A-1": "updated"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "Written Off"}, "body"),
        ({"status": "Written Off", "invoice_numbers": []}, "body.invoice_numbers"),
        ({"status": "Written Off", "account_ref": ""}, "body.account_ref"),
        ({"status": "Written Off", "account_ref": None, "invoice_numbers": None}, "body"),
        ({"status": "Written Off", "account_ref": "A", "acount_ref": "B"}, "body.acount_ref"),
        ({"status": "Written Off", "invoice_numbers": ["x" * 31]}, "body.invoice_numbers.0"),
        (
            {"status": "Written Off", "invoice_numbers": ["ok", "nul\u0000"]},
            "body.invoice_numbers.1",
        ),
        (
            {"status": "Written Off", "account_ref": "A", "current_status_in": []},
            "body.current_status_in",
        ),
        ({"account_ref": "A"}, "body.status"),
        # An empty list selects nothing, never everything; an unknown key is a typo, not
        # a criterion to drop (issue 24 item 4).
        ({"status": "Written Off", "filter": {"derived_state": []}}, "body.filter.derived_state"),
        ({"status": "Written Off", "filter": {"status": []}}, "body.filter.status"),
        (
            {"status": "Written Off", "filter": {"acount_ref": "A", "protected": False}},
            "body.filter.acount_ref",
        ),
        (
            {"status": "Written Off", "filter": {"account_ref": "A"}, "account_ref": "B"},
            "body",
        ),
        (
            {"status": "Written Off", "account_ref": "A", "only_settled": "perhaps"},
            "body.only_settled",
        ),
    ],
)
async def test_invalid_requests_are_422_and_store_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, body: dict[str, Any], field: str
) -> None:
    await add_invoice(engine, "A-1", account_ref="A")
    before = await table_checksums(engine)
    response = await bulk_update(client, body)
    assert response.status_code == 422, response.text
    assert any(e["field"].startswith(field) for e in response.json()["errors"]), response.json()
    assert await table_checksums(engine) == before


@pytest.mark.usefixtures("book")
@pytest.mark.parametrize(
    "selection",
    [
        {"filter": {"derived_state": []}},
        {"filter": {"status": []}},
        {"filter": {"acount_ref": "BETA02", "protected": False}},
    ],
)
async def test_an_empty_or_mistyped_filter_writes_off_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, selection: dict[str, Any]
) -> None:
    """Issue 24 item 4: these wrote off every invoice (or every unprotected one) and queued
    each to the CRM."""
    before = await table_checksums(engine)
    body = {"status": "Written Off", "reason": "year-end clean-up", **selection}
    response = await bulk_update(client, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await table_checksums(engine) == before


@pytest.mark.usefixtures("book")
async def test_dry_run_in_the_query_string_is_422_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A person who meant a preview must never get the change for real."""
    before = await table_checksums(engine)
    response = await client.post(
        f"{BULK_STATUS}?dry_run=true",
        json={"status": "Written Off", "account_ref": "ACME01"},
        headers=auth(WRITE_KEY),
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == ["query.dry_run"]
    assert "body" in problem["detail"]
    assert '"dry_run": true' in problem["detail"]
    assert await table_checksums(engine) == before


async def test_no_selector_says_why(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    response = await bulk_update(client, {"status": "Written Off", "only_settled": True})
    assert response.status_code == 422
    assert "account_ref and/or invoice_numbers" in response.json()["detail"]


@pytest.mark.usefixtures("book")
async def test_status_outside_the_picklist_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = await table_checksums(engine)
    response = await bulk_update(client, {"status": "Bad Debt", "account_ref": "ACME01"})
    assert response.status_code == 422
    assert "Paid/Written Off" in response.json()["allowed"]
    assert await table_checksums(engine) == before


async def test_too_many_numbers_is_422(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    numbers = [f"N{i}" for i in range(100_001)]
    response = await bulk_update(client, {"status": "Written Off", "invoice_numbers": numbers})
    assert response.status_code == 422
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 0


async def test_empty_account_is_a_finished_empty_job(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await bulk_update(client, {"status": "Written Off", "account_ref": "NOBODY"})
    assert response.status_code == 200
    job = response.json()
    assert (job["status"], job["matched"], job["results"]) == ("succeeded", 0, [])


async def test_results_are_paged(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await add_many(engine, 25, account_ref="ACME01", prefix="P", status="Paid")
    job = (await bulk_update(client, {"status": "Written Off", "account_ref": "ACME01"})).json()
    assert len(job["results"]) == 25
    assert job["next_results_cursor"] is None
    url = f"/v1/jobs/{job['job_id']}"
    seen: list[str] = []
    cursor = None
    while True:
        query = "?results_limit=10" + (f"&results_cursor={cursor}" if cursor else "")
        page = (await client.get(url + query, headers=auth(READ_KEY))).json()
        assert len(page["results"]) <= 10
        seen.extend(r["invoice_number"] for r in page["results"])
        cursor = page["next_results_cursor"]
        if cursor is None:
            break
    assert seen == [f"P{n:07d}" for n in range(1, 26)]


@pytest.mark.usefixtures("book")
async def test_results_can_be_filtered_by_outcome(client: httpx.AsyncClient) -> None:
    body = {"status": "Written Off", "account_ref": "ACME01", "only_settled": True}
    job = (await bulk_update(client, {**body, "dry_run": True})).json()
    page = (
        await client.get(f"/v1/jobs/{job['job_id']}?outcome=updated", headers=auth(READ_KEY))
    ).json()
    assert [r["invoice_number"] for r in page["results"]] == ["A-1"]


@pytest.mark.usefixtures("book")
async def test_job_cursor_and_id_validation(client: httpx.AsyncClient) -> None:
    job = (await bulk_update(client, {"status": "Cancelled", "account_ref": "ACME01"})).json()
    url = f"/v1/jobs/{job['job_id']}"
    first = (await client.get(f"{url}?results_limit=1", headers=auth(READ_KEY))).json()
    cursor = first["next_results_cursor"]
    assert cursor is not None
    other = await client.get(
        f"{url}?results_cursor={cursor}&outcome=skipped", headers=auth(READ_KEY)
    )
    assert other.status_code == 422
    bad = await client.get(f"{url}?results_cursor=garbage", headers=auth(READ_KEY))
    assert bad.status_code == 422
    assert (await client.get(f"{url}?results_limit=0", headers=auth(READ_KEY))).status_code == 422
    unknown = "/v1/jobs/00000000-0000-4000-8000-000000000000"
    assert (await client.get(unknown, headers=auth(READ_KEY))).status_code == 404
    assert (await client.get("/v1/jobs/not-a-uuid", headers=auth(READ_KEY))).status_code == 422


@pytest.mark.usefixtures("book")
async def test_scopes(client: httpx.AsyncClient) -> None:
    body = {"status": "Cancelled", "account_ref": "ACME01"}
    assert (await client.post(BULK_STATUS, json=body)).status_code == 401
    assert (await client.post(BULK_STATUS, json=body, headers=auth(READ_KEY))).status_code == 403
    admin = await client.post(BULK_STATUS, json=body, headers=auth(ADMIN_KEY))
    assert admin.status_code == 200
    job_url = f"/v1/jobs/{admin.json()['job_id']}"
    assert (await client.get(job_url)).status_code == 401
    assert (await client.get(job_url, headers=auth(READ_KEY))).status_code == 200


@pytest.mark.usefixtures("book")
async def test_inline_run_is_all_or_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the statuses, history and outbox were written leaves none of them."""
    from service.jobs import repository

    async def broken(*_: Any) -> None:
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(repository, "finish_job", broken)
    before = await table_checksums(engine)
    with pytest.raises(RuntimeError, match="disk full"):
        await bulk_update(client, {"status": "Cancelled", "account_ref": "ACME01"})
    assert await table_checksums(engine) == before
