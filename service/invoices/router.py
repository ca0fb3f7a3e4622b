"""HTTP endpoints of invoices: reads, a person's edit, the Global Update and its jobs (the
rules of the last two in service/jobs/)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response

from service import csvout
from service.auth import ReadKey, WriteKey
from service.deps import ConnDep, SettingsDep
from service.invoices import service
from service.invoices.schemas import (
    BulkStatusRequest,
    InvoiceDetail,
    InvoiceListQuery,
    InvoicePage,
    JobOut,
    Outcome,
    StatusEdit,
    Text,
)
from service.jobs import service as jobs

router = APIRouter(tags=["invoices"])

InvoiceNumberPath = Annotated[Text, Path(description="The invoice number (Sage INV_REF)")]
ResultsLimit = Annotated[int, Query(ge=1, le=5000, description="Results per page (job results)")]


@router.get(
    "/v1/invoices",
    operation_id="list_invoices",
    response_model=InvoicePage,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        422: {"description": "A filter value is unknown (the allowed values are listed)"},
    },
)
async def list_invoices(
    _: ReadKey,
    conn: ConnDep,
    settings: SettingsDep,
    request: Request,
    filters: Annotated[InvoiceListQuery, Query()],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="From next_cursor")] = None,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="csv: the same page as CSV (also with `Accept: text/csv`)"),
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Any:
    """Invoices in invoice-number order, keyset-paged (stable while others write). JSON, or
    CSV with `?format=csv` or `Accept: text/csv` (the next page's URL is then in `Link`)."""
    page = await service.list_invoices(
        conn, settings.ledger, filters, limit=limit, cursor_token=cursor
    )
    if not csvout.wants_csv(accept, format):
        return page
    return csvout.page_response(
        request,
        service.INVOICE_CSV_FIELDS,
        service.invoice_csv_rows(page.items),
        filename="invoices.csv",
        next_cursor=page.next_cursor,
    )


@router.post(
    "/v1/invoices/bulk-status",
    operation_id="bulk_update_invoice_status",
    response_model=JobOut,
    responses={
        202: {"model": JobOut, "description": "Queued: poll GET /v1/jobs/{job_id}"},
        409: {"description": "A request with this Idempotency-Key is still being processed"},
        422: {"description": "No selector, status not in the picklist, or key reused"},
    },
)
async def bulk_update_status(
    principal: WriteKey,
    body: BulkStatusRequest,
    response: Response,
    conn: ConnDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Same key + same body returns the stored job (kept 24 h)",
        ),
    ] = None,
    results_limit: ResultsLimit = 1000,
) -> JobOut:
    """The Global Update: one status for a selection of invoices, all or nothing.

    Up to the inline limit (1,000 invoices by default) it runs within the request and answers
    200 with the finished job; larger selections answer 202 and run in the worker.
    """
    key = jobs.idempotency_key(idempotency_key)
    async with service.retryable_conflicts():
        submitted = await jobs.submit_bulk(
            conn,
            settings,
            actor=principal.name,
            body=body,
            key=key,
            results_limit=results_limit,
        )
    if not submitted.finished:
        response.status_code = 202
        response.headers["Location"] = f"/v1/jobs/{submitted.job.job_id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submitted.job


@router.get(
    "/v1/invoices/{invoice_number:path}",
    operation_id="get_invoice",
    response_model=InvoiceDetail,
    responses={404: {"description": "Unknown invoice"}},
)
async def get_invoice(
    _: ReadKey, invoice_number: InvoiceNumberPath, conn: ConnDep, settings: SettingsDep
) -> InvoiceDetail:
    """One invoice with its amounts and its whole status history."""
    return await service.invoice_detail(conn, settings.ledger, invoice_number)


@router.patch(
    "/v1/invoices/{invoice_number:path}",
    operation_id="edit_invoice_status",
    response_model=InvoiceDetail,
    responses={
        404: {"description": "Unknown invoice"},
        422: {"description": "Status not in the picklist (the allowed values are listed)"},
    },
)
async def edit_invoice_status(
    principal: WriteKey,
    invoice_number: InvoiceNumberPath,
    body: StatusEdit,
    conn: ConnDep,
    settings: SettingsDep,
) -> InvoiceDetail:
    """A person's edit of one invoice's status, recorded in its history as `manual`.

    A protected status (e.g. "Written Off") protects the invoice from later syncs at once;
    moving it back to an unprotected status releases it and queues it for reconciliation.
    """
    async with service.retryable_conflicts():
        return await service.edit_status(
            conn, settings.ledger, actor=principal.name, invoice_number=invoice_number, edit=body
        )


@router.get(
    "/v1/jobs/{job_id}",
    operation_id="get_job",
    response_model=JobOut,
    tags=["jobs"],
    responses={404: {"description": "Unknown job"}},
)
async def get_job(
    _: ReadKey,
    job_id: uuid.UUID,
    conn: ConnDep,
    results_limit: ResultsLimit = 1000,
    results_cursor: Annotated[str | None, Query(max_length=512)] = None,
    outcome: Annotated[Outcome | None, Query(description="Only results with this outcome")] = None,
) -> JobOut:
    """A Global Update job: status, counts, progress and its per-invoice results (paged)."""
    return await jobs.job_view(
        conn,
        job_id,
        results_limit=results_limit,
        results_cursor=results_cursor,
        outcome=outcome,
    )
