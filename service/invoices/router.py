"""HTTP endpoints of invoices: reads, a person's edit, the Global Update and its jobs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response

from service.auth import ReadKey, WriteKey
from service.deps import SessionDep, SettingsDep
from service.invoices import service
from service.invoices.repository import InvoiceFilters
from service.invoices.schemas import (
    AccountRef,
    BulkStatusRequest,
    InvoiceDetail,
    InvoicePage,
    JobOut,
    Outcome,
    Status,
    StatusEdit,
    Text,
    UtcDatetime,
)
from service.settings import DerivedState

router = APIRouter(tags=["invoices"])

InvoiceNumberPath = Annotated[Text, Path(description="The invoice number (Sage INV_REF)")]
ResultsLimit = Annotated[int, Query(ge=1, le=5000, description="Results per page (job results)")]


@router.get("/v1/invoices", operation_id="list_invoices", response_model=InvoicePage)
async def list_invoices(
    _: ReadKey,
    session: SessionDep,
    settings: SettingsDep,
    status: Annotated[
        list[Status] | None, Query(max_length=100, description="One or more statuses (any of)")
    ] = None,
    account_ref: Annotated[AccountRef | None, Query()] = None,
    protected: Annotated[bool | None, Query(description="Only (un)protected invoices")] = None,
    derived_state: DerivedState | None = None,
    updated_since: Annotated[
        UtcDatetime | None,
        Query(description="Changed at or after (ISO 8601; UTC if no offset)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="From next_cursor")] = None,
) -> InvoicePage:
    """Invoices in invoice-number order, keyset-paged (stable while others write)."""
    conn = await session.connection()
    filters = InvoiceFilters(
        statuses=status,
        account_ref=account_ref,
        protected=protected,
        derived_state=derived_state,
        updated_since=updated_since,
    )
    return await service.list_invoices(conn, settings, filters, limit=limit, cursor_token=cursor)


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
    session: SessionDep,
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
    key = service.idempotency_key(idempotency_key)
    conn = await session.connection()
    async with service.retryable_conflicts():
        submitted = await service.submit_bulk(
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
    _: ReadKey, invoice_number: InvoiceNumberPath, session: SessionDep, settings: SettingsDep
) -> InvoiceDetail:
    """One invoice with its amounts and its whole status history."""
    conn = await session.connection()
    return await service.invoice_detail(conn, settings, invoice_number)


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
    session: SessionDep,
    settings: SettingsDep,
) -> InvoiceDetail:
    """A person's edit of one invoice's status, recorded in its history as `manual`.

    A protected status (e.g. "Written Off") protects the invoice from later syncs at once;
    moving it back to an unprotected status releases it and queues it for reconciliation.
    """
    conn = await session.connection()
    async with service.retryable_conflicts():
        return await service.edit_status(
            conn, settings, actor=principal.name, invoice_number=invoice_number, edit=body
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
    session: SessionDep,
    results_limit: ResultsLimit = 1000,
    results_cursor: Annotated[str | None, Query(max_length=512)] = None,
    outcome: Annotated[Outcome | None, Query(description="Only results with this outcome")] = None,
) -> JobOut:
    """A Global Update job: status, counts, progress and its per-invoice results (paged)."""
    conn = await session.connection()
    return await service.job_view(
        conn,
        job_id,
        results_limit=results_limit,
        results_cursor=results_cursor,
        outcome=outcome,
    )
