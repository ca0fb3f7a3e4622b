"""run_in_transaction and the database error classifier, against failures PostgreSQL really
raises: a serialization failure between two SERIALIZABLE transactions, a deadlock between two
connections, a NOWAIT lock refused, text it cannot store, a connection that went away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import db_errors
from service.transaction import run_in_transaction

SERIALIZABLE = {"isolation_level": "SERIALIZABLE"}


@pytest.fixture
async def counters(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """A scratch table of two rows (temporary tables are per connection: these are shared)."""
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE IF EXISTS tx_test_counters"))
        await conn.execute(
            sa.text("CREATE TABLE tx_test_counters (id int PRIMARY KEY, n int NOT NULL)")
        )
        await conn.execute(sa.text("INSERT INTO tx_test_counters VALUES (1, 0), (2, 0)"))
    yield engine
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE tx_test_counters"))


async def _count(engine: AsyncEngine, row: int) -> int:
    async with engine.connect() as conn:
        value = await conn.scalar(
            sa.text("SELECT n FROM tx_test_counters WHERE id = :id"), {"id": row}
        )
    assert isinstance(value, int)
    return value


async def _serialization_failure(engine: AsyncEngine) -> DBAPIError:
    """Two SERIALIZABLE transactions update the same row: the second gets 40001."""
    first = await engine.connect()
    second = await engine.connect()
    try:
        await first.execution_options(**SERIALIZABLE)
        await second.execution_options(**SERIALIZABLE)
        await first.begin()
        await second.begin()
        await second.execute(sa.text("SELECT n FROM tx_test_counters WHERE id = 1"))
        await first.execute(sa.text("UPDATE tx_test_counters SET n = n + 1 WHERE id = 1"))
        await first.commit()
        with pytest.raises(DBAPIError) as failed:
            await second.execute(sa.text("UPDATE tx_test_counters SET n = n + 1 WHERE id = 1"))
        await second.rollback()
        return failed.value
    finally:
        await first.close()
        await second.close()


async def test_a_real_serialization_failure_is_retryable(counters: AsyncEngine) -> None:
    error = await _serialization_failure(counters)
    assert db_errors.sqlstate(error) == db_errors.SERIALIZATION_FAILURE
    assert db_errors.is_serialization_failure(error)
    assert db_errors.is_retryable(error)
    assert db_errors.is_concurrent_change(error)
    assert db_errors.is_transient(error)
    assert not db_errors.is_deadlock(error)
    assert not db_errors.is_lock_not_available(error)
    assert not db_errors.is_connection_lost(error)


async def test_a_real_deadlock_is_retryable(counters: AsyncEngine) -> None:
    first = await counters.connect()
    second = await counters.connect()
    try:
        await first.begin()
        await second.begin()
        await first.execute(sa.text("UPDATE tx_test_counters SET n = 1 WHERE id = 1"))
        await second.execute(sa.text("UPDATE tx_test_counters SET n = 1 WHERE id = 2"))
        # Each now waits for the row the other holds: PostgreSQL aborts one of them.
        outcomes = await asyncio.gather(
            first.execute(sa.text("UPDATE tx_test_counters SET n = 2 WHERE id = 2")),
            second.execute(sa.text("UPDATE tx_test_counters SET n = 2 WHERE id = 1")),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1, outcomes
        [error] = errors
        assert db_errors.sqlstate(error) == db_errors.DEADLOCK_DETECTED
        assert db_errors.is_deadlock(error)
        assert db_errors.is_retryable(error)
        assert not db_errors.is_serialization_failure(error)
    finally:
        await first.close()
        await second.close()


async def test_a_lock_refused_is_a_concurrent_change_but_not_retried(
    counters: AsyncEngine,
) -> None:
    holder = await counters.connect()
    try:
        await holder.begin()
        await holder.execute(sa.text("SELECT 1 FROM tx_test_counters WHERE id = 1 FOR UPDATE"))
        with pytest.raises(DBAPIError) as refused:
            async with counters.begin() as conn:
                await conn.execute(
                    sa.text("SELECT 1 FROM tx_test_counters WHERE id = 1 FOR UPDATE NOWAIT")
                )
    finally:
        await holder.close()
    error = refused.value
    assert db_errors.sqlstate(error) == db_errors.LOCK_NOT_AVAILABLE
    assert db_errors.is_lock_not_available(error)
    assert db_errors.is_concurrent_change(error)
    assert not db_errors.is_retryable(error)
    # Not transient either: a request failing on it outside the invoices' own 503 is a 500.
    assert not db_errors.is_transient(error)


async def test_text_postgresql_cannot_store_is_the_clients_input(engine: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as failed:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT CAST(:j AS jsonb)"), {"j": '"\\u0000"'})
    assert db_errors.is_unstorable_text(failed.value)
    assert not db_errors.is_transient(failed.value)
    assert db_errors.is_unstorable_text(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate"))


async def test_a_connection_killed_under_a_transaction_is_transient(engine: AsyncEngine) -> None:
    victim = await engine.connect()
    try:
        pid = await victim.scalar(sa.text("SELECT pg_backend_pid()"))
        async with engine.connect() as killer:
            await killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(DBAPIError) as lost:
            await victim.execute(sa.text("SELECT 1"))
    finally:
        await victim.invalidate()
        await victim.close()
    assert db_errors.is_connection_lost(lost.value)
    assert db_errors.is_transient(lost.value)
    assert not db_errors.is_retryable(lost.value)


def test_an_unrelated_error_is_nothing_of_these() -> None:
    error = ValueError("a bug")
    assert db_errors.sqlstate(error) is None
    for rule in (
        db_errors.is_retryable,
        db_errors.is_concurrent_change,
        db_errors.is_transient,
        db_errors.is_unstorable_text,
        db_errors.is_resource_exhausted,
    ):
        assert not rule(error), rule.__name__


class _Gate:
    """A transaction that loses a real serialization conflict on its first `losses` attempts:
    after it has read the row, another SERIALIZABLE transaction adds 100 to it and commits."""

    def __init__(self, engine: AsyncEngine, *, losses: int) -> None:
        self.engine = engine
        self.losses = losses
        self.attempts = 0

    async def increment(self, conn: AsyncConnection) -> int:
        self.attempts += 1
        await conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        seen = await conn.scalar(sa.text("SELECT n FROM tx_test_counters WHERE id = 1"))
        assert isinstance(seen, int)
        if self.attempts <= self.losses:
            async with self.engine.connect() as other:
                await other.execution_options(**SERIALIZABLE)
                async with other.begin():
                    await other.execute(
                        sa.text("UPDATE tx_test_counters SET n = n + 100 WHERE id = 1")
                    )
        await conn.execute(
            sa.text("UPDATE tx_test_counters SET n = :n WHERE id = 1"), {"n": seen + 1}
        )
        return seen + 1


async def test_run_in_transaction_runs_a_serialization_failure_again(
    counters: AsyncEngine,
) -> None:
    gate = _Gate(counters, losses=1)
    result = await run_in_transaction(counters, gate.increment, retries=2)
    assert gate.attempts == 2
    # The second attempt saw the other transaction's +100; the first left nothing behind.
    assert result == 101
    assert await _count(counters, 1) == 101


async def test_run_in_transaction_gives_up_after_its_retries(counters: AsyncEngine) -> None:
    gate = _Gate(counters, losses=10)
    with pytest.raises(DBAPIError) as failed:
        await run_in_transaction(counters, gate.increment, retries=2)
    assert db_errors.is_serialization_failure(failed.value)
    # Three attempts (the first and two retries), each lost to a committed +100.
    assert gate.attempts == 3
    assert await _count(counters, 1) == 300


async def test_run_in_transaction_does_not_retry_by_default(counters: AsyncEngine) -> None:
    gate = _Gate(counters, losses=1)
    with pytest.raises(DBAPIError):
        await run_in_transaction(counters, gate.increment)
    assert gate.attempts == 1
    assert await _count(counters, 1) == 100


async def test_run_in_transaction_commits_or_rolls_back_whole(counters: AsyncEngine) -> None:
    async def two_writes(conn: AsyncConnection) -> None:
        await conn.execute(sa.text("UPDATE tx_test_counters SET n = 5 WHERE id = 1"))
        await conn.execute(sa.text("UPDATE tx_test_counters SET n = 5 WHERE id = 2"))

    await run_in_transaction(counters, two_writes)
    assert (await _count(counters, 1), await _count(counters, 2)) == (5, 5)

    attempts = 0

    async def fails_after_a_write(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(sa.text("UPDATE tx_test_counters SET n = 9 WHERE id = 1"))
        raise ValueError("a rule said no")

    with pytest.raises(ValueError, match="a rule said no"):
        await run_in_transaction(counters, fails_after_a_write, retries=5)
    assert attempts == 1  # not a conflict: never run again
    assert await _count(counters, 1) == 5
