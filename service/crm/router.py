"""HTTP endpoints of the CRM feature: the outbox and its dead letters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.auth import AdminKey, ReadKey
from service.crm import admin
from service.crm.schemas import OutboxMessageOut, OutboxPage, OutboxState
from service.cursor import decode_id
from service.deps import ConnDep

router = APIRouter(prefix="/v1/crm", tags=["crm"])

MAX_ID = 2**63 - 1


@router.get(
    "/outbox",
    operation_id="list_crm_outbox",
    response_model=OutboxPage,
    summary="Outbox messages towards the CRM, oldest first (dead letters: state=dead)",
)
async def list_outbox(
    _principal: ReadKey,
    conn: ConnDep,
    state: Annotated[OutboxState | None, Query(description="Only messages in this state")] = None,
    invoice_number: Annotated[str | None, Query(min_length=1, max_length=30)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=20, description="next_cursor of the previous page")
    ] = None,
) -> OutboxPage:
    after = 0 if cursor is None else decode_id(cursor, param="cursor", maximum=MAX_ID)
    return await admin.outbox_page(
        conn,
        state=state.value if state is not None else None,
        invoice_number=invoice_number,
        after_id=after,
        limit=limit,
    )


@router.post(
    "/outbox/{message_id}/retry",
    operation_id="retry_crm_outbox_message",
    response_model=OutboxMessageOut,
    summary="Send a dead letter again (attempts start from zero)",
    responses={
        404: {"description": "No such outbox message"},
        409: {"description": "The message is not a dead letter"},
    },
)
async def retry_message(
    _principal: AdminKey,
    conn: ConnDep,
    message_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> OutboxMessageOut:
    return await admin.retry_dead_letter(conn, message_id)
