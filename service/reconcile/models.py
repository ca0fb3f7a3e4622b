"""Sync runs: every reconciliation pass, automatic or requested, with its counts and changes."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

from service.columns import counter, defaults_to_false, defaults_to_now, money


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

    id: uuid.UUID = Field(primary_key=True)
    status: str = Field(max_length=10)
    trigger: str = Field(max_length=20)  # worker | api
    scope: dict[str, Any] = Field(sa_type=pg.JSONB)
    dry_run: bool = defaults_to_false()
    actor: str | None = Field(default=None, max_length=100)
    requested_at: datetime = defaults_to_now()
    started_at: datetime | None = None
    finished_at: datetime | None = None
    examined: int = counter()
    changed: int = counter()
    unchanged: int = counter()
    skipped_protected: int = counter()
    conflicts: int = counter()
    error: str | None = Field(default=None, sa_type=sa.Text)
    # Keyset position of a requested run (the last invoice number it examined): a run is
    # executed in batches, each its own transaction, and resumes from here after a crash.
    cursor: str | None = Field(default=None, max_length=30)
    # Refreshed by every batch of a running requested run; a stale one is taken over.
    heartbeat_at: datetime | None = None


class SyncRunChange(SQLModel, table=True):
    __tablename__ = "sync_run_changes"

    # No foreign key: changes are written only in the statement that inserts or locks their run,
    # and runs are never deleted; the per-row check cost every reconcile batch.
    run_id: uuid.UUID = Field(primary_key=True)
    invoice_number: str = Field(primary_key=True, max_length=30)
    from_status: str | None = Field(default=None, max_length=64)
    to_status: str = Field(max_length=64)
    from_outstanding: Decimal | None = money(None)
    to_outstanding: Decimal | None = money(None)
