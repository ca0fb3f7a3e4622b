"""Sync runs: every reconciliation pass, automatic or requested, with its counts and changes."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

MONEY = sa.Numeric(14, 2)


def _count() -> sa.Column[int]:
    return sa.Column(sa.Integer, nullable=False, server_default="0")


class SyncRun(SQLModel, table=True):
    __tablename__ = "sync_runs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed')", name="ck_sync_runs_status"
        ),
        sa.Index(
            "ix_sync_runs_queued", "requested_at", postgresql_where=sa.text("status = 'queued'")
        ),
        # Requested runs in progress: a worker takes over one whose heartbeat went stale.
        sa.Index(
            "ix_sync_runs_running", "heartbeat_at", postgresql_where=sa.text("status = 'running'")
        ),
    )

    id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    status: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    trigger: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))  # worker | api
    scope: dict[str, Any] = Field(sa_column=sa.Column(pg.JSONB, nullable=False))
    dry_run: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false"))
    actor: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    requested_at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    started_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    examined: int = Field(default=0, sa_column=_count())
    changed: int = Field(default=0, sa_column=_count())
    unchanged: int = Field(default=0, sa_column=_count())
    skipped_protected: int = Field(default=0, sa_column=_count())
    conflicts: int = Field(default=0, sa_column=_count())
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    # Keyset position of a requested run (the last invoice number it examined): a run is
    # executed in batches, each its own transaction, and resumes from here after a crash.
    cursor: str | None = Field(default=None, sa_column=sa.Column(sa.String(30)))
    # Refreshed by every batch of a running requested run; a stale one is taken over.
    heartbeat_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )


class SyncRunChange(SQLModel, table=True):
    __tablename__ = "sync_run_changes"

    # No foreign key: changes are written only in the statement that inserts or locks their run,
    # and runs are never deleted; the per-row check cost every reconcile batch.
    run_id: uuid.UUID = Field(
        sa_column=sa.Column(
            pg.UUID(as_uuid=True),
            primary_key=True,
        )
    )
    invoice_number: str = Field(sa_column=sa.Column(sa.String(30), primary_key=True))
    from_status: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    to_status: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    from_outstanding: Decimal | None = Field(default=None, sa_column=sa.Column(MONEY))
    to_outstanding: Decimal | None = Field(default=None, sa_column=sa.Column(MONEY))
