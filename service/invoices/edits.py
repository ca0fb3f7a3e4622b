"""The SQL of a person's edit of one invoice's status (contract 3: the invoice, its history
row and its outbox row in one statement; contract 1 when it releases a protected invoice)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.ledger.dirty import mark_dirty


async def lock_invoice(conn: AsyncConnection, invoice_number: str) -> Row[Any] | None:
    row = await conn.execute(
        sa.text(
            "SELECT invoice_number, status, outstanding FROM invoices "
            "WHERE invoice_number = :n FOR UPDATE"
        ),
        {"n": invoice_number},
    )
    return row.first()


_MANUAL_CHANGE = sa.text(
    """
    WITH upd AS (
        UPDATE invoices
           SET status = CAST(:to AS text),
               updated_at = now(),
               conflict = CASE WHEN :release THEN NULL ELSE conflict END
         WHERE invoice_number = :n
     RETURNING invoice_number, outstanding
    ), released AS (
        {released}
    ), hist AS ({history}
    )
    {outbox}
    """.format(
        released=mark_dirty(from_="upd", where=":release"),
        history=contracts.insert_history(
            source="manual",
            invoice_number="invoice_number",
            from_status="CAST(:from AS text)",
            to_status="CAST(:to AS text)",
            from_outstanding="outstanding",
            to_outstanding="outstanding",
            actor=":actor",
            reason=":reason",
            from_="upd",
            returning="id, invoice_number, to_outstanding",
        ),
        outbox=contracts.insert_outbox(
            source="manual",
            invoice_number="invoice_number",
            status="CAST(:to AS text)",
            outstanding="to_outstanding",
            history_id="id",
            from_="hist",
        ),
    )
).bindparams(sa.bindparam("release", type_=sa.Boolean))


async def write_manual_change(
    conn: AsyncConnection,
    *,
    invoice_number: str,
    from_status: str,
    to_status: str,
    actor: str,
    reason: str | None,
    release: bool,
) -> None:
    """Invoice row, status_history and outbox in one statement; the caller holds the row lock."""
    await conn.execute(
        _MANUAL_CHANGE,
        {
            "n": invoice_number,
            "from": from_status,
            "to": to_status,
            "actor": actor,
            "reason": reason,
            "release": release,
        },
    )
    await notify(conn, outbox=True, dirty=release)


async def notify(conn: AsyncConnection, *, outbox: bool, dirty: bool) -> None:
    """Wake the CRM dispatcher / reconciliation (delivered when the transaction commits)."""
    if outbox:
        await contracts.notify(conn, contracts.OUTBOX_CHANNEL)
    if dirty:
        await contracts.notify(conn, contracts.DIRTY_CHANNEL)
