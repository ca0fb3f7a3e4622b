"""The read-back cursor (one row, id 1): where the scan of the CRM's list stands, leased by the
worker reading a page, and the scan's health."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.crm.lease import Lease


@dataclass(frozen=True)
class ReadbackState:
    scan_started_at: datetime | None
    scan_day: date | None
    page_start: int
    last_modified: str | None
    failures: int
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_completed_at: datetime | None = None
    page_digest: str | None = None
    pages: int = 0
    scan_skipped: int = 0
    skipped: int = 0
    last_skipped: str | None = None
    last_skipped_at: datetime | None = None


_READBACK_COLUMNS = (
    "scan_started_at, scan_day, page_start, last_modified, failures, last_error, "
    "last_error_at, last_completed_at, page_digest, pages, scan_skipped, skipped, "
    "last_skipped, last_skipped_at"
)


async def claim_readback(
    conn: AsyncConnection, *, interval: float, lease: Lease
) -> ReadbackState | None:
    """Lease the cursor when a page is due; None when none is, or when another worker holds
    it (its lease, or the row lock of its short transaction: SKIP LOCKED, one reader at a
    time). The lease makes the cursor not due until it runs out (a killed reader's does)."""
    await conn.execute(
        sa.text("INSERT INTO crm_readback_state (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
    )
    row = (
        await conn.execute(
            sa.text(
                f"""
                UPDATE crm_readback_state SET lease_token = :token,
                  next_run_at = now() + :seconds * interval '1 second'
                WHERE id = (
                    SELECT id FROM crm_readback_state
                    WHERE id = 1 AND next_run_at <= now()
                      AND (scan_started_at IS NOT NULL OR last_completed_at IS NULL
                           OR last_completed_at + :interval * interval '1 second' <= now())
                    FOR UPDATE SKIP LOCKED)
                RETURNING {_READBACK_COLUMNS}
                """
            ),
            {"interval": interval, "token": lease.token, "seconds": lease.seconds},
        )
    ).first()
    return ReadbackState(**row._mapping) if row is not None else None


async def hold_readback(conn: AsyncConnection, lease: Lease) -> bool:
    """Lock the cursor for the transaction applying a page, if the lease is still ours."""
    row = await conn.execute(
        sa.text(
            "SELECT 1 FROM crm_readback_state WHERE id = 1 AND lease_token = :token FOR UPDATE"
        ),
        {"token": lease.token},
    )
    return row.first() is not None


@dataclass(frozen=True)
class Skipped:
    """Records of a page that could not be stored: how many, and the last one's reason."""

    count: int = 0
    last: str | None = None


async def advance_readback(
    conn: AsyncConnection,
    *,
    scan_day: date | None,
    page_start: int,
    last_modified: str | None,
    finished: bool,
    page_digest: str | None,
    skipped: Skipped,
) -> None:
    """Move the cursor past the page just applied (same transaction as what it taught us,
    the cursor held by `hold_readback`) and end the lease."""
    await conn.execute(
        sa.text(
            """
            UPDATE crm_readback_state SET
              scan_started_at = CASE WHEN :finished THEN NULL
                                     ELSE coalesce(scan_started_at, now()) END,
              scan_day = :scan_day,
              page_start = :page_start,
              last_modified = :last_modified,
              failures = 0,
              last_completed_at = CASE WHEN :finished THEN now() ELSE last_completed_at END,
              page_digest = CASE WHEN :finished THEN NULL ELSE :page_digest END,
              pages = CASE WHEN :finished THEN 0 ELSE pages + 1 END,
              skipped = CASE WHEN :finished THEN scan_skipped + :skipped ELSE skipped END,
              scan_skipped = CASE WHEN :finished THEN 0 ELSE scan_skipped + :skipped END,
              last_skipped = coalesce(:last_skipped, last_skipped),
              last_skipped_at = CASE WHEN :skipped > 0 THEN now() ELSE last_skipped_at END,
              lease_token = NULL,
              next_run_at = now()
            WHERE id = 1
            """
        ).bindparams(sa.bindparam("finished", type_=sa.Boolean)),
        {
            "finished": finished,
            "scan_day": scan_day,
            "page_start": page_start,
            "last_modified": last_modified,
            "page_digest": page_digest,
            "skipped": skipped.count,
            "last_skipped": skipped.last,
        },
    )


async def readback_failed(
    conn: AsyncConnection, *, lease: Lease, error: str, delay: float, restart: bool = False
) -> None:
    """End the lease; no reader tries again before `delay` seconds. The cursor stays where it
    is (the page that failed is asked again), or with `restart` the scan starts over."""
    await conn.execute(
        sa.text(
            """
            UPDATE crm_readback_state SET failures = failures + 1, last_error = :error,
              last_error_at = now(), next_run_at = now() + :delay * interval '1 second',
              lease_token = NULL,
              scan_started_at = CASE WHEN :restart THEN NULL ELSE scan_started_at END,
              page_start = CASE WHEN :restart THEN 0 ELSE page_start END,
              page_digest = CASE WHEN :restart THEN NULL ELSE page_digest END,
              pages = CASE WHEN :restart THEN 0 ELSE pages END,
              scan_skipped = CASE WHEN :restart THEN 0 ELSE scan_skipped END
            WHERE id = 1 AND lease_token = :token
            """
        ).bindparams(sa.bindparam("restart", type_=sa.Boolean)),
        {"error": error, "delay": delay, "token": lease.token, "restart": restart},
    )


async def release_readback(conn: AsyncConnection, lease: Lease) -> None:
    """Hand the cursor back untouched (a shutdown in the middle of a page): due at once."""
    await conn.execute(
        sa.text(
            "UPDATE crm_readback_state SET lease_token = NULL, next_run_at = now() "
            "WHERE id = 1 AND lease_token = :token"
        ),
        {"token": lease.token},
    )


async def read_readback_state(conn: AsyncConnection) -> ReadbackState | None:
    row = (
        await conn.execute(
            sa.text(f"SELECT {_READBACK_COLUMNS} FROM crm_readback_state WHERE id = 1")
        )
    ).first()
    return ReadbackState(**row._mapping) if row is not None else None
