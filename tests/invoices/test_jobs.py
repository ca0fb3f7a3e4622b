"""Large Global Updates: queued (202), run by the worker in one transaction with progress."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.contracts import JOBS_CHANNEL
from service.jobs import repository, tasks
from tests.support.factories import add_invoice, add_many, bulk_update
from tests.support.keys import READ_KEY, auth
from tests.support.queries import scalar, table_checksums


async def _job(client: httpx.AsyncClient, job_id: str, query: str = "") -> dict[str, Any]:
    response = await client.get(f"/v1/jobs/{job_id}{query}", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_100k_invoices_through_the_worker_with_progress(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker_ctx: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await add_many(engine, 100_000, account_ref="BIG01", prefix="B", status="Paid")
    await add_invoice(engine, "OTHER-1", account_ref="ELSE01", status="Paid")
    response = await bulk_update(
        client, {"status": "Written Off", "account_ref": "BIG01", "only_settled": True}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert response.json()["status"] == "queued"
    assert response.json()["progress"] == {"processed": 0, "total": 100_000}

    seen: list[tuple[str, int, int]] = []
    report = tasks.commit_progress

    async def watching(engine: Any, job: Any, processed: int) -> None:
        await report(engine, job, processed)
        # What a client polling GET /v1/jobs/{id} sees while the job still runs.
        polled = await _job(client, job_id, "?results_limit=1")
        seen.append((polled["status"], polled["progress"]["processed"], len(polled["results"])))

    monkeypatch.setattr(tasks, "commit_progress", watching)
    assert await tasks.run_once(worker_ctx) == 1

    assert seen == [("running", n * 10_000, 0) for n in range(1, 11)]
    job = await _job(client, job_id, "?results_limit=3")
    assert job["status"] == "succeeded"
    assert job["progress"] == {"processed": 100_000, "total": 100_000}
    assert (job["matched"], job["updated"], job["not_found"]) == (100_000, 100_000, 0)
    assert [r["invoice_number"] for r in job["results"]] == ["B0000001", "B0000002", "B0000003"]
    assert await scalar(engine, "SELECT count(*) FROM invoices WHERE status = 'Written Off'") == (
        100_000
    )
    assert (
        await scalar(engine, "SELECT count(*) FROM status_history WHERE job_id = :j", j=job_id)
        == 100_000
    )
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE source = 'bulk'") == 100_000
    assert (
        await scalar(engine, "SELECT status FROM invoices WHERE invoice_number = 'OTHER-1'")
        == "Paid"
    )
    # Nothing left to do.
    assert await tasks.run_once(worker_ctx) == 0


async def test_queued_job_is_pollable_before_the_worker_runs(
    small_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_many(engine, 6, account_ref="ACME01")
    response = await bulk_update(small_client, {"status": "Written Off", "account_ref": "ACME01"})
    assert response.status_code == 202
    job = await _job(small_client, response.json()["job_id"])
    assert (job["status"], job["results"], job["finished_at"]) == ("queued", [], None)
    assert await scalar(engine, "SELECT count(*) FROM invoices WHERE status = 'Written Off'") == 0


async def test_queued_numbers_job_reports_the_unknown(
    small_client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: WorkerContext
) -> None:
    await add_many(engine, 6, account_ref="ACME01", prefix="N")
    numbers = [f"N{n:07d}" for n in range(1, 7)] + ["GONE-1", "GONE-2"]
    response = await bulk_update(
        small_client, {"status": "Written Off", "invoice_numbers": numbers}
    )
    assert response.status_code == 202
    assert await tasks.run_once(worker_ctx) == 1
    job = await _job(small_client, response.json()["job_id"])
    assert (job["updated"], job["not_found"]) == (6, 2)
    # Results come in invoice-number order (code points), each number once.
    assert [(r["invoice_number"], r["outcome"]) for r in job["results"][:3]] == [
        ("GONE-1", "not_found"),
        ("GONE-2", "not_found"),
        ("N0000001", "updated"),
    ]


async def test_queued_dry_run_writes_nothing(
    small_client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: WorkerContext
) -> None:
    await add_many(engine, 9, account_ref="ACME01")
    before = await table_checksums(engine, exclude=("jobs", "job_results"))
    response = await bulk_update(
        small_client, {"status": "Written Off", "account_ref": "ACME01", "dry_run": True}
    )
    assert response.status_code == 202
    assert await tasks.run_once(worker_ctx) == 1
    assert await table_checksums(engine, exclude=("jobs", "job_results")) == before
    job = await _job(small_client, response.json()["job_id"])
    assert (job["status"], job["dry_run"], job["updated"]) == ("succeeded", True, 9)


async def test_a_failing_job_changes_nothing_and_is_retried(
    small_client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker_ctx: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All or nothing: a failure after some chunks rolls every chunk back."""
    await add_many(engine, 12, account_ref="ACME01")
    monkeypatch.setattr("service.jobs.service.BULK_CHUNK", 4)
    before = await table_checksums(engine, exclude=("jobs", "job_results"))
    response = await bulk_update(small_client, {"status": "Written Off", "account_ref": "ACME01"})
    job_id = response.json()["job_id"]
    report = repository.report_progress
    calls: list[int] = []

    async def failing(side: Any, job: Any, processed: int) -> None:
        await report(side, job, processed)
        calls.append(processed)
        if processed == 8:
            raise RuntimeError("worker lost its footing")

    monkeypatch.setattr(repository, "report_progress", failing)
    assert await tasks.run_once(worker_ctx) == 1
    assert calls == [4, 8]
    assert await table_checksums(engine, exclude=("jobs", "job_results")) == before
    assert await scalar(engine, "SELECT count(*) FROM job_results") == 0
    job = await _job(small_client, job_id)
    assert job["status"] == "queued"
    assert "worker lost its footing" in job["error"]

    monkeypatch.setattr(repository, "report_progress", report)
    assert await tasks.run_once(worker_ctx) == 1
    job = await _job(small_client, job_id)
    assert (job["status"], job["updated"], job["error"]) == ("succeeded", 12, None)
    assert await scalar(engine, "SELECT attempts FROM jobs") == 2


async def test_a_job_that_keeps_failing_is_marked_failed(
    small_client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker_ctx: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await add_many(engine, 6, account_ref="ACME01")
    response = await bulk_update(small_client, {"status": "Written Off", "account_ref": "ACME01"})

    async def broken(*_: Any) -> None:
        raise RuntimeError("always")

    monkeypatch.setattr(repository, "report_progress", broken)
    for _ in range(3):
        assert await tasks.run_once(worker_ctx) == 1
    job = await _job(small_client, response.json()["job_id"])
    assert job["status"] == "failed"
    assert "attempt 3 failed" in job["error"]
    assert job["finished_at"] is not None
    assert await tasks.run_once(worker_ctx) == 0
    assert await scalar(engine, "SELECT count(*) FROM status_history") == 0


async def test_status_removed_from_the_picklist_before_the_run_fails_the_job(
    small_client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: WorkerContext
) -> None:
    await add_many(engine, 6, account_ref="ACME01")
    response = await bulk_update(small_client, {"status": "Cancelled", "account_ref": "ACME01"})
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM picklist_values WHERE value = 'Cancelled'"))
    assert await tasks.run_once(worker_ctx) == 1
    job = await _job(small_client, response.json()["job_id"])
    assert job["status"] == "failed"
    assert "not in the invoice status picklist" in job["error"]
    assert await scalar(engine, "SELECT count(*) FROM invoices WHERE status = 'Cancelled'") == 0


async def test_a_job_whose_worker_died_is_picked_up_again(
    small_client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: WorkerContext
) -> None:
    await add_many(engine, 6, account_ref="ACME01")
    response = await bulk_update(small_client, {"status": "Written Off", "account_ref": "ACME01"})
    # What a worker that died mid-run leaves behind: 'running', its transaction (and lock) gone.
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE jobs SET status = 'running', attempts = 1, processed = 4")
        )
    assert await tasks.run_once(worker_ctx) == 1
    job = await _job(small_client, response.json()["job_id"])
    assert (job["status"], job["updated"]) == ("succeeded", 6)


async def test_two_workers_never_run_one_job_twice(
    small_client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: WorkerContext
) -> None:
    await add_many(engine, 30, account_ref="ACME01")
    await bulk_update(small_client, {"status": "Written Off", "account_ref": "ACME01"})
    done = await asyncio.gather(*[tasks.run_once(worker_ctx) for _ in range(3)])
    assert sorted(done) == [0, 0, 1]
    assert await scalar(engine, "SELECT count(*) FROM status_history") == 30


async def test_jobs_are_claimed_oldest_first_and_notify_the_worker(
    small_client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker_ctx: WorkerContext,
    database_url: str,
) -> None:
    import asyncpg

    from service.db import libpq_url

    await add_many(engine, 6, account_ref="ACME01", prefix="A")
    await add_many(engine, 6, account_ref="BETA02", prefix="B")
    heard: list[str] = []
    listener = await asyncpg.connect(libpq_url(database_url))
    try:
        await listener.add_listener(JOBS_CHANNEL, lambda *args: heard.append(args[2]))
        first = await bulk_update(small_client, {"status": "Written Off", "account_ref": "ACME01"})
        second = await bulk_update(small_client, {"status": "Written Off", "account_ref": "BETA02"})
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await listener.close()
    assert heard == [JOBS_CHANNEL, JOBS_CHANNEL]
    assert await tasks.run_once(worker_ctx) == 1
    assert (await _job(small_client, first.json()["job_id"]))["status"] == "succeeded"
    assert (await _job(small_client, second.json()["job_id"]))["status"] == "queued"
