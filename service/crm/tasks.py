"""Worker tasks of the CRM feature: the outbox dispatcher and the read-back (registered in
service/tasks.py)."""

from __future__ import annotations

from service.context import Task, WorkerContext
from service.crm.readback import build_readback
from service.crm.service import Dispatcher, build_dispatcher
from service.crm.settings import CrmMode


def dispatcher(ctx: WorkerContext) -> Dispatcher:
    """The worker's one dispatcher; its `run_once` is the outbox task, and readiness reads its
    halt in the same process."""
    return build_dispatcher(ctx.settings, ctx.engine, ctx.http)


def read_back(ctx: WorkerContext) -> Task:
    """One page of OpenCRM's invoices per pass when due; a pass that reads nothing when
    read-back is off or the mode is local."""
    settings = ctx.settings
    if settings.crm_mode is not CrmMode.opencrm or settings.crm_readback_seconds <= 0:
        return _idle
    return build_readback(settings, ctx.engine, ctx.http).run_once


async def _idle() -> int:
    return 0
