"""The background worker loop: one loop per task, woken by LISTEN/NOTIFY, with a periodic
sweep as a safety net.

Generic: it runs whatever list of tasks it is given (service/tasks.py assembles them) and imports
no feature. Every claim the tasks make uses FOR UPDATE SKIP LOCKED, so any number of workers
(and API replicas running one) share the work. `ledgerlink worker` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import asyncpg

from service.context import Task
from service.contracts import DIRTY_CHANNEL, JOBS_CHANNEL, OUTBOX_CHANNEL
from service.db import libpq_url
from service.logging import get_logger

log = get_logger(__name__)

# Which task a notification wakes; a task not named here wakes on any of them.
CHANNEL_TASKS = {
    DIRTY_CHANNEL: "reconcile",
    JOBS_CHANNEL: "bulk_jobs",
    OUTBOX_CHANNEL: "crm_outbox",
}
CHANNELS = tuple(CHANNEL_TASKS)


class Worker:
    """One loop per task, so a slow CRM pass never delays reconciliation (or the reverse)."""

    def __init__(
        self, tasks: Sequence[tuple[str, Task]], *, database_url: str, sweep_seconds: float
    ) -> None:
        self.tasks = list(tasks)
        self.database_url = database_url
        self.sweep_seconds = sweep_seconds
        # Set by stop(); the worker's /healthz answers 503 from then on.
        self.stopping = asyncio.Event()
        self._wakes = {name: asyncio.Event() for name, _ in self.tasks}
        self._listener: asyncpg.Connection | None = None

    def wake(self, name: str | None = None) -> None:
        for task_name, event in self._wakes.items():
            if name is None or task_name == name:
                event.set()

    def stop(self) -> None:
        """Finish the batches in hand, then return from run()."""
        self.stopping.set()
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

    async def _loop(self, name: str, task: Task) -> None:
        wake = self._wakes[name]
        while not self.stopping.is_set():
            # Clear before the pass: a notification arriving during it must cause another.
            wake.clear()
            if await self._pass(name, task) > 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.sweep_seconds)

    async def _pass(self, name: str, task: Task) -> int:
        try:
            return await task()
        except Exception as exc:
            # A failing task (database restarting, a bug) must not kill the others; its work
            # stays claimable in PostgreSQL and is retried on the next pass.
            log.warning("worker.task.failed", task=name, error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)
            return 0

    async def _keep_listening(self) -> None:
        while not self.stopping.is_set():
            await self._ensure_listener()
            await asyncio.sleep(self.sweep_seconds)

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            conn = await asyncpg.connect(libpq_url(self.database_url))
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
