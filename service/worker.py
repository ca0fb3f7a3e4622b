"""The background worker: reconciliation, bulk jobs, CRM delivery and read-back, claimed from
PostgreSQL.

Woken by LISTEN/NOTIFY, with a periodic sweep as a safety net; every claim uses
FOR UPDATE SKIP LOCKED, so any number of workers (and API replicas running one) share the work.
Run alone with `python -m service.worker` or `ledgerlink worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.contracts import DIRTY_CHANNEL, JOBS_CHANNEL, OUTBOX_CHANNEL
from service.db import libpq_url
from service.logging import get_logger
from service.settings import Settings

log = get_logger(__name__)

# Which task a notification wakes; a task not named here wakes on any of them.
CHANNEL_TASKS = {
    DIRTY_CHANNEL: "reconcile",
    JOBS_CHANNEL: "bulk_jobs",
    OUTBOX_CHANNEL: "crm_outbox",
}
CHANNELS = tuple(CHANNEL_TASKS)


@dataclass
class WorkerContext:
    settings: Settings
    engine: AsyncEngine
    http: httpx.AsyncClient
    database_url: str
    # Per-feature state that must live as long as the worker (e.g. the CRM connector).
    state: dict[str, Any] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


Task = Callable[[WorkerContext], Awaitable[int]]


def default_tasks() -> list[tuple[str, Task]]:
    from service.crm import tasks as crm_tasks
    from service.invoices import tasks as invoice_tasks
    from service.reconcile import tasks as reconcile_tasks

    return [
        ("reconcile", reconcile_tasks.run_once),
        ("bulk_jobs", invoice_tasks.run_once),
        ("crm_outbox", crm_tasks.run_once),
        ("crm_readback", crm_tasks.read_back_once),
    ]


class Worker:
    """One loop per task, so a slow CRM pass never delays reconciliation (or the reverse)."""

    def __init__(self, ctx: WorkerContext, tasks: list[tuple[str, Task]] | None = None) -> None:
        self.ctx = ctx
        self.tasks = tasks if tasks is not None else default_tasks()
        self._wakes = {name: asyncio.Event() for name, _ in self.tasks}
        self._listener: asyncpg.Connection | None = None

    def wake(self, name: str | None = None) -> None:
        for task_name, event in self._wakes.items():
            if name is None or task_name == name:
                event.set()

    def stop(self) -> None:
        """Finish the batches in hand, then return from run()."""
        self.ctx.stopping.set()
        self.wake()

    async def run(self) -> None:
        log.info("worker.started", tasks=[name for name, _ in self.tasks])
        listener = asyncio.create_task(self._keep_listening(), name="worker-listener")
        try:
            await asyncio.gather(*(self._loop(name, task) for name, task in self.tasks))
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self._close_listener()
            log.info("worker.stopped")

    async def run_all_once(self) -> bool:
        """One pass over every task; True when any of them did something (tests, tools)."""
        did_work = False
        for name, task in self.tasks:
            did_work = await self._pass(name, task) > 0 or did_work
        return did_work

    async def _loop(self, name: str, task: Task) -> None:
        wake = self._wakes[name]
        while not self.ctx.stopping.is_set():
            # Clear before the pass: a notification arriving during it must cause another.
            wake.clear()
            if await self._pass(name, task) > 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.ctx.settings.worker_sweep_seconds)

    async def _pass(self, name: str, task: Task) -> int:
        try:
            return await task(self.ctx)
        except Exception as exc:
            # A failing task (database restarting, a bug) must not kill the others; its work
            # stays claimable in PostgreSQL and is retried on the next pass.
            log.warning("worker.task.failed", task=name, error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)
            return 0

    async def _keep_listening(self) -> None:
        while not self.ctx.stopping.is_set():
            await self._ensure_listener()
            await asyncio.sleep(self.ctx.settings.worker_sweep_seconds)

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            conn = await asyncpg.connect(libpq_url(self.ctx.database_url))
            for channel in CHANNELS:
                await conn.add_listener(channel, self._on_notify)
            self._listener = conn
            # Anything notified while we were not listening is found by a pass now.
            self.wake()
        except Exception as exc:
            # Without LISTEN the periodic sweep still finds the work.
            log.warning("worker.listen.failed", error=f"{type(exc).__name__}: {exc}")
            self._listener = None

    def _on_notify(self, _conn: object, _pid: object, channel: str, _payload: object) -> None:
        target = CHANNEL_TASKS.get(channel)
        if target is not None and target in self._wakes:
            self._wakes[target].set()
        else:
            self.wake()

    async def _close_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
        self._listener = None


async def run_standalone(settings: Settings, database_url: str) -> None:
    """`ledgerlink worker`: the worker, and its metrics and liveness on its own port."""
    import signal

    from service.db import create_engine
    from service.ops.exposition import (
        WorkerState,
        bind_metrics_socket,
        worker_metrics_app,
        worker_metrics_server,
    )

    sock = bind_metrics_socket(settings.host, settings.worker_metrics_port)
    engine = create_engine(database_url, pool_size=settings.db_pool_size)
    async with httpx.AsyncClient(timeout=settings.opencrm_timeout_seconds) as http:
        ctx = WorkerContext(settings=settings, engine=engine, http=http, database_url=database_url)
        worker = Worker(ctx)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        state = WorkerState(settings=settings, engine=engine, worker=worker)
        server = worker_metrics_server(worker_metrics_app(state, ctx.stopping))
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="worker-metrics")
        log.info("worker.metrics.listening", host=settings.host, port=settings.worker_metrics_port)
        try:
            await worker.run()
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
            await engine.dispose()


def main() -> None:
    from service.cli import main as cli_main

    cli_main(["worker"])


if __name__ == "__main__":
    main()
