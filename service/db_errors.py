"""What a database failure means, decided in one place: whether running the transaction again
can help, whether the caller should be told to retry later, or whether it is the client's input.

Every rule reads the whole chain of causes, because the same failure reaches the code as a
SQLAlchemy `DBAPIError` (asyncpg's error under it), or as asyncpg's own error where a
repository talks to the driver directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"
# character_not_in_repertoire (NUL in text), untranslatable_character (\u0000 in jsonb).
UNSTORABLE_TEXT = frozenset({"22021", "22P05"})
# admin_shutdown, crash_shutdown, cannot_connect_now: the server is stopping or starting.
SERVER_RESTARTING = frozenset({"57P01", "57P02", "57P03"})

# What the storage layer raises: the exception handlers answer these (4xx or 503) rather than
# let them pass as crashes.
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeout,
    OSError,
    UnicodeEncodeError,
    asyncpg.exceptions.PostgresError,
    asyncpg.exceptions.InterfaceError,
)

# Failures of the connection itself (server restarting, pool broken or exhausted, network).
_CONNECTION_ERRORS = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    OSError,
    ConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it, in turn (a driver error under SQLAlchemy's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def sqlstates(exc: BaseException) -> list[str]:
    """Every SQLSTATE in the chain, outermost first."""
    return [
        state
        for current in causes(exc)
        if isinstance(state := getattr(current, "sqlstate", None), str)
    ]


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL answered with, if the failure came from it."""
    states = sqlstates(exc)
    return states[0] if states else None


def _has_state(exc: BaseException, states: frozenset[str]) -> bool:
    return any(state in states for state in sqlstates(exc))


def is_deadlock(exc: BaseException) -> bool:
    return _has_state(exc, frozenset({DEADLOCK_DETECTED}))


def is_serialization_failure(exc: BaseException) -> bool:
    return _has_state(exc, frozenset({SERIALIZATION_FAILURE}))


def is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: PostgreSQL aborted the transaction to resolve a
    conflict with another one; it changed nothing, and the same transaction run again may
    succeed."""
    return is_deadlock(exc) or is_serialization_failure(exc)


def is_lock_not_available(exc: BaseException) -> bool:
    """A lock wait gave up (NOWAIT, lock_timeout): someone else holds the rows right now."""
    return _has_state(exc, frozenset({LOCK_NOT_AVAILABLE}))


def is_concurrent_change(exc: BaseException) -> bool:
    """The rows were being changed by another transaction: nobody's fault, nothing stored;
    the client may send the same request again."""
    return is_retryable(exc) or is_lock_not_available(exc)


def is_unstorable_text(exc: BaseException) -> bool:
    """Text PostgreSQL cannot hold (NUL, a lone surrogate): the client's input, not a crash."""
    return any(isinstance(current, UnicodeEncodeError) for current in causes(exc)) or _has_state(
        exc, UNSTORABLE_TEXT
    )


def is_resource_exhausted(exc: BaseException) -> bool:
    """Insufficient resources (SQLSTATE class 53: out of memory or lock table space, too many
    connections, disk full): the database answered, so it is not "unreachable"."""
    return any(state.startswith("53") for state in sqlstates(exc))


def is_connection_lost(exc: BaseException) -> bool:
    """The connection failed or could not be had (server restarting, pool broken)."""
    return any(
        isinstance(current, _CONNECTION_ERRORS)
        or (isinstance(current, DBAPIError) and current.connection_invalidated)
        for current in causes(exc)
    )


def is_transient(exc: BaseException) -> bool:
    """Worth a retry later, not a bug: the connection lost, the server short of resources or
    restarting, or a conflict that outlived the caller's own retries. A request failing so is
    answered 503, not 500."""
    return (
        is_connection_lost(exc)
        or is_resource_exhausted(exc)
        or is_retryable(exc)
        or any(state[:2] == "08" or state in SERVER_RESTARTING for state in sqlstates(exc))
    )
