"""The finance console at /console/: server-rendered pages over the API's own services.

Every page calls the function its API endpoint calls (same filters, same rules, same
transaction boundary: ConnDep commits before the response is sent), with the same
scopes: read to look, write for the Global Update, admin for picklist repair and dead-letter
retries. No page reads or writes data any other way.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from service import csvout
from service.auth import find_key
from service.baddebts import service as baddebts
from service.console import forms, links, throttle
from service.console.overview import ATTENTION, CRM_DRIFT_COUNT_CAP, CRM_DRIFT_KIND, overview
from service.console.repository import delete_ended_sessions
from service.console.session import CSRF_FIELD, ConsoleSession, SessionKeys
from service.crm import repository as crm_repo
from service.crm import service as crm
from service.crm.schemas import OutboxMessageOut, OutboxState
from service.deps import ConnDep, ProbedDep, SettingsDep, runtime_of
from service.errors import Forbidden, ServiceError, Unauthorized, Unprocessable
from service.exception_handlers import describe, validation_errors
from service.ingest.schemas import SageDate
from service.invoices import service as invoices
from service.invoices.schemas import AccountRef, BulkStatusRequest, InvoiceFilter, Text
from service.logging import get_logger
from service.middleware.security_headers import CONSOLE_HEADERS
from service.picklist import repository as picklist_repo
from service.picklist import service as picklist
from service.reconcile import service as reconcile
from service.settings import DERIVED_STATES, Principal, Scope, Settings

log = get_logger(__name__)
HERE = FilePath(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["invoice_href"] = links.invoice_href
templates.env.filters["account_href"] = links.account_href
router = APIRouter(prefix="/console", include_in_schema=False)

PAGE_SIZES = (25, 50, 100, 200, 500)
RESULTS_PAGE = 200
OUTBOX_PAGE = 100
BAD_DEBT_PAGE = 100
BAD_DEBT_CSV_ROWS = 5000
MAX_ID_DIGITS = 18


class SignInRequired(Exception):
    """No valid session: GET pages send the person to the sign-in page."""


@dataclass(frozen=True)
class Ctx:
    request: Request
    keys: SessionKeys
    session: ConsoleSession
    principal: Principal

    @property
    def csrf(self) -> str:
        return self.keys.csrf_token(self.session)

    def can(self, scope: Scope) -> bool:
        return scope in self.principal.scopes

    def need(self, scope: Scope) -> None:
        if not self.can(scope):
            raise Forbidden(
                f"this needs the '{scope}' scope and the key you signed in with "
                f"({self.principal.name}) lacks it; sign in with another key"
            )


def session_keys(request: Request) -> SessionKeys:
    return runtime_of(request.app).console_keys


async def claimed(request: Request) -> Ctx:
    """The session the cookie claims, from the cookie alone (no database yet)."""
    keys = session_keys(request)
    session = keys.read(request)
    if session is None or session.principal is None:
        raise SignInRequired
    return Ctx(request, keys, session, session.principal)


ClaimDep = Annotated[Ctx, Depends(claimed)]


async def signed_in(ctx: ClaimDep, conn: ConnDep) -> Ctx:
    """A session the server started and has not ended (the route's own transaction reads it:
    FastAPI hands the route the same connection)."""
    if not await ctx.keys.is_live(conn, ctx.session):
        raise SignInRequired
    return ctx


CtxDep = Annotated[Ctx, Depends(signed_in)]


def render(
    request: Request,
    template: str,
    status_code: int = 200,
    ctx: Ctx | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    context.update(ctx=ctx, csrf_field=CSRF_FIELD)
    response = templates.TemplateResponse(
        request, template, context, status_code=status_code, headers=headers
    )
    response.headers.update(CONSOLE_HEADERS)
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=CONSOLE_HEADERS)


async def posted(ctx: Ctx) -> forms.Fields:
    """The form's fields, once its CSRF token is checked."""
    fields = forms.parse((await ctx.request.body()).decode("utf-8", errors="replace"))
    ctx.keys.check_csrf(ctx.session, forms.one(fields, CSRF_FIELD))
    return fields


@dataclass(frozen=True)
class Form:
    """A posted form whose sender holds the scope and whose CSRF token checked out."""

    ctx: Ctx
    fields: forms.Fields


def _form(scope: Scope | None, *, live: bool = True) -> Callable[..., Awaitable[Form]]:
    async def read(ctx: ClaimDep) -> Form:
        if scope is not None:
            ctx.need(scope)
        return Form(ctx, await posted(ctx))

    # A default, not an annotation: the annotation is a string (future annotations), which
    # FastAPI resolves in the module's namespace, where `read` is not.
    async def checked(*, form: Form = Depends(read), conn: ConnDep) -> Form:
        if not await form.ctx.keys.is_live(conn, form.ctx.session):
            raise SignInRequired
        return form

    return checked if live else read


# The scope and the CSRF token are checked, and the whole body read, from the cookie alone
# before the request takes a connection from the pool (then the session's row is checked in
# the route's transaction).
# Signing out needs the cookie and its CSRF token, not a live session: ending one that has
# ended already just clears the cookie.
SignOutForm = Annotated[Form, Depends(_form(None, live=False))]
WriteForm = Annotated[Form, Depends(_form("write"))]
AdminForm = Annotated[Form, Depends(_form("admin"))]


@dataclass(frozen=True)
class SignInForm:
    """The sign-in form, its CSRF token checked against the visitor's cookie."""

    request: Request
    keys: SessionKeys
    session: ConsoleSession
    fields: forms.Fields
    client: str

    @property
    def next_url(self) -> str:
        return _local(forms.one(self.fields, "next") or "/console/")

    def again(self, status: int, error: str, wait: int = 0) -> Response:
        """The sign-in page again, with `error`; after a wrong key, how long to wait."""
        if wait:
            error += f" Too many wrong keys from your address: wait {_duration(wait)} before "
            error += "trying again."
        return render(
            self.request,
            "sign_in.html",
            status,
            headers={"Retry-After": str(wait)} if wait else None,
            csrf=self.keys.csrf_token(self.session),
            next=self.next_url,
            error=error.strip(),
        )


class MustWait(Exception):
    """This address sent too many wrong keys: no key is read until it has waited."""

    def __init__(self, form: SignInForm, seconds: int) -> None:
        self.form, self.seconds = form, seconds


async def sign_in_form(request: Request) -> SignInForm:
    keys = session_keys(request)
    session = keys.read(request)
    fields = forms.parse((await request.body()).decode("utf-8", errors="replace"))
    keys.check_csrf(session, forms.one(fields, CSRF_FIELD))
    assert session is not None  # the CSRF check needs one
    form = SignInForm(request, keys, session, fields, throttle.client_of(request))
    # Known to this process already: refused before the request takes a connection, so a
    # flood of guesses from one address does not tie up the pool.
    if wait := keys.waiting.remaining(form.client):
        raise MustWait(form, wait)
    return form


# --- sign in / out ---------------------------------------------------------------------------


@router.get("/sign-in")
async def sign_in_page(request: Request, next: str = "/console/") -> HTMLResponse:
    keys = session_keys(request)
    session = keys.read(request)
    cookie = None
    if session is None:
        session, cookie = keys.new_session(api_key=None)
    response = render(
        request, "sign_in.html", csrf=keys.csrf_token(session), next=_local(next), error=None
    )
    if cookie is not None:
        keys.set_cookie(request, response, cookie)
    return response


@router.post("/sign-in")
async def sign_in(
    form: Annotated[SignInForm, Depends(sign_in_form)], conn: ConnDep, settings: SettingsDep
) -> Response:
    keys, client = form.keys, form.client
    if wait := await throttle.hold(conn, client):
        raise MustWait(form, wait)
    await throttle.forget_old(conn)
    key = find_key(settings, (forms.one(form.fields, "api_key") or "").strip())
    if key is None:
        wait = await throttle.record_failure(conn, client)
        keys.waiting.note(client, wait)
        log.warning("console.sign_in_refused", client=client, wait_seconds=wait)
        return form.again(
            401, "That key is not one this service knows. Check it and try again.", wait
        )
    # The session this browser had (if any) ends: a new id at every sign-in.
    await keys.end(conn, form.session)
    await delete_ended_sessions(conn, limit=throttle.CLEANUP_BATCH)
    response = redirect(form.next_url)
    keys.set_cookie(form.request, response, await keys.start(conn, key))
    return response


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


@router.post("/sign-out")
async def sign_out(form: SignOutForm, conn: ConnDep) -> Response:
    await form.ctx.keys.end(conn, form.ctx.session)
    response = redirect("/console/sign-in")
    form.ctx.keys.clear(form.ctx.request, response)
    return response


def _as_sent(request: Request) -> str:
    """The path as the client encoded it: the decoded one would turn an invoice number's
    `%3F` into a query and its `%2F` into a separator."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes):
        # Some servers leave the query on raw_path; an unencoded `?` ends the path anyway.
        return raw.partition(b"?")[0].decode("latin-1")
    return quote(request.url.path)


def _local(url: str) -> str:
    """Only a console path: never an open redirect."""
    return url if url.startswith("/console/") and not url.startswith("//") else "/console/"


# --- overview --------------------------------------------------------------------------------


@router.get("/")
async def overview_page(
    ctx: CtxDep, conn: ConnDep, settings: SettingsDep, probed: ProbedDep
) -> Response:
    view = await overview(conn, settings, probed)
    return render(ctx.request, "overview.html", ctx=ctx, view=view, drift_cap=CRM_DRIFT_COUNT_CAP)


@router.get("/crm-drift")
async def crm_drift_page(ctx: CtxDep, conn: ConnDep, settings: SettingsDep) -> Response:
    """The crm_drift report: invoices whose status a person changed in the CRM to something
    other than ours (not protected, so not adopted), for a person to settle one way or the
    other."""
    fields = forms.parse(ctx.request.url.query)
    limit, cursor = _page_args(fields)
    rows, next_cursor = await reconcile.report(
        conn, CRM_DRIFT_KIND, settings, limit=limit, cursor=cursor
    )
    return render(
        ctx.request, "crm_drift.html", ctx=ctx, rows=rows, limit=limit, next_cursor=next_cursor
    )


# --- invoices --------------------------------------------------------------------------------


def _page_args(fields: forms.Fields) -> tuple[int, str | None]:
    limit_text = forms.one(fields, "limit") or "50"
    limit = int(limit_text) if limit_text.isdigit() and int(limit_text) in PAGE_SIZES else 50
    return limit, forms.one(fields, "cursor")


@router.get("/invoices")
async def invoices_page(ctx: CtxDep, conn: ConnDep, settings: SettingsDep) -> Response:
    fields = forms.parse(ctx.request.url.query)
    f = forms.invoice_filter(fields)
    limit, cursor = _page_args(fields)
    page = await invoices.list_invoices(conn, settings, f, limit=limit, cursor_token=cursor)
    return render(
        ctx.request,
        "invoices.html",
        ctx=ctx,
        f=f,
        page=page,
        limit=limit,
        cursor=cursor,
        page_sizes=PAGE_SIZES,
        statuses=await picklist.known_statuses(conn),
        states=DERIVED_STATES,
        query=forms.filter_query(f),
        here=forms.filter_query(f, limit=limit, cursor=cursor),
        next_query=forms.filter_query(f, limit=limit, cursor=page.next_cursor),
        shortcuts=ATTENTION,
        filter_query=forms.filter_query,
    )


@router.get("/invoices.csv")
async def invoices_csv(ctx: CtxDep, conn: ConnDep, settings: SettingsDep) -> Response:
    fields = forms.parse(ctx.request.url.query)
    limit, cursor = _page_args(fields)
    page = await invoices.list_invoices(
        conn, settings, forms.invoice_filter(fields), limit=limit, cursor_token=cursor
    )
    return csvout.response(
        invoices.INVOICE_CSV_FIELDS, invoices.invoice_csv_rows(page.items), filename="invoices.csv"
    )


@router.get("/invoices/{invoice_number:path}")
async def invoice_page(
    ctx: CtxDep, invoice_number: Annotated[Text, Path()], conn: ConnDep, settings: SettingsDep
) -> Response:
    invoice = await invoices.invoice_detail(conn, settings, invoice_number)
    return render(ctx.request, "invoice.html", ctx=ctx, invoice=invoice)


@router.get("/invoice")
async def invoice_by_query(
    ctx: CtxDep, number: Annotated[Text, Query()], conn: ConnDep, settings: SettingsDep
) -> Response:
    """The same page for a number no path can carry (`.` or `..`: see links.py)."""
    invoice = await invoices.invoice_detail(conn, settings, number)
    return render(ctx.request, "invoice.html", ctx=ctx, invoice=invoice)


# --- the Global Update -----------------------------------------------------------------------


@router.get("/update")
async def update_page(ctx: CtxDep, conn: ConnDep, settings: SettingsDep) -> Response:
    f = forms.invoice_filter(forms.parse(ctx.request.url.query))
    return render(
        ctx.request,
        "update.html",
        ctx=ctx,
        f=f,
        matching=(await invoices.count_invoices(conn, settings, [f]))[0],
        query=forms.filter_query(f),
        values=await picklist_repo.values(conn),
        known=await picklist.known_statuses(conn),
        protected=settings.protected_statuses,
        bulk_sync_limit=settings.bulk_sync_limit,
    )


@router.post("/update")
async def preview_update(form: WriteForm, conn: ConnDep, settings: SettingsDep) -> Response:
    """The dry run: a job that changes nothing, whose results the job page shows."""
    ctx, fields = form.ctx, form.fields
    f = forms.invoice_filter(fields)
    data = {
        # The filter's own `status` field is the current status: the new one is `to_status`.
        "status": forms.one(fields, "to_status"),
        "current_status_in": forms.values(fields, BulkStatusRequest).get("current_status_in"),
        "only_settled": forms.one(fields, "only_settled") or False,
        "filter": f.model_dump(exclude_none=True),
        "dry_run": True,
    }
    body = forms.validated(BulkStatusRequest, data, loc="form")
    submitted = await _submit(conn, ctx, settings, body, key=None)
    return redirect(f"/console/jobs/{submitted.job.job_id}")


@router.post("/jobs/{job_id}/apply")
async def apply_update(
    form: WriteForm, job_id: uuid.UUID, conn: ConnDep, settings: SettingsDep
) -> Response:
    """Apply exactly what the dry run `job_id` previewed, with the reason given."""
    ctx, fields = form.ctx, form.fields
    reason = (forms.one(fields, "reason") or "").strip()
    if not reason:
        raise ServiceError("give a reason: it is recorded in each invoice's status history")
    previewed = await invoices.job_request(conn, job_id)
    body = forms.validated(
        BulkStatusRequest,
        {**previewed.model_dump(exclude_none=True), "dry_run": False, "reason": reason},
        loc="form",
    )
    submitted = await _submit(conn, ctx, settings, body, key=forms.one(fields, "idempotency_key"))
    return redirect(f"/console/jobs/{submitted.job.job_id}")


async def _submit(
    conn: AsyncConnection, ctx: Ctx, settings: Settings, body: BulkStatusRequest, *, key: str | None
) -> invoices.Submitted:
    async with invoices.retryable_conflicts():
        return await invoices.submit_bulk(
            conn,
            settings,
            actor=ctx.principal.name,
            body=body,
            key=invoices.idempotency_key(key),
            results_limit=1,
        )


@router.get("/jobs/{job_id}")
async def job_page(ctx: CtxDep, job_id: uuid.UUID, conn: ConnDep) -> Response:
    fields = forms.parse(ctx.request.url.query)
    outcome = forms.one(fields, "outcome")
    job = await invoices.job_view(
        conn,
        job_id,
        results_limit=RESULTS_PAGE,
        results_cursor=forms.one(fields, "results_cursor"),
        outcome=outcome,
    )
    asked = await invoices.job_request(conn, job_id)
    return render(
        ctx.request,
        "job.html",
        ctx=ctx,
        job=job,
        asked=asked,
        outcome=outcome,
        idempotency_key=f"console-{uuid.uuid4()}",
        refresh=job.status in ("queued", "running"),
    )


# --- picklist --------------------------------------------------------------------------------


@router.get("/picklist")
async def picklist_page(ctx: CtxDep, conn: ConnDep, settings: SettingsDep) -> Response:
    return render(
        ctx.request,
        "picklist.html",
        ctx=ctx,
        check=await picklist.verify(conn, settings),
        values=await picklist_repo.values(conn),
        added=forms.parse(ctx.request.url.query).get("added"),
    )


@router.post("/picklist/repair")
async def repair_picklist(form: AdminForm, conn: ConnDep, settings: SettingsDep) -> Response:
    added = await picklist.repair(conn, settings)
    query = forms.filter_query(InvoiceFilter(), added=";".join(added) or "nothing")
    return redirect(f"/console/picklist?{query}")


# --- CRM outbox ------------------------------------------------------------------------------


@router.get("/outbox")
async def outbox_page(ctx: CtxDep, conn: ConnDep) -> Response:
    fields = forms.parse(ctx.request.url.query)
    state = forms.one(fields, "state") or "dead"
    if state not in ("dead", "pending"):
        state = "dead"
    after = forms.one(fields, "after") or "0"
    rows = await crm_repo.list_messages(
        conn,
        state=state,
        invoice_number=None,
        after_id=int(after) if after.isdigit() and len(after) <= MAX_ID_DIGITS else 0,
        limit=OUTBOX_PAGE,
    )
    items = [OutboxMessageOut.from_row(row) for row in rows[:OUTBOX_PAGE]]
    return render(
        ctx.request,
        "outbox.html",
        ctx=ctx,
        state=state,
        items=items,
        next_after=items[-1].id if len(rows) > OUTBOX_PAGE else None,
        retried=forms.one(fields, "retried"),
    )


@router.post("/outbox/{message_id}/retry")
async def retry_one(
    form: AdminForm, message_id: Annotated[int, Path(ge=1, le=2**63 - 1)], conn: ConnDep
) -> Response:
    await crm.retry_dead_letter(conn, message_id)
    return redirect(f"/console/outbox?state=dead&retried={message_id}")


@router.post("/outbox/retry-dead")
async def retry_all(form: AdminForm, conn: ConnDep) -> Response:
    """Every dead letter back to pending, in one transaction, through the API's retry."""
    retried = 0
    after = 0
    while True:
        rows = await crm_repo.list_messages(
            conn, state=OutboxState.dead.value, invoice_number=None, after_id=after, limit=500
        )
        for row in rows:
            await crm.retry_dead_letter(conn, row.id)
            retried += 1
        if not rows:
            break
        after = rows[-1].id
    return redirect(f"/console/outbox?state=pending&retried={retried}")


# --- bad debts -------------------------------------------------------------------------------


def _bad_debt_args(fields: forms.Fields) -> dict[str, Any]:
    data = forms.values(fields, _BadDebtQuery)
    query = forms.validated(_BadDebtQuery, data, loc="query")
    return query.model_dump()


@router.get("/bad-debts")
async def bad_debts_page(ctx: CtxDep, conn: ConnDep, settings: SettingsDep) -> Response:
    fields = forms.parse(ctx.request.url.query)
    args = _bad_debt_args(fields)
    page = await baddebts.bad_debts(
        conn, settings, **args, limit=BAD_DEBT_PAGE, cursor=forms.one(fields, "cursor")
    )
    query = forms.filter_query(InvoiceFilter(), **{k: _arg(v) for k, v in args.items()})
    return render(
        ctx.request,
        "bad_debts.html",
        ctx=ctx,
        page=page,
        args=args,
        query=query,
        csv_rows=BAD_DEBT_CSV_ROWS,
    )


@router.get("/bad-debts.csv")
async def bad_debts_csv(ctx: CtxDep, conn: ConnDep, settings: SettingsDep) -> Response:
    args = _bad_debt_args(forms.parse(ctx.request.url.query))
    page = await baddebts.bad_debts(conn, settings, **args, limit=BAD_DEBT_CSV_ROWS, cursor=None)
    return csvout.response(
        baddebts.CSV_FIELDS,
        baddebts.csv_rows(page.items),
        filename=f"bad-debts-{page.as_of.isoformat()}.csv",
    )


def _arg(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- wiring ----------------------------------------------------------------------------------


def install_console(app: FastAPI) -> None:
    """Routes, static files and HTML error pages under /console/ (the session keys reach the
    routes with the rest of the runtime, service/deps.py)."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    api_handler = app.exception_handlers[ServiceError]

    async def service_error(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith("/console/") or not isinstance(exc, ServiceError):
            answer = api_handler(request, exc)
            return answer if isinstance(answer, Response) else await answer
        if isinstance(exc, Unauthorized):
            return redirect("/console/sign-in")
        keys = session_keys(request)
        session = keys.read(request)
        ctx = None
        if session is not None and session.principal is not None:
            ctx = Ctx(request, keys, session, session.principal)
        return render(request, "error.html", exc.status_code, ctx=ctx, error=exc)

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        if request.method == "GET":
            wanted = _as_sent(request) + (f"?{request.url.query}" if request.url.query else "")
            return redirect("/console/sign-in?" + urlencode({"next": wanted}))
        return render(
            request,
            "error.html",
            401,
            error=Unauthorized("your session has ended: sign in again, then repeat this"),
        )

    api_validation = app.exception_handlers[RequestValidationError]

    async def validation_error(request: Request, exc: Exception) -> Response:
        """A malformed address under /console/ (e.g. a job id that is no UUID): an HTML 422."""
        if not request.url.path.startswith("/console/") or not isinstance(
            exc, RequestValidationError
        ):
            answer = api_validation(request, exc)
            return answer if isinstance(answer, Response) else await answer
        errors = validation_errors(exc)
        return await service_error(request, Unprocessable(describe(errors), errors=errors))

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(SignInRequired, sign_in_required)

    async def must_wait(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MustWait)
        exc.form.keys.waiting.note(exc.form.client, exc.seconds)
        return exc.form.again(429, "", exc.seconds)

    app.add_exception_handler(MustWait, must_wait)


class _BadDebtQuery(BaseModel):
    """The bad-debt page's filters: those of GET /v1/reports/bad-debts."""

    as_of: SageDate | None = None
    account_ref: AccountRef | None = None
    qualifying: bool | None = None
