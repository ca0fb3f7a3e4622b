"""Worker task: requested sync runs first (one batch each pass), then a batch of dirty invoices.

Both claim with FOR UPDATE SKIP LOCKED, so any number of workers share the work.
"""

from __future__ import annotations

from service.reconcile import service
from service.worker import WorkerContext


async def run_once(ctx: WorkerContext) -> int:
    """Do one batch of pending work; return how many items were processed (0 = idle)."""
    done = await service.advance_requested_run(ctx.engine, ctx.settings, ctx.state)
    result = await service.reconcile_dirty(ctx.engine, ctx.settings)
    return done + result.examined
