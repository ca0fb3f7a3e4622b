"""The transaction boundary of everything that is not one HTTP request (the worker's tasks, the
webhook's retried delivery, a sync run's batches): one function owns begin, commit, rollback and
the retry of a transaction PostgreSQL aborted to resolve a conflict.

A request's own transaction is `service.deps.ConnDep`. Repositories never commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import db_errors
from service.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


async def run_in_transaction(
    engine: AsyncEngine,
    fn: Callable[[AsyncConnection], Awaitable[T]],
    *,
    retries: int = 0,
    name: str = "transaction",
) -> T:
    """Run `fn` in a transaction of its own: committed when it returns, rolled back when it
    raises. A deadlock or serialization failure runs it again, in a new transaction, up to
    `retries` more times (it changed nothing, so `fn` must only be safe to call again: no side
    effects outside the database before it returns). `name` labels the retry log line."""
    attempt = 0
    while True:
        attempt += 1
        try:
            async with engine.begin() as conn:
                return await fn(conn)
        except Exception as exc:
            if attempt > retries or not db_errors.is_retryable(exc):
                raise
            log.info(
                "db.transaction.retried",
                name=name,
                sqlstate=db_errors.sqlstate(exc),
                attempt=attempt,
            )
