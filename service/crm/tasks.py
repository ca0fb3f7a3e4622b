"""Worker task of the CRM feature: the outbox dispatcher (see service/worker.py)."""

from __future__ import annotations

from service.crm.service import DISPATCHER_KEY, Dispatcher, build_dispatcher
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
