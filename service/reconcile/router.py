"""HTTP endpoints of reconciliation: sync runs and reports."""

from __future__ import annotations

import dataclasses
import time
import uuid
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse

from service import csvout
from service.auth import ReadKey, WriteKey
from service.deps import ConnDep, EngineDep, SettingsDep, WorkerDep
from service.errors import NotFound
from service.reconcile import service, tasks
from service.reconcile.runs import RunScope
from service.reconcile.schemas import (
    Report,
    ReportItem,
    ReportKind,
    SyncRunOut,
    SyncTrigger,
    SyncTriggered,
)
from service.transaction import read
from service.worker import Worker

router = APIRouter(tags=["reconciliation"])

_CSV_FIELDS = list(ReportItem.model_fields)


@router.post(
    "/v1/sync/trigger",
    operation_id="trigger_sync",
    status_code=202,
    response_model=SyncTriggered,
    responses={
        200: {"model": SyncRunOut, "description": "With ?wait=true: the finished run"},
    },
)
async def trigger_sync(
    body: SyncTrigger,
    principal: WriteKey,
    engine: EngineDep,
    settings: SettingsDep,
    worker: WorkerDep,
    wait: Annotated[
        bool,
        Query(
            description="Execute the run within the request and answer 200 with it; a run "
            "that does not finish in time is handed to the workers (202)"
        ),
    ] = False,
) -> Any:
    """Request a sync run. Queued for the workers (202), or with `wait=true` executed within
    the request. A dry run computes and records every change and writes nothing else."""
    # Not the request's one transaction (ConnDep): the run must be committed before its
    # batches start, and each batch commits on its own (the run resumes from its cursor), so
    # each is begun through the task's boundary calls.
    scope = RunScope(
        scope=body.scope,
        account_ref=body.account_ref,
        invoice_numbers=list(dict.fromkeys(body.invoice_numbers))
        if body.invoice_numbers is not None
        else None,
    )
    run_id = await tasks.request_run(
        engine, scope, dry_run=body.dry_run, actor=principal.name, running=wait
    )
    location = {"Location": f"/v1/sync/runs/{run_id}"}
    if wait:
        deadline = time.monotonic() + max(1.0, settings.request_timeout_seconds * 0.7)
        if await tasks.execute_run(engine, settings, run_id, deadline=deadline):
            view = await read(
                engine,
                partial(service.run_view, run_id=run_id, changes_limit=100, changes_cursor=None),
            )
            assert view is not None
            return JSONResponse(
                _run_out(view).model_dump(mode="json"), status_code=200, headers=location
            )
        await tasks.requeue_run(engine, run_id)
        _wake_worker(worker)
        return JSONResponse(
            SyncTriggered(run_id=run_id, status="queued").model_dump(mode="json"),
            status_code=202,
            headers=location,
        )
    _wake_worker(worker)
    return JSONResponse(
        SyncTriggered(run_id=run_id, status="queued").model_dump(mode="json"),
        status_code=202,
        headers=location,
    )


@router.get("/v1/sync/runs/{run_id}", operation_id="get_sync_run", response_model=SyncRunOut)
async def get_sync_run(
    run_id: uuid.UUID,
    principal: ReadKey,
    conn: ConnDep,
    changes_limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    changes_cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> SyncRunOut:
    """A sync run with its counts and a page of its changes."""
    view = await service.run_view(
        conn, run_id, changes_limit=changes_limit, changes_cursor=changes_cursor
    )
    if view is None:
        raise NotFound(f"no sync run {run_id}")
    return _run_out(view)


@router.get(
    "/v1/reconciliation/report",
    operation_id="reconciliation_report",
    response_model=Report,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def reconciliation_report(
    principal: ReadKey,
    conn: ConnDep,
    settings: SettingsDep,
    request: Request,
    kind: Annotated[
        ReportKind,
        Query(
            description="divergent: status differs from the derived label, overpaid, "
            "duplicate invoice number, deleted in Sage, or a warning (missing picklist label); "
            "conflicts: protected invoices whose postings disagree; "
            "mismatches: Sage's outstanding differs from the allocations; "
            "crm_drift: OpenCRM shows another status or balance and nothing of ours is on its "
            "way there (someone edited it in OpenCRM)"
        ),
    ] = "divergent",
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Any:
    """Invoices that need a person's eye, paged by invoice number. JSON, or CSV with
    `Accept: text/csv` (the next page's URL is then in the `Link` header)."""
    rows, next_cursor = await service.report(
        conn, kind, settings.ledger, limit=limit, cursor=cursor
    )
    items = [ReportItem.model_validate(row) for row in rows]
    if csvout.wants_csv(accept, None):
        return csvout.page_response(
            request,
            _CSV_FIELDS,
            ([getattr(item, name) for name in _CSV_FIELDS] for item in items),
            filename=f"{kind}.csv",
            next_cursor=next_cursor,
        )
    return Report(kind=kind, items=items, next_cursor=next_cursor)


def _run_out(view: service.RunView) -> SyncRunOut:
    run = view.run
    return SyncRunOut.model_validate(
        {
            **dataclasses.asdict(run),
            "run_id": run.id,
            "counts": run,
            "changes": view.changes,
            "next_changes_cursor": view.next_changes_cursor,
        }
    )


def _wake_worker(worker: Worker | None) -> None:
    """The in-process worker, if any, starts at once (pg_notify reaches the others)."""
    if worker is not None:
        worker.wake()
