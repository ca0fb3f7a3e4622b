"""Protected statuses a person set in the CRM, taken into ledgerlink: the invoice takes the
status with a history row (source crm) and is queued for reconciliation."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.ledger.dirty import mark_dirty
from service.ledger.vocabulary import PERSON_SOURCES, sql_in

# An outbox message carrying a person's decision.
PERSON_EDIT = sql_in("source", PERSON_SOURCES)

KeepOutcome = Literal["updated", "unchanged", "no_invoice", "person_decided_later"]


# The actor of the history rows written for a status taken from the CRM: a person there, name
# unknown (named after OpenCRM, the one CRM so far).
CRM_ACTOR = "opencrm"
_CRM_HISTORY = sa.text(
    contracts.insert_history(
        source="crm",
        invoice_number=":n",
        from_status=":from_status",
        to_status=":to_status",
        from_outstanding=":outstanding",
        to_outstanding=":outstanding",
        actor=f"'{CRM_ACTOR}'",
        reason=":reason",
    )
)


async def keep_crm_status(
    conn: AsyncConnection,
    *,
    invoice_number: str,
    message_id: int,
    crm_status: str,
    reason: str,
) -> KeepOutcome:
    """Give the mirror invoice the protected status a person set in the CRM, with history.

    Not when a person changed the invoice in ledgerlink after this message was written: that
    later decision is on its way to the CRM and wins.
    """
    current = (
        await conn.execute(
            sa.text(
                "SELECT status, outstanding FROM invoices WHERE invoice_number = :n FOR UPDATE"
            ),
            {"n": invoice_number},
        )
    ).first()
    if current is None:
        return "no_invoice"
    # A new statement after the row lock: it sees whatever a concurrent edit committed.
    later = (
        await conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE invoice_number = :n AND id > :id "
                f"AND {PERSON_EDIT})"
            ),
            {"n": invoice_number, "id": message_id},
        )
    ).scalar_one()
    if later:
        return "person_decided_later"
    if current.status == crm_status:
        return "unchanged"
    outstanding: Decimal = current.outstanding
    await conn.execute(
        sa.text(
            "UPDATE invoices SET status = :status, updated_at = now() WHERE invoice_number = :n"
        ),
        {"status": crm_status, "n": invoice_number},
    )
    await conn.execute(
        _CRM_HISTORY,
        {
            "n": invoice_number,
            "from_status": current.status,
            "to_status": crm_status,
            "outstanding": outstanding,
            "reason": reason,
        },
    )
    await queue_for_reconcile(conn, [invoice_number])
    return "updated"


async def queue_for_reconcile(conn: AsyncConnection, numbers: Sequence[str]) -> None:
    """Contract 1 for invoices whose rows this transaction already locked: a protected status
    taken from the CRM is reconciled at once, so a disagreement with Sage shows as a conflict
    now rather than at the invoice's next posting."""
    if not numbers:
        return
    queued = await conn.execute(
        sa.text(
            mark_dirty(
                from_="unnest(CAST(:numbers AS text[])) AS n",
                invoice_number="n",
                order_by="n",
                returning="invoice_number",
            )
        ),
        {"numbers": sorted(numbers)},
    )
    if queued.first() is not None:
        await contracts.notify(conn, contracts.DIRTY_CHANNEL)


async def invoices_with_undelivered_edits(conn: AsyncConnection) -> list[str]:
    """Invoices with a person's change (PATCH, Global Update) not yet delivered to the CRM."""
    rows = await conn.execute(
        sa.text(
            f"SELECT DISTINCT invoice_number FROM outbox WHERE state = 'pending' AND {PERSON_EDIT}"
        )
    )
    return list(rows.scalars())


_ADOPT_HISTORY = contracts.insert_history(
    source="crm",
    invoice_number="a.invoice_number",
    from_status="old.status",
    to_status="a.status",
    from_outstanding="old.outstanding",
    to_outstanding="old.outstanding",
    actor=f"'{CRM_ACTOR}'",
    reason="format(:reason, a.status)",
    from_="adopted AS a JOIN old ON old.invoice_number = a.invoice_number",
    order_by="a.invoice_number",
    returning="invoice_number",
)
_ADOPT = sa.text(
    f"""
    WITH seen AS (
        SELECT s.invoice_number, s.status
        FROM unnest(CAST(:numbers AS text[]), CAST(:statuses AS text[]))
          AS s(invoice_number, status)
        WHERE s.invoice_number <> ALL(CAST(:edited AS text[]))
    ),
    old AS (
        SELECT i.invoice_number, i.status, i.outstanding
        FROM invoices AS i JOIN seen AS s ON s.invoice_number = i.invoice_number
        WHERE i.status IS DISTINCT FROM s.status
          AND NOT EXISTS (
            SELECT 1 FROM outbox AS o
            WHERE o.invoice_number = i.invoice_number AND o.state = 'pending'
              AND o.{PERSON_EDIT})
        ORDER BY i.invoice_number
        FOR UPDATE OF i
    ),
    adopted AS (
        UPDATE invoices AS i SET status = s.status, updated_at = now()
        FROM old JOIN seen AS s ON s.invoice_number = old.invoice_number
        WHERE i.invoice_number = old.invoice_number
        RETURNING i.invoice_number, s.status
    )
    {_ADOPT_HISTORY}
    """
)


async def adopt_protected(
    conn: AsyncConnection, statuses: dict[str, str], *, edited: Sequence[str], reason: str
) -> list[str]:
    """Give our invoices the protected status the CRM shows, with a history row each (source
    crm), and queue them for reconciliation (the conflict with Sage, if any, shows at once).
    Not where a person's change made in ledgerlink is on its way to the CRM (now, or in
    `edited`, read before the CRM was): it was, or may have been, decided after what the CRM
    showed. `reason` has one %s, the status."""
    if not statuses:
        return []
    numbers = sorted(statuses)
    rows = await conn.execute(
        _ADOPT,
        {
            "numbers": numbers,
            "statuses": [statuses[n] for n in numbers],
            "edited": list(edited),
            "reason": reason,
        },
    )
    adopted = list(rows.scalars())
    await queue_for_reconcile(conn, adopted)
    return adopted
