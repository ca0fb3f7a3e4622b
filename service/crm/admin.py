"""The outbox as people see and handle it, through the admin API and the console: a page of
messages at a time, dead letters sent again."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from service.crm.repository import outbox_admin
from service.crm.schemas import OutboxMessageOut, OutboxPage
from service.errors import Conflict, NotFound
from service.logging import get_logger

log = get_logger(__name__)


async def outbox_page(
    conn: AsyncConnection,
    *,
    state: str | None,
    invoice_number: str | None,
    after_id: int,
    limit: int,
) -> OutboxPage:
    """Messages in id order after `after_id`, at most `limit`, and where the next page starts."""
    rows = await outbox_admin.list_messages(
        conn, state=state, invoice_number=invoice_number, after_id=after_id, limit=limit
    )
    items = [OutboxMessageOut.from_row(row) for row in rows[:limit]]
    next_cursor = str(items[-1].id) if len(rows) > limit else None
    return OutboxPage(items=items, next_cursor=next_cursor)


async def retry_dead_letter(conn: AsyncConnection, message_id: int) -> OutboxMessageOut:
    """Dead letter -> pending, attempts reset; 404 unknown, 409 when it is not dead."""
    row = await outbox_admin.requeue_dead(conn, message_id)
    if row is None:
        existing = await outbox_admin.get_message(conn, message_id)
        if existing is None:
            raise NotFound(f"no outbox message {message_id}")
        raise Conflict(
            f"outbox message {message_id} is '{existing.state}', not 'dead': only dead letters "
            "can be retried"
        )
    await outbox_admin.notify_outbox(conn)
    log.info("crm.dead_letter.retried", message_id=message_id)
    return OutboxMessageOut.from_row(row)


async def retry_all_dead_letters(conn: AsyncConnection) -> int:
    """Every dead letter -> pending, attempts reset, in one statement; how many there were."""
    count = await outbox_admin.requeue_all_dead(conn)
    if count:
        await outbox_admin.notify_outbox(conn)
        log.info("crm.dead_letter.retried_all", count=count)
    return count
