"""The worker path: claims, races, crashes, postings arriving mid-batch, run records, metrics,
and the whole loop woken by LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import collections
import random
import uuid
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.db import create_engine
from service.reconcile import compute, runs, tasks
from service.settings import Settings
from service.worker import Worker
from tests.support.factories import load, reconcile, settle, si
from tests.support.queries import history, invoice, scalar
from tests.support.settings import make_settings


async def _backlog(engine: AsyncEngine, settings: Settings, n: int) -> None:
    postings = [si(i, f"INV-{i:05d}", "100.00") for i in range(1, n + 1)]
    postings += [settle(100_000 + i, "SR", [(i, "100.00")]) for i in range(1, n + 1)]
    await load(engine, settings, *postings)


async def test_two_workers_racing_on_one_backlog_do_every_invoice_once(
    engine: AsyncEngine, database_url: str
) -> None:
    config = make_settings(database_url, worker_batch_size=7)
    await _backlog(engine, config, 300)
    engines = [create_engine(database_url, pool_size=2) for _ in range(3)]
    try:
        examined = await asyncio.gather(*(tasks.reconcile_all_dirty(e, config) for e in engines))
    finally:
        for e in engines:
            await e.dispose()
    assert sum(examined) == 300
    assert await scalar(engine, "SELECT count(*) FROM dirty_invoices") == 0
    # Exactly one history row and one change per invoice: no double work, no lost update.
    rows = await scalar(
        engine,
        "SELECT count(*) FROM (SELECT invoice_number FROM status_history "
        "GROUP BY invoice_number HAVING count(*) = 1) s",
    )
    assert rows == 300
    assert await scalar(engine, "SELECT sum(changed) FROM sync_runs") == 300
    assert await scalar(engine, "SELECT count(DISTINCT status) FROM invoices") == 1


async def test_posting_arriving_during_a_reconcile_is_not_lost(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, si(1, "INV-1", "100.00"))
    async with engine.begin() as conn:
        numbers = (await compute.claim_dirty(conn, 10)).numbers
        assert numbers == ["INV-1"]
        # A receipt is ingested now: its transaction waits for our row lock on the invoice.
        arriving = asyncio.create_task(load(engine, settings, settle(2, "SR", [(1, "100.00")])))
        await asyncio.sleep(0.2)
        await compute.apply_batch(
            conn,
            numbers,
            settings,
            run_id=uuid.uuid4(),
            actor="worker",
            new_run=compute.RunInsert("worker", '{"scope": "dirty"}'),
        )
    await arriving
    row = await invoice(engine, "INV-1")
    assert row["dirty_since"] is not None  # marked again after our commit
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-1"))["status"] == "Paid"


async def test_ingest_and_workers_racing_on_the_same_invoices_lose_no_mark(
    engine: AsyncEngine, database_url: str
) -> None:
    """Receipts keep arriving for a few invoices while three workers reconcile them: whatever
    the interleaving, once the queue is drained every invoice shows every receipt. A mark lost
    between an ingest and a batch (a batch taking an invoice off the queue that an uncommitted
    ingest had just queued again) would leave an invoice short of the last receipts."""
    config = make_settings(database_url, worker_batch_size=5)
    invoices, batches, per_batch = 12, 40, 6
    await load(engine, config, *[si(i, f"INV-{i:05d}", "1000.00") for i in range(1, invoices + 1)])
    rng = random.Random(17)
    plan = [[rng.randint(1, invoices) for _ in range(per_batch)] for _ in range(batches)]
    ingesting = True
    engines = [create_engine(database_url, pool_size=2) for _ in range(7)]

    async def ingest(worker_engine: AsyncEngine, k: int) -> None:
        for b in range(k, batches, 4):
            receipts = [
                settle(10_000 + b * per_batch + j, "SR", [(target, "1.00")])
                for j, target in enumerate(plan[b])
            ]
            await load(worker_engine, config, *receipts)
            await asyncio.sleep(rng.random() / 200)

    async def work(worker_engine: AsyncEngine) -> None:
        while ingesting:
            if not (await tasks.reconcile_dirty(worker_engine, config)).examined:
                await asyncio.sleep(0.001)

    try:
        workers = [asyncio.create_task(work(e)) for e in engines[4:]]
        await asyncio.gather(*(ingest(e, k) for k, e in enumerate(engines[:4])))
        ingesting = False
        await asyncio.gather(*workers)
        await reconcile(engine, config)
    finally:
        for e in engines:
            await e.dispose()
    expected = collections.Counter(n for receipts in plan for n in receipts)
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT invoice_number, paid FROM invoices"))
        paid = {r.invoice_number: r.paid for r in rows}
    assert paid == {
        f"INV-{i:05d}": Decimal(expected[i]).quantize(Decimal("0.01"))
        for i in range(1, invoices + 1)
    }
    assert await scalar(engine, "SELECT count(*) FROM dirty_invoices") == 0


async def test_a_batch_killed_midway_leaves_nothing_half_done(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, si(1, "INV-1", "100.00"), settle(2, "SR", [(1, "100.00")]))

    async def killed_midway() -> None:
        async with engine.begin() as conn:
            numbers = (await compute.claim_dirty(conn, 10)).numbers
            await compute.apply_batch(
                conn,
                numbers,
                settings,
                run_id=uuid.uuid4(),
                actor="worker",
                new_run=compute.RunInsert("worker", '{"scope": "dirty"}'),
            )
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        await killed_midway()
    row = await invoice(engine, "INV-1")
    assert (row["status"], row["dirty_since"] is not None) == ("Unpaid", True)
    for table in ("status_history", "outbox", "sync_runs", "sync_run_changes"):
        assert await scalar(engine, f"SELECT count(*) FROM {table}") == 0
    await reconcile(engine, settings)
    assert (await invoice(engine, "INV-1"))["status"] == "Paid"
    assert len(await history(engine, "INV-1")) == 1


async def test_worker_runs_are_recorded_only_when_they_change_something(
    engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, si(1, "INV-1", "100.00"), settle(2, "SR", [(1, "40.00")]))
    await reconcile(engine, settings)
    async with engine.connect() as conn:
        runs = (await conn.execute(sa.text("SELECT * FROM sync_runs"))).mappings().all()
    assert len(runs) == 1
    run = runs[0]
    assert (run["trigger"], run["status"], run["examined"], run["changed"], run["actor"]) == (
        "worker",
        "succeeded",
        1,
        1,
        "worker",
    )
    assert (await history(engine, "INV-1"))[0]["run_id"] == run["id"]
    # Re-sending the same receipt re-marks nothing; touching the invoice without a change
    # reconciles it with nothing to record.
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO dirty_invoices (invoice_number) SELECT invoice_number FROM invoices"
            )
        )
    assert await reconcile(engine, settings) == 1
    assert await scalar(engine, "SELECT count(*) FROM sync_runs") == 1


async def test_metrics_count_changes_conflicts_and_latency(
    engine: AsyncEngine, settings: Settings
) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    latency = sample("ledgerlink_posting_to_status_seconds_count")
    paid = sample("ledgerlink_status_changes_total", {"source": "sync", "status": "Paid"})
    runs = sample("ledgerlink_reconcile_runs_total", {"trigger": "worker", "status": "succeeded"})
    conflicts = sample("ledgerlink_conflicts_total")
    await load(engine, settings, si(1, "INV-1", "10.00"), settle(2, "SR", [(1, "10.00")]))
    await load(engine, settings, si(3, "INV-3", "10.00"))
    await reconcile(engine, settings)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE invoices SET status = 'Written Off' WHERE invoice_number = 'INV-3'")
        )
    await load(engine, settings, settle(4, "SR", [(3, "5.00")]))
    await reconcile(engine, settings)
    assert sample("ledgerlink_posting_to_status_seconds_count") == latency + 2
    assert (
        sample("ledgerlink_status_changes_total", {"source": "sync", "status": "Paid"}) == paid + 1
    )
    assert (
        sample("ledgerlink_reconcile_runs_total", {"trigger": "worker", "status": "succeeded"})
        == runs + 2
    )
    assert sample("ledgerlink_conflicts_total") == conflicts + 1


async def test_the_worker_loop_reconciles_on_notify(
    engine: AsyncEngine, settings: Settings, database_url: str
) -> None:
    # A long sweep interval: only LISTEN/NOTIFY can make this finish in time.
    config = make_settings(database_url, worker_sweep_seconds=300)
    async with httpx.AsyncClient() as http:
        ctx = WorkerContext(settings=config, engine=engine, http=http)
        worker = Worker(
            [("reconcile", tasks.Reconcile(ctx).run_once)],
            database_url=database_url,
            sweep_seconds=config.worker_sweep_seconds,
        )
        running = asyncio.create_task(worker.run())
        try:
            for _ in range(200):  # the worker must be listening before the posting arrives
                if worker._listener is not None:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            await load(engine, config, si(1, "INV-1", "50.00"), settle(2, "SR", [(1, "50.00")]))
            for _ in range(500):
                if (await invoice(engine, "INV-1"))["status"] == "Paid":
                    break
                await asyncio.sleep(0.02)
            assert (await invoice(engine, "INV-1"))["status"] == "Paid"
        finally:
            worker.stop()
            await asyncio.wait_for(running, timeout=30)


async def test_worker_task_executes_a_queued_run_then_the_backlog(
    engine: AsyncEngine, settings: Settings, database_url: str
) -> None:
    await load(engine, settings, si(1, "INV-1", "50.00"))
    run_id = await tasks.request_run(
        engine, runs.RunScope(scope="all"), dry_run=True, actor="alice", running=False
    )
    async with httpx.AsyncClient() as http:
        ctx = WorkerContext(settings=settings, engine=engine, http=http)
        reconcile = tasks.Reconcile(ctx)
        while await reconcile.run_once():
            pass
    async with engine.connect() as conn:
        run = await runs.get_run(conn, run_id)
    assert run is not None
    assert (run.status, run.examined, run.changed, run.dry_run) == ("succeeded", 1, 1, True)
    assert (await invoice(engine, "INV-1"))["dirty_since"] is None  # the worker's own batch
