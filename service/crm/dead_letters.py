"""Dead letters sent again: the admin API's and the console's retry."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.crm.repository import outbox_admin
from service.errors import Conflict, NotFound
from service.logging import get_logger

log = get_logger(__name__)


async def retry_dead_letter(conn: AsyncConnection, message_id: int) -> Any:
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
    return row
