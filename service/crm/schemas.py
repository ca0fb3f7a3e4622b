"""Request and response models of the CRM outbox API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from service.schemas import Money, RowModel


class OutboxState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    superseded = "superseded"
    skipped = "skipped"
    dead = "dead"


class OutboxMessageOut(RowModel):
    id: int
    invoice_number: str
    source: str = Field(description="sync, manual or bulk: where the change was decided")
    state: OutboxState
    status: str | None = Field(description="The status the CRM should show")
    outstanding: Money | None = Field(description="The outstanding amount, two decimals")
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
        """The row, with what the CRM should show taken out of its JSON payload."""
        payload = row.payload or {}
        history = payload.get("history_id")
        outstanding = payload.get("outstanding")
        if isinstance(outstanding, str) and not outstanding.strip():
            outstanding = None
        return cls.model_validate(
            {
                **row._mapping,
                "status": payload.get("status"),
                "outstanding": outstanding,
                "history_id": int(history)
                if isinstance(history, int | str) and str(history).isdigit()
                else None,
            }
        )


class OutboxPage(BaseModel):
    items: list[OutboxMessageOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )
