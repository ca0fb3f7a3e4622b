"""The transaction boundaries: the only code that begins and commits a transaction.

`begin` is where every transaction starts, whoever asks: a request's (`ConnDep`, in
service/request_scope.py), a task's or a batch's (`run_in_transaction`), a read outside a
request (`read`). Anything a transaction must carry from its first statement belongs there,
once. Repositories and services never commit; a service that needs several transactions (a
sync run's batches, a job's progress beside the job's own transaction, the webhook's retried
store) is handed one connection per transaction by its task or router.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import db_errors
from service.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


@contextlib.asynccontextmanager
async def begin(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a new transaction: committed when the block ends, rolled back when it
    raises."""
    async with engine.begin() as conn:
        yield conn


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
            async with begin(engine) as conn:
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


async def read(engine: AsyncEngine, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """What `fn` reads, outside a request (a probe, a gauge, what a finished run wrote): in a
    transaction of its own, begun like any other."""
    async with begin(engine) as conn:
        return await fn(conn)
