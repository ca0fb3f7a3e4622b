"""The outbox as people see it: listed in id order, read one at a time, dead letters sent
again."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts

_COLUMNS = (
    "id, invoice_number, source, state, payload, attempts, next_attempt_at, last_error, "
    "created_at, delivered_at"
)


async def list_messages(
    conn: AsyncConnection,
    *,
    state: str | None,
    invoice_number: str | None,
    after_id: int,
    limit: int,
) -> list[sa.Row[Any]]:
    """Messages in id order after `after_id`; one more than `limit` tells there is a next page."""
    clauses = ["id > :after"]
    if state is not None:
        clauses.append("state = :state")
    if invoice_number is not None:
        clauses.append("invoice_number = :invoice_number")
    query = sa.text(
        f"SELECT {_COLUMNS} FROM outbox WHERE {' AND '.join(clauses)} ORDER BY id LIMIT :limit"
    )
    params = {
        "after": after_id,
        "state": state,
        "invoice_number": invoice_number,
        "limit": limit + 1,
    }
    result = await conn.execute(query, {k: v for k, v in params.items() if v is not None})
    return list(result.all())


async def get_message(conn: AsyncConnection, message_id: int) -> sa.Row[Any] | None:
    return (
        await conn.execute(
            sa.text(f"SELECT {_COLUMNS} FROM outbox WHERE id = :id"), {"id": message_id}
        )
    ).first()


async def requeue_dead(conn: AsyncConnection, message_id: int) -> sa.Row[Any] | None:
    """A dead letter back to pending, attempts reset; None when it is not a dead letter."""
    return (
        await conn.execute(
            sa.text(
                f"""
                UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now()
                WHERE id = :id AND state = 'dead'
                RETURNING {_COLUMNS}
                """
            ),
            {"id": message_id},
        )
    ).first()


async def requeue_all_dead(conn: AsyncConnection) -> int:
    """Every dead letter back to pending, attempts reset; how many there were."""
    result = await conn.execute(
        sa.text(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now() "
            "WHERE state = 'dead'"
        )
    )
    return result.rowcount


async def notify_outbox(conn: AsyncConnection) -> None:
    await contracts.notify(conn, contracts.OUTBOX_CHANNEL)
