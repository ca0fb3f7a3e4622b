"""Worker task for this feature (see service/worker.py)."""

from __future__ import annotations

from service.worker import WorkerContext


async def run_once(ctx: WorkerContext) -> int:
    """Do one batch of pending work; return how many items were processed (0 = idle)."""
    return 0
