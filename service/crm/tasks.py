"""Worker tasks of the CRM feature: the outbox dispatcher and the read-back (see
service/worker.py)."""

from __future__ import annotations

from service.crm.readback import READBACK_KEY, ReadBack, build_readback
from service.crm.service import DISPATCHER_KEY, Dispatcher, build_dispatcher
from service.settings import CrmMode
from service.worker import WorkerContext


def dispatcher_for(ctx: WorkerContext) -> Dispatcher:
    """The worker's one dispatcher, built on first use (a test may have put its own there)."""
    dispatcher = ctx.state.get(DISPATCHER_KEY)
    if not isinstance(dispatcher, Dispatcher):
        dispatcher = build_dispatcher(ctx.settings, ctx.engine, ctx.http)
        ctx.state[DISPATCHER_KEY] = dispatcher
    return dispatcher


async def run_once(ctx: WorkerContext) -> int:
    """Deliver one batch of due outbox messages; return how many were settled (0 = idle)."""
    return await dispatcher_for(ctx).run_once()


async def read_back_once(ctx: WorkerContext) -> int:
    """Read one page of OpenCRM's invoices when due; 0 when idle, off, or in local mode."""
    settings = ctx.settings
    if settings.crm_mode is not CrmMode.opencrm or settings.crm_readback_seconds <= 0:
        return 0
    readback = ctx.state.get(READBACK_KEY)
    if not isinstance(readback, ReadBack):
        readback = build_readback(settings, ctx.engine, ctx.http)
        ctx.state[READBACK_KEY] = readback
    return await readback.run_once()
