"""How a failure of the database reaches the client: a retryable 503 with Retry-After when it
passes (restart, overload, deadlock), a 422 when it is the client's text, a bare 500 (no
internals) only for a genuine bug."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tests.support.keys import READ_KEY, auth

PATH = "/v1/picklists/invoice-status"


def _wrapped(original: Exception) -> DBAPIError:
    """What SQLAlchemy raises for a driver error: a DBAPIError caused by it."""
    try:
        try:
            raise original
        except Exception as exc:
            raise DBAPIError("SELECT value FROM picklist_values", None, exc) from exc
    except DBAPIError as wrapped:
        return wrapped


RETRYABLE = {
    "lock table full": _wrapped(asyncpg.exceptions.OutOfMemoryError("out of shared memory")),
    "too many connections": _wrapped(asyncpg.exceptions.TooManyConnectionsError("too many")),
    "deadlock": _wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected")),
    "serialization": _wrapped(asyncpg.exceptions.SerializationError("could not serialize")),
    "shutting down": _wrapped(asyncpg.exceptions.AdminShutdownError("terminating")),
    "starting up": _wrapped(asyncpg.exceptions.CannotConnectNowError("starting up")),
    "connection lost": _wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed")),
    "refused": ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    "pool exhausted": PoolTimeout("QueuePool limit reached, connection timed out"),
}
CLIENTS_TEXT = {
    "NUL in text": _wrapped(asyncpg.exceptions.CharacterNotInRepertoireError("0x00")),
    "NUL in jsonb": _wrapped(asyncpg.exceptions.UntranslatableCharacterError("\\u0000")),
    "lone surrogate": UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
}
BUGS = {
    "undefined table": _wrapped(asyncpg.exceptions.UndefinedTableError("no such relation")),
    "plain bug": RuntimeError("a bug"),
}


@pytest.fixture
async def failing(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A client, and a way to make the picklist read raise any exception."""
    from service.picklist import repository

    def fail_with(error: BaseException) -> None:
        async def broken(*_: Any, **__: Any) -> Any:
            raise error

        monkeypatch.setattr(repository, "values", broken)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, fail_with


@pytest.mark.parametrize("error", RETRYABLE.values(), ids=RETRYABLE.keys())
async def test_passing_database_trouble_is_a_503_to_retry(failing: Any, error: Exception) -> None:
    client, fail_with = failing
    fail_with(error)
    response = await client.get(PATH, headers=auth(READ_KEY))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert response.headers["content-type"] == "application/problem+json"
    assert "retry" in response.json()["detail"]


@pytest.mark.parametrize(
    "error",
    [RETRYABLE["lock table full"], RETRYABLE["too many connections"]],
    ids=["lock table full", "too many connections"],
)
async def test_an_exhausted_database_is_not_called_unreachable(
    failing: Any, error: Exception
) -> None:
    client, fail_with = failing
    fail_with(error)
    response = await client.get(PATH, headers=auth(READ_KEY))
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "not reachable" not in detail
    assert "short of a resource" in detail


@pytest.mark.parametrize("error", CLIENTS_TEXT.values(), ids=CLIENTS_TEXT.keys())
async def test_text_the_database_cannot_hold_is_the_clients_422(
    failing: Any, error: Exception
) -> None:
    client, fail_with = failing
    fail_with(error)
    response = await client.get(PATH, headers=auth(READ_KEY))
    assert response.status_code == 422, response.text
    assert "cannot be stored" in response.json()["detail"]


@pytest.mark.parametrize("error", BUGS.values(), ids=BUGS.keys())
async def test_a_bug_is_a_500_that_reveals_nothing(failing: Any, error: Exception) -> None:
    client, fail_with = failing
    fail_with(error)
    response = await client.get(PATH, headers=auth(READ_KEY))
    assert response.status_code == 500
    body = response.json()
    assert body["detail"] == "an unexpected error occurred; it has been logged"
    assert "picklist_values" not in response.text
    assert "Traceback" not in response.text
