"""ConnDep, the request's one transaction: committed before the response, rolled back whole by
any error, and taken from the pool only once the caller is authenticated."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.deps import ConnDep, get_engine
from service.errors import Conflict
from service.exception_handlers import install_error_handlers

ROOT = Path(__file__).resolve().parents[1]
# ClaimedDep: a console cookie signed with the session secret naming a configured key (its row
# is then read with the request's connection); UserDep: such a cookie whose row was read;
# *Sender: the sender of a console form, read from such a cookie, its CSRF token checked.
AUTHENTICATED = {
    "ReadKey",
    "WriteKey",
    "AdminKey",
    "UserDep",
    "ClaimedDep",
    "WriteSender",
    "AdminSender",
    "SignOutSender",
}
# The console's sign-in takes a connection for a caller with no key yet: it stores the session,
# or counts the wrong key against the caller's address, in PostgreSQL (shared by the replicas).
# Its form's CSRF token is checked first, and an address this process knows to be waiting is
# refused before a connection is taken (tests/console/test_sign_in_back_off.py).
UNAUTHENTICATED = {"service/console/sign_in.py: sign_in"}
# Modules of routes besides the features' router.py files.
ROUTE_MODULES = ("service/console/sign_in.py",)


@pytest.fixture
async def notes(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE IF EXISTS deps_test_notes"))
        await conn.execute(sa.text("CREATE TABLE deps_test_notes (text text NOT NULL)"))
    yield engine
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE deps_test_notes"))


@pytest.fixture
async def tiny(notes: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.dependency_overrides[get_engine] = lambda: notes
    install_error_handlers(app)

    async def write(conn: ConnDep, text: str) -> None:
        await conn.execute(sa.text("INSERT INTO deps_test_notes VALUES (:t)"), {"t": text})

    @app.post("/ok")
    async def ok(conn: ConnDep) -> dict[str, int]:
        await write(conn, "first")
        await write(conn, "second")
        # Another connection cannot see it yet: the commit comes after the endpoint returns.
        async with notes.connect() as other:
            seen = await other.scalar(sa.text("SELECT count(*) FROM deps_test_notes"))
        return {"seen_before_commit": int(seen or 0)}

    @app.post("/refused")
    async def refused(conn: ConnDep) -> None:
        await write(conn, "half")
        raise Conflict("a rule said no")

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client


async def _stored(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.text("SELECT text FROM deps_test_notes"))).scalars())


async def test_the_writes_commit_together_once_the_endpoint_returns(
    tiny: httpx.AsyncClient, notes: AsyncEngine
) -> None:
    response = await tiny.post("/ok")
    assert response.status_code == 200
    assert response.json() == {"seen_before_commit": 0}
    # The answer has arrived: both writes are on disk.
    assert sorted(await _stored(notes)) == ["first", "second"]


async def test_an_error_rolls_the_whole_request_back(
    tiny: httpx.AsyncClient, notes: AsyncEngine
) -> None:
    response = await tiny.post("/refused")
    assert response.status_code == 409
    assert response.json()["detail"] == "a rule said no"
    assert await _stored(notes) == []


def test_every_endpoint_checks_the_caller_before_taking_a_connection() -> None:
    """Dependencies are solved in the order of the parameters: a caller without a valid key
    (or console session) must never hold a pooled connection."""
    late: list[str] = []
    routes = [*(ROOT / "service").rglob("router.py"), *(ROOT / m for m in ROUTE_MODULES)]
    for path in sorted(routes):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.AsyncFunctionDef):
                continue
            params = [*node.args.args, *node.args.kwonlyargs]
            kinds = [ast.unparse(p.annotation) if p.annotation else "" for p in params]
            if "ConnDep" not in kinds:
                continue
            checks = [i for i, kind in enumerate(kinds) if kind in AUTHENTICATED]
            if not checks or min(checks) > kinds.index("ConnDep"):
                late.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert sorted(late) == sorted(UNAUTHENTICATED)
