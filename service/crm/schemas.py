"""Request and response models of the CRM outbox API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class OutboxState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    superseded = "superseded"
    skipped = "skipped"
    dead = "dead"


class OutboxMessageOut(BaseModel):
    id: int
    invoice_number: str
    source: str = Field(description="sync, manual or bulk: where the change was decided")
    state: OutboxState
    status: str | None = Field(description="The status the CRM should show")
    outstanding: str | None = Field(description="The outstanding amount, two decimals")
    history_id: int | None = None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None = Field(
        description="Why the last attempt failed, or why the message was skipped"
    )
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> OutboxMessageOut:
        payload = row.payload or {}
        history = payload.get("history_id")
        return cls(
            id=row.id,
            invoice_number=row.invoice_number,
            source=row.source,
            state=OutboxState(row.state),
            status=payload.get("status"),
            outstanding=_amount(payload.get("outstanding")),
            history_id=int(history)
            if isinstance(history, int | str) and str(history).isdigit()
            else None,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
        )


class OutboxPage(BaseModel):
    items: list[OutboxMessageOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


def _amount(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return f"{Decimal(str(value)).quantize(Decimal('0.01')):.2f}"
    except InvalidOperation:
        return str(value)
