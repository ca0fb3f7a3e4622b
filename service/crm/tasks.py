"""Worker tasks of the CRM feature: the outbox dispatcher and the read-back (registered in
service/tasks.py).

A task is the transaction boundary: it begins each short transaction (`run_in_transaction`)
and hands the connection to the dispatcher or the read-back; between them, with none open, the
CRM is called. This is all the tasks do; what happens in each step is decided in
dispatcher.py and readback.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.context import Task, WorkerContext
from service.crm.connector import ProtectedStatuses
from service.crm.dispatcher import Dispatcher, PassReport
from service.crm.lease import Lease
from service.crm.readback import Claimed, Failure, ReadBack
from service.crm.retry import RetryPolicy
from service.crm.settings import CrmMode
from service.crm.vendors import build_connector, build_readback_source
from service.settings import Settings
from service.transaction import run_in_transaction


class DispatcherTask:
    """The outbox dispatcher's passes, one at a time."""

    def __init__(self, engine: AsyncEngine, dispatcher: Dispatcher) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self._one_pass = asyncio.Lock()

    @property
    def halted_reason(self) -> str | None:
        """Why this process's deliveries are halted (readiness shows it at once), else None."""
        return self.dispatcher.halted_reason

    async def run_once(self) -> int:
        """Deliver one batch; return how many messages it settled (0 = nothing to do now)."""
        async with self._one_pass:
            if not self.dispatcher.due():
                return 0
            if self.dispatcher.leases:
                return await self._leased_pass()
            return await self._local_pass()

    async def _local_pass(self) -> int:
        """Nothing is called: claim, deliver and record in one transaction."""
        dispatcher = self.dispatcher
        report = PassReport()

        async def deliver(conn: AsyncConnection) -> None:
            groups = await dispatcher.claim(conn, lease=None)
            await dispatcher.deliver(groups, report, deadline=None)
            await dispatcher.record(conn, report=report, lease=None)

        await run_in_transaction(self.engine, deliver)
        return dispatcher.recorded(report)

    async def _leased_pass(self) -> int:
        """Claim and lease (one short transaction), call the CRM with no transaction open,
        record what is still ours (another short one)."""
        dispatcher = self.dispatcher
        lease = Lease.new(dispatcher.lease_seconds)
        deadline = dispatcher.delivery_deadline()
        groups = await run_in_transaction(self.engine, partial(dispatcher.claim, lease=lease))
        if not groups:
            return 0
        report = PassReport()
        try:
            await dispatcher.deliver(groups, report, deadline=deadline)
        except BaseException:
            # Stopped mid-delivery (a shutdown): the messages go back now, not when the lease
            # runs out.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    run_in_transaction(
                        self.engine, partial(dispatcher.hand_back, groups=groups, lease=lease)
                    )
                )
            raise
        await run_in_transaction(
            self.engine, partial(dispatcher.record, report=report, lease=lease)
        )
        return dispatcher.recorded(report)


class ReadBackTask:
    """The read-back's passes: one page of the CRM's invoices per pass when one is due."""

    def __init__(self, engine: AsyncEngine, readback: ReadBack) -> None:
        self.engine = engine
        self.readback = readback

    async def run_once(self) -> int:
        """Read and apply one page when one is due; return how many records it held, at least
        1 while the scan goes on (0 = nothing due, or the attempt failed)."""
        readback = self.readback
        lease = Lease.new(readback.lease_seconds)
        deadline = readback.read_deadline()
        claimed = await run_in_transaction(self.engine, partial(readback.claim, lease=lease))
        if claimed is None:
            return 0
        try:
            return await self._read_and_apply(claimed, lease, deadline)
        except BaseException:
            # Stopped mid-page (a shutdown): hand the cursor back now, not when the lease ends.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    run_in_transaction(self.engine, partial(readback.release, lease=lease))
                )
            raise

    async def _read_and_apply(self, claimed: Claimed, lease: Lease, deadline: float) -> int:
        readback = self.readback
        read = await readback.read(claimed, deadline)
        if isinstance(read, Failure):
            return await self._failed(read, lease)
        try:
            applied = await run_in_transaction(
                self.engine, partial(readback.apply, claimed=claimed, read=read, lease=lease)
            )
        except Exception as exc:
            return await self._failed(readback.apply_failed(claimed, exc), lease)
        return readback.applied(read, applied)

    async def _failed(self, failure: Failure, lease: Lease) -> int:
        await run_in_transaction(
            self.engine, partial(self.readback.record_failure, failure=failure, lease=lease)
        )
        self.readback.failure_recorded(failure)
        return 0


def build_dispatcher(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient
) -> DispatcherTask:
    crm = settings.crm
    connector = build_connector(
        crm,
        http,
        protected_statuses=settings.protected_statuses,
        local_batch_size=settings.worker_batch_size,
    )
    dispatcher = Dispatcher(
        connector, RetryPolicy.from_settings(crm), lease_seconds=crm.lease_seconds
    )
    return DispatcherTask(engine, dispatcher)


def build_readback(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient
) -> ReadBackTask:
    crm = settings.crm
    source = build_readback_source(crm, http)
    if source is None:
        raise ValueError(f"CRM mode {crm.mode} has nothing to read back")
    readback = ReadBack(
        source,
        ProtectedStatuses(settings.protected_statuses),
        RetryPolicy.from_settings(crm),
        interval=crm.readback_seconds,
        lease_seconds=crm.lease_seconds,
    )
    return ReadBackTask(engine, readback)


def dispatcher(ctx: WorkerContext) -> DispatcherTask:
    """The worker's one dispatcher; its `run_once` is the outbox task, and readiness reads its
    halt in the same process."""
    return build_dispatcher(ctx.settings, ctx.engine, ctx.http)


def read_back(ctx: WorkerContext) -> Task:
    """One page of the CRM's invoices per pass when due; a pass that reads nothing when
    read-back is off or the mode is local."""
    crm = ctx.settings.crm
    if crm.mode is CrmMode.local or crm.readback_seconds <= 0:
        return _idle
    return build_readback(ctx.settings, ctx.engine, ctx.http).run_once


async def _idle() -> int:
    return 0
