"""The transactional outbox towards the CRM, and statuses seen in the CRM."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        sa.CheckConstraint(
            "state IN ('pending','delivered','superseded','skipped','dead')",
            name="ck_outbox_state",
        ),
        sa.Index(
            "ix_outbox_pending",
            "next_attempt_at",
            "id",
            postgresql_where=sa.text("state = 'pending'"),
        ),
        sa.Index("ix_outbox_invoice", "invoice_number", "id"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    invoice_number: str = Field(sa_column=sa.Column(sa.String(30), nullable=False))
    # {"status", "outstanding", "source", "history_id"}: what the CRM should show after this change.
    payload: dict[str, Any] = Field(sa_column=sa.Column(pg.JSONB, nullable=False))
    source: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    state: str = Field(sa_column=sa.Column(sa.String(12), nullable=False, server_default="pending"))
    attempts: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    next_attempt_at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    created_at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    delivered_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )


class CrmObservedStatus(SQLModel, table=True):
    __tablename__ = "crm_observed_statuses"

    value: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    first_seen: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    last_seen: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    times_seen: int = Field(
        default=1, sa_column=sa.Column(sa.Integer, nullable=False, server_default="1")
    )
