"""The finance console at /console/: server-rendered pages over the API's own services.

Every page calls the function its API endpoint calls (same filters, same rules, same
transaction boundary: ConnDep commits before the response is sent), with the same
scopes: read to look, write for the Global Update, admin for picklist repair and dead-letter
retries. No page reads or writes data any other way. Signing in and out is in sign_in.py;
who may do what in access.py; the error pages in route.py.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import FastAPI, Form, Path, Query, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncConnection

from service import csvout
from service.baddebts import service as baddebts
from service.console import sign_in
from service.console.access import AdminSender, ConsoleUser, UserDep, WriteSender
from service.console.forms import (
    PAGE_SIZES,
    ApplyForm,
    BadDebtQuery,
    InvoiceQuery,
    JobQuery,
    OutboxQuery,
    Paging,
    UpdateForm,
    filter_query,
    query_text,
    validated,
)
from service.console.links import path_for
from service.console.overview import ATTENTION, CRM_DRIFT_COUNT_CAP, CRM_DRIFT_KIND, overview
from service.console.pages import STATIC, redirect, render
from service.console.route import console_router
from service.crm import admin as crm
from service.deps import ConnDep, ReadinessDep, SettingsDep
from service.errors import ServiceError
from service.invoices import service as invoices
from service.invoices.schemas import BulkStatusRequest, InvoiceFilter, Text
from service.jobs import service as jobs
from service.ledger.vocabulary import DERIVED_STATES
from service.picklist import service as picklist
from service.reconcile import service as reconcile
from service.settings import Settings

router = console_router()

RESULTS_PAGE = 200
OUTBOX_PAGE = 100
BAD_DEBT_PAGE = 100
BAD_DEBT_CSV_ROWS = 5000
# Dead letters read per page by the bulk retry.


# --- overview --------------------------------------------------------------------------------


@router.get("/", name="console.overview")
async def overview_page(
    user: UserDep, conn: ConnDep, settings: SettingsDep, sources: ReadinessDep
) -> Response:
    view = await overview(conn, settings, sources)
    return render(
        user.request, "overview.html", user=user, view=view, drift_cap=CRM_DRIFT_COUNT_CAP
    )


@router.get("/crm-drift", name="console.crm_drift")
async def crm_drift_page(
    user: UserDep, paging: Annotated[Paging, Query()], conn: ConnDep, settings: SettingsDep
) -> Response:
    """The crm_drift report: invoices whose status a person changed in the CRM to something
    other than ours (not protected, so not adopted), for a person to settle one way or the
    other."""
    rows, next_cursor = await reconcile.report(
        conn, CRM_DRIFT_KIND, settings.ledger, limit=paging.limit, cursor=paging.cursor
    )
    return render(
        user.request,
        "crm_drift.html",
        user=user,
        rows=rows,
        limit=paging.limit,
        next_cursor=next_cursor,
    )


# --- invoices --------------------------------------------------------------------------------


@router.get("/invoices", name="console.invoices")
async def invoices_page(
    user: UserDep,
    f: Annotated[InvoiceQuery, Query()],
    paging: Annotated[Paging, Query()],
    conn: ConnDep,
    settings: SettingsDep,
) -> Response:
    limit, cursor = paging.limit, paging.cursor
    page = await invoices.list_invoices(conn, settings.ledger, f, limit=limit, cursor_token=cursor)
    return render(
        user.request,
        "invoices.html",
        user=user,
        f=f,
        page=page,
        limit=limit,
        cursor=cursor,
        page_sizes=PAGE_SIZES,
        statuses=await picklist.known_statuses(conn),
        states=DERIVED_STATES,
        query=filter_query(f),
        here=filter_query(f, limit=limit, cursor=cursor),
        next_query=filter_query(f, limit=limit, cursor=page.next_cursor),
        shortcuts=ATTENTION,
        filter_query=filter_query,
    )


@router.get("/invoices.csv", name="console.invoices_csv")
async def invoices_csv(
    user: UserDep,
    f: Annotated[InvoiceQuery, Query()],
    paging: Annotated[Paging, Query()],
    conn: ConnDep,
    settings: SettingsDep,
) -> Response:
    page = await invoices.list_invoices(
        conn, settings.ledger, f, limit=paging.limit, cursor_token=paging.cursor
    )
    return csvout.response(
        invoices.INVOICE_CSV_FIELDS, invoices.invoice_csv_rows(page.items), filename="invoices.csv"
    )


@router.get("/invoices/{invoice_number:path}", name="console.invoice")
async def invoice_page(
    user: UserDep, invoice_number: Annotated[Text, Path()], conn: ConnDep, settings: SettingsDep
) -> Response:
    invoice = await invoices.invoice_detail(conn, settings.ledger, invoice_number)
    return render(user.request, "invoice.html", user=user, invoice=invoice)


@router.get("/invoice", name="console.invoice_by_query")
async def invoice_by_query(
    user: UserDep, number: Annotated[Text, Query()], conn: ConnDep, settings: SettingsDep
) -> Response:
    """The same page for a number no path can carry (`.` or `..`: see links.py)."""
    invoice = await invoices.invoice_detail(conn, settings.ledger, number)
    return render(user.request, "invoice.html", user=user, invoice=invoice)


# --- the Global Update -----------------------------------------------------------------------


@router.get("/update", name="console.update")
async def update_page(
    user: UserDep, f: Annotated[InvoiceQuery, Query()], conn: ConnDep, settings: SettingsDep
) -> Response:
    return render(
        user.request,
        "update.html",
        user=user,
        f=f,
        matching=(await invoices.count_invoices(conn, settings.ledger, [f]))[0],
        query=filter_query(f),
        values=await picklist.values(conn),
        known=await picklist.known_statuses(conn),
        protected=settings.protected_statuses,
        bulk_sync_limit=settings.bulk_sync_limit,
    )


@router.post("/update", name="console.preview_update")
async def preview_update(
    user: WriteSender,
    form: Annotated[UpdateForm, Form()],
    conn: ConnDep,
    settings: SettingsDep,
) -> Response:
    """The dry run: a job that changes nothing, whose results the job page shows."""
    submitted = await _submit(conn, user, settings, form.dry_run(), key=None)
    return redirect(path_for(user.request, "console.job", job_id=submitted.job.job_id))


@router.post("/jobs/{job_id}/apply", name="console.apply_update")
async def apply_update(
    user: WriteSender,
    job_id: uuid.UUID,
    form: Annotated[ApplyForm, Form()],
    conn: ConnDep,
    settings: SettingsDep,
) -> Response:
    """Apply exactly what the dry run `job_id` previewed, with the reason given."""
    reason = (form.reason or "").strip()
    if not reason:
        raise ServiceError("give a reason: it is recorded in each invoice's status history")
    previewed = await jobs.job_request(conn, job_id)
    body = validated(
        BulkStatusRequest,
        {**previewed.model_dump(exclude_none=True), "dry_run": False, "reason": reason},
        loc="form",
    )
    submitted = await _submit(conn, user, settings, body, key=form.idempotency_key)
    return redirect(path_for(user.request, "console.job", job_id=submitted.job.job_id))


async def _submit(
    conn: AsyncConnection,
    user: ConsoleUser,
    settings: Settings,
    body: BulkStatusRequest,
    *,
    key: str | None,
) -> jobs.Submitted:
    async with invoices.retryable_conflicts():
        return await jobs.submit_bulk(
            conn,
            settings,
            actor=user.principal.name,
            body=body,
            key=jobs.idempotency_key(key),
            results_limit=1,
        )


@router.get("/jobs/{job_id}", name="console.job")
async def job_page(
    user: UserDep, job_id: uuid.UUID, results: Annotated[JobQuery, Query()], conn: ConnDep
) -> Response:
    job = await jobs.job_view(
        conn,
        job_id,
        results_limit=RESULTS_PAGE,
        results_cursor=results.results_cursor,
        outcome=results.outcome,
    )
    asked = await jobs.job_request(conn, job_id)
    return render(
        user.request,
        "job.html",
        user=user,
        job=job,
        asked=asked,
        outcome=results.outcome,
        idempotency_key=f"console-{uuid.uuid4()}",
        refresh=job.status in ("queued", "running"),
    )


# --- picklist --------------------------------------------------------------------------------


@router.get("/picklist", name="console.picklist")
async def picklist_page(
    user: UserDep,
    conn: ConnDep,
    settings: SettingsDep,
    added: Annotated[list[str] | None, Query()] = None,
) -> Response:
    return render(
        user.request,
        "picklist.html",
        user=user,
        check=await picklist.verify(conn, settings.ledger),
        values=await picklist.values(conn),
        added=added,
    )


@router.post("/picklist/repair", name="console.repair_picklist")
async def repair_picklist(user: AdminSender, conn: ConnDep, settings: SettingsDep) -> Response:
    added = await picklist.repair(conn, settings.ledger)
    query = filter_query(InvoiceFilter(), added=";".join(added) or "nothing")
    return redirect(path_for(user.request, "console.picklist") + "?" + query)


# --- CRM outbox ------------------------------------------------------------------------------


@router.get("/outbox", name="console.outbox")
async def outbox_page(
    user: UserDep, shown: Annotated[OutboxQuery, Query()], conn: ConnDep
) -> Response:
    page = await crm.outbox_page(
        conn, state=shown.state, invoice_number=None, after_id=shown.after, limit=OUTBOX_PAGE
    )
    return render(
        user.request,
        "outbox.html",
        user=user,
        state=shown.state,
        items=page.items,
        next_after=page.next_cursor,
        retried=shown.retried,
    )


@router.post("/outbox/{message_id}/retry", name="console.retry_message")
async def retry_one(
    user: AdminSender, message_id: Annotated[int, Path(ge=1, le=2**63 - 1)], conn: ConnDep
) -> Response:
    await crm.retry_dead_letter(conn, message_id)
    return redirect(_outbox_path(user, state="dead", retried=message_id))


@router.post("/outbox/retry-dead", name="console.retry_dead_letters")
async def retry_all(user: AdminSender, conn: ConnDep) -> Response:
    """Every dead letter back to pending, in one statement."""
    retried = await crm.retry_all_dead_letters(conn)
    return redirect(_outbox_path(user, state="pending", retried=retried))


def _outbox_path(user: ConsoleUser, *, state: str, retried: int) -> str:
    return path_for(user.request, "console.outbox") + f"?state={state}&retried={retried}"


# --- bad debts -------------------------------------------------------------------------------


@router.get("/bad-debts", name="console.bad_debts")
async def bad_debts_page(
    user: UserDep, shown: Annotated[BadDebtQuery, Query()], conn: ConnDep, settings: SettingsDep
) -> Response:
    args = shown.filters()
    page = await baddebts.bad_debts(
        conn, settings.ledger, **args, limit=BAD_DEBT_PAGE, cursor=shown.cursor
    )
    query = filter_query(InvoiceFilter(), **{k: _arg(v) for k, v in args.items()})
    return render(
        user.request,
        "bad_debts.html",
        user=user,
        page=page,
        args=args,
        query=query,
        csv_rows=BAD_DEBT_CSV_ROWS,
    )


@router.get("/bad-debts.csv", name="console.bad_debts_csv")
async def bad_debts_csv(
    user: UserDep, shown: Annotated[BadDebtQuery, Query()], conn: ConnDep, settings: SettingsDep
) -> Response:
    page = await baddebts.bad_debts(
        conn, settings.ledger, **shown.filters(), limit=BAD_DEBT_CSV_ROWS, cursor=None
    )
    return csvout.response(
        baddebts.CSV_FIELDS,
        baddebts.csv_rows(page.items),
        filename=f"bad-debts-{page.as_of.isoformat()}.csv",
    )


def _arg(value: object) -> str | None:
    return None if value is None else query_text(value)


# --- wiring ----------------------------------------------------------------------------------


def install_console(app: FastAPI) -> None:
    """The console's routes and static files under /console/ (the session keys reach the
    routes with the rest of the runtime, service/deps.py; the error pages are the routes'
    own, route.py)."""
    app.include_router(sign_in.router)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console.static")
