"""Durable jobs (the Global Update), with Idempotency-Key bookkeeping and paged results."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

from service.columns import counter, defaults_to_false, defaults_to_now


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed')", name="ck_jobs_status"
        ),
        # Keys are scoped by the API key's name (actor): two clients' keys never collide.
        sa.Index("ix_jobs_idempotency_key", "actor", "idempotency_key", unique=True),
        sa.Index("ix_jobs_queued", "created_at", postgresql_where=sa.text("status = 'queued'")),
    )

    id: uuid.UUID = Field(primary_key=True)
    kind: str = Field(max_length=30)
    status: str = Field(max_length=10)
    request: dict[str, Any] = Field(sa_type=pg.JSONB)
    request_sha256: bytes
    idempotency_key: str | None = Field(default=None, max_length=255)
    actor: str | None = Field(default=None, max_length=100)
    dry_run: bool = defaults_to_false()
    total: int = counter()
    processed: int = counter()
    matched: int = counter()
    updated: int = counter()
    unchanged: int = counter()
    not_found: int = counter()
    # Found but filtered out (account_ref, current_status_in, only_settled).
    skipped: int = counter()
    # Matched, but protected and not named in current_status_in: left alone.
    skipped_protected: int = counter()
    # Worker runs started; a job whose worker died is retried from scratch (all or nothing).
    attempts: int = counter()
    error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = defaults_to_now()
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Idempotency keys are honoured at least this long (24 h).
    expires_at: datetime


class JobResult(SQLModel, table=True):
    __tablename__ = "job_results"

    # No foreign key: results are written only by the job's own transaction, holding the job
    # row, and jobs are never deleted, so a per-row check would guard nothing, at a cost to
    # every Global Update.
    job_id: uuid.UUID = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    invoice_number: str = Field(max_length=30)
    from_status: str | None = Field(default=None, max_length=64)
    to_status: str | None = Field(default=None, max_length=64)
    # updated | unchanged | not_found | skipped (filtered out) | skipped_protected
    outcome: str = Field(max_length=20)
