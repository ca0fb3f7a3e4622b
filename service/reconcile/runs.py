"""Requested sync runs: recorded, claimed by a worker (or run within the request), locked for
each batch, finished, failed or requeued; and the changes each recorded."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts


@dataclass(frozen=True)
class RunScope:
    scope: str  # dirty | all
    account_ref: str | None = None
    invoice_numbers: list[str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunScope:
        return cls(
            scope=str(data.get("scope", "dirty")),
            account_ref=data.get("account_ref"),
            invoice_numbers=data.get("invoice_numbers"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": self.scope}
        if self.account_ref is not None:
            out["account_ref"] = self.account_ref
        if self.invoice_numbers is not None:
            out["invoice_numbers"] = self.invoice_numbers
        return out


@dataclass(frozen=True)
class RunRow:
    id: uuid.UUID
    status: str
    trigger: str
    scope: dict[str, Any]
    dry_run: bool
    actor: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    examined: int
    changed: int
    unchanged: int
    skipped_protected: int
    conflicts: int
    error: str | None
    cursor: str | None


_RUN_COLUMNS = (
    "id, status, trigger, scope, dry_run, actor, requested_at, started_at, finished_at, "
    "examined, changed, unchanged, skipped_protected, conflicts, error, cursor"
)


def _run_row(row: Any) -> RunRow:
    return RunRow(**dict(row._mapping))


async def insert_run(
    conn: AsyncConnection,
    *,
    run_id: uuid.UUID,
    scope: RunScope,
    dry_run: bool,
    actor: str,
    running: bool,
) -> None:
    """A requested run: queued for a worker, or running already (executed by the caller)."""
    await conn.execute(
        sa.text(
            """
            INSERT INTO sync_runs (id, status, trigger, scope, dry_run, actor, started_at,
                                   heartbeat_at)
            VALUES (:id, :status, 'api', CAST(:scope AS jsonb), :dry_run, :actor,
                    CASE WHEN :running THEN now() END, CASE WHEN :running THEN now() END)
            """
        ),
        {
            "id": run_id,
            "status": "running" if running else "queued",
            "scope": json.dumps(scope.to_json()),
            "dry_run": dry_run,
            "actor": actor,
            "running": running,
        },
    )
    if not running:
        await contracts.notify(conn, contracts.DIRTY_CHANNEL)


async def claim_requested_run(conn: AsyncConnection, stale_seconds: float) -> uuid.UUID | None:
    """Take the oldest queued run, or a running one whose executor stopped heart-beating."""
    row = (
        await conn.execute(
            sa.text(
                """
                WITH c AS (
                    SELECT id FROM sync_runs
                    WHERE status = 'queued'
                       OR (status = 'running'
                           AND heartbeat_at < now() - make_interval(secs => :stale))
                    ORDER BY requested_at
                    LIMIT 1
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE sync_runs AS s
                SET status = 'running', started_at = coalesce(s.started_at, now()),
                    heartbeat_at = now()
                FROM c WHERE s.id = c.id
                RETURNING s.id
                """
            ),
            {"stale": stale_seconds},
        )
    ).first()
    return None if row is None else uuid.UUID(str(row[0]))


async def lock_run(conn: AsyncConnection, run_id: uuid.UUID) -> RunRow | None:
    """The run, locked for one batch: two executors of one run take turns, never overlap."""
    row = (
        await conn.execute(
            sa.text(f"SELECT {_RUN_COLUMNS} FROM sync_runs WHERE id = :id FOR UPDATE"),
            {"id": run_id},
        )
    ).first()
    return None if row is None else _run_row(row)


async def get_run(conn: AsyncConnection, run_id: uuid.UUID) -> RunRow | None:
    row = (
        await conn.execute(
            sa.text(f"SELECT {_RUN_COLUMNS} FROM sync_runs WHERE id = :id"), {"id": run_id}
        )
    ).first()
    return None if row is None else _run_row(row)


async def latest_run(conn: AsyncConnection) -> RunRow | None:
    row = (
        await conn.execute(
            sa.text(f"SELECT {_RUN_COLUMNS} FROM sync_runs ORDER BY requested_at DESC LIMIT 1")
        )
    ).first()
    return None if row is None else _run_row(row)


async def finish_run(
    conn: AsyncConnection, run_id: uuid.UUID, *, status: str, error: str | None = None
) -> None:
    await conn.execute(
        sa.text(
            """
            UPDATE sync_runs SET status = :status, error = :error,
                   finished_at = clock_timestamp(), heartbeat_at = now()
            WHERE id = :id AND status IN ('queued', 'running')
            """
        ),
        {"id": run_id, "status": status, "error": error},
    )


async def requeue_run(conn: AsyncConnection, run_id: uuid.UUID) -> None:
    await conn.execute(
        sa.text("UPDATE sync_runs SET status = 'queued' WHERE id = :id AND status = 'running'"),
        {"id": run_id},
    )
    await contracts.notify(conn, contracts.DIRTY_CHANNEL)


@dataclass(frozen=True)
class ChangeRow:
    invoice_number: str
    from_status: str | None
    to_status: str
    from_outstanding: Decimal | None
    to_outstanding: Decimal | None


async def run_changes(
    conn: AsyncConnection, run_id: uuid.UUID, *, after: str | None, limit: int
) -> list[ChangeRow]:
    keyset = "" if after is None else "AND invoice_number > :after"
    rows = await conn.execute(
        sa.text(
            f"""
            SELECT invoice_number, from_status, to_status, from_outstanding, to_outstanding
            FROM sync_run_changes
            WHERE run_id = :id {keyset}
            ORDER BY invoice_number
            LIMIT :limit
            """
        ),
        {"id": run_id, "after": after, "limit": limit},
    )
    return [ChangeRow(**dict(r._mapping)) for r in rows]
