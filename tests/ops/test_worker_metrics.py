"""`ledgerlink worker` runs as in production, as its own process: Prometheus can scrape the
counters that only the worker moves, and its liveness, on LEDGERLINK_WORKER_METRICS_PORT."""

from __future__ import annotations

import asyncio
import socket

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service import __version__
from tests.faults.support import eventually
from tests.support.factories import deliver, settle, si
from tests.support.metrics import exported, samples, value
from tests.support.processes import LedgerlinkProcess
from tests.support.queries import scalar


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(url)


async def _answers(url: str) -> bool:
    try:
        return (await _get(url)).status_code == 200
    except httpx.TransportError:
        return False


async def _outbox_delivered(engine: AsyncEngine) -> bool:
    return bool(await scalar(engine, "SELECT count(*) FROM outbox WHERE state = 'delivered'"))


async def test_worker_process_exports_its_counters_once_postings_are_reconciled(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    worker = LedgerlinkProcess(database_url, command="worker", crm_mode="local")
    worker.start()
    try:
        await eventually(
            lambda: _answers(f"{worker.metrics_url}/healthz"), within=30, what="worker /healthz"
        )
        before = samples((await _get(f"{worker.metrics_url}/metrics")).text)
        assert value(before, "ledgerlink_posting_to_status_seconds_count") == 0

        response = await deliver(client, si(1, "INV-1"), settle(2, "SR", [(1, "120.00")]))
        assert response.status_code == 202, response.text
        # The API here runs no worker: only the worker process can reconcile and deliver.
        await eventually(lambda: _outbox_delivered(engine), within=30, what="outbox delivered")

        text = (await _get(f"{worker.metrics_url}/metrics")).text
        after = samples(text)
        assert value(after, "ledgerlink_posting_to_status_seconds_count") == 1
        assert value(after, "ledgerlink_status_changes_total", source="sync", status="Paid") == 1
        assert (
            value(after, "ledgerlink_reconcile_runs_total", trigger="worker", status="succeeded")
            >= 1
        )
        assert value(after, "ledgerlink_crm_deliveries_total", outcome="delivered") >= 1
        assert value(after, "ledgerlink_dirty_invoices") == 0, "gauges read from the database"
        assert value(after, "ledgerlink_ready") == 1
        build = {name: dict(labels) for name, labels in after if name == "ledgerlink_build_info"}
        assert build["ledgerlink_build_info"]["version"] == __version__
        # The worker exports the same families as the API process (one shared definition).
        api_text = (await client.get("/metrics")).text
        assert exported(text) == exported(api_text)
    finally:
        await asyncio.to_thread(worker.stop)
    assert worker.proc is not None
    assert worker.proc.returncode == 0, worker.output[-2000:]
    assert "worker.stopped" in worker.output


async def test_worker_refuses_to_start_on_a_metrics_port_in_use(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = LedgerlinkProcess(database_url, command="worker", worker_metrics_port=str(port))
        worker.start()
        assert await asyncio.to_thread(worker.wait, 60) == 2
    assert (
        f"invalid setting LEDGERLINK_WORKER_METRICS_PORT: cannot listen on 127.0.0.1:{port}"
        in worker.output
    )
