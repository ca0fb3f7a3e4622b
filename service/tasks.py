"""Every background task, assembled in one place (the worker loop imports no feature).

Each runs in its own loop in service/worker.py; a pass returns how many items it processed
(0 = idle). The names are what NOTIFY channels wake (worker.CHANNEL_TASKS) and what the logs say.
"""

from __future__ import annotations

from functools import partial

from service.context import Task, WorkerContext
from service.crm import tasks as crm
from service.crm.tasks import DispatcherTask
from service.jobs import tasks as jobs
from service.reconcile import tasks as reconcile


def worker_tasks(ctx: WorkerContext, dispatcher: DispatcherTask) -> list[tuple[str, Task]]:
    """The tasks of one worker; `dispatcher` is built by the caller, whose readiness reports
    its halt (crm.tasks.dispatcher)."""
    return [
        ("reconcile", reconcile.Reconcile(ctx).run_once),
        ("bulk_jobs", partial(jobs.run_once, ctx)),
        ("crm_outbox", dispatcher.run_once),
        ("crm_readback", crm.read_back(ctx)),
    ]
