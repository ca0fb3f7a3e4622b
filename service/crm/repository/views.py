"""What the CRM shows: per invoice (`crm_invoices`, for the crm_drift report), its record id
(cached on the invoice), and the status values seen there (for the picklist verification)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class CrmView:
    invoice_number: str
    crm_id: str | None
    status: str | None
    outstanding: Decimal | None
    modified: str | None = None


_REMEMBER = sa.text(
    """
    INSERT INTO crm_invoices AS c (invoice_number, crm_id, status, outstanding, modified, seen_at)
    SELECT v.invoice_number, v.crm_id, v.status, v.outstanding, v.modified, now()
    FROM unnest(CAST(:numbers AS text[]), CAST(:ids AS text[]), CAST(:statuses AS text[]),
                CAST(:outstanding AS numeric[]), CAST(:modified AS text[]))
      AS v(invoice_number, crm_id, status, outstanding, modified)
    JOIN invoices AS i ON i.invoice_number = v.invoice_number
    ORDER BY v.invoice_number
    ON CONFLICT (invoice_number) DO UPDATE SET
      crm_id = coalesce(EXCLUDED.crm_id, c.crm_id),
      status = EXCLUDED.status,
      outstanding = EXCLUDED.outstanding,
      modified = coalesce(EXCLUDED.modified, c.modified),
      seen_at = EXCLUDED.seen_at
    -- Every scan sees every invoice: rewrite only what changed (seen_at: since when).
    WHERE (c.status, c.outstanding) IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.outstanding)
       OR c.crm_id IS DISTINCT FROM coalesce(EXCLUDED.crm_id, c.crm_id)
       OR c.modified IS DISTINCT FROM coalesce(EXCLUDED.modified, c.modified)
    """
)


async def remember_crm_views(conn: AsyncConnection, views: Sequence[CrmView]) -> None:
    """Store what the CRM shows for invoices we hold (one row per invoice number given)."""
    if not views:
        return
    ordered = sorted(views, key=lambda v: v.invoice_number)
    await conn.execute(
        _REMEMBER,
        {
            "numbers": [v.invoice_number for v in ordered],
            "ids": [v.crm_id for v in ordered],
            "statuses": [v.status for v in ordered],
            "outstanding": [v.outstanding for v in ordered],
            "modified": [v.modified for v in ordered],
        },
    )


async def cache_crm_ids(conn: AsyncConnection, crm_ids: dict[str, str]) -> None:
    """Remember each invoice's CRM record id (a cache: updated_at is left alone)."""
    if not crm_ids:
        return
    numbers = sorted(crm_ids)
    await conn.execute(
        sa.text(
            """
            UPDATE invoices AS i SET crm_id = u.crm_id
            FROM unnest(CAST(:numbers AS text[]), CAST(:ids AS text[])) AS u(invoice_number, crm_id)
            WHERE i.invoice_number = u.invoice_number AND i.crm_id IS DISTINCT FROM u.crm_id
            """
        ),
        {"numbers": numbers, "ids": [crm_ids[n] for n in numbers]},
    )


async def observe_statuses(conn: AsyncConnection, seen: dict[str, int]) -> None:
    """Count the status values read from CRM invoices (fed to the picklist verification).

    Sorted, and run at the end of a batch: two dispatchers never wait on each other in a cycle.
    """
    if not seen:
        return
    values = sorted(seen)
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_observed_statuses AS c (value, times_seen)
            SELECT v.value, v.times FROM unnest(CAST(:values AS text[]), CAST(:times AS int[]))
              AS v(value, times)
            ORDER BY v.value
            ON CONFLICT (value) DO UPDATE
              SET last_seen = now(), times_seen = c.times_seen + EXCLUDED.times_seen
            """
        ),
        {"values": values, "times": [seen[v] for v in values]},
    )
