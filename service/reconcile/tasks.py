"""Worker task: requested sync runs first (one batch each pass), then a batch of dirty invoices.

Both claim with FOR UPDATE SKIP LOCKED, so any number of workers share the work.
"""

from __future__ import annotations

from service.context import WorkerContext
from service.reconcile import service


class Reconcile:
    """One per worker: it holds the requested run it is part-way through between passes."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.held = service.RunInHand()

    async def run_once(self) -> int:
        """Do one batch of pending work; return how many items were processed (0 = idle)."""
        done = await service.advance_requested_run(self.ctx.engine, self.ctx.settings, self.held)
        result = await service.reconcile_dirty(self.ctx.engine, self.ctx.settings)
        return done + result.examined
