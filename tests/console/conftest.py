"""The console over HTTP: the company loaded and reconciled, and signed-in clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.console.support import CONSOLE_SECRET, SignIn, csrf_from, load_company
from tests.support.settings import make_settings


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(
        database_url, write_off_mode="sagelink", console_session_secret=CONSOLE_SECRET
    )


@pytest.fixture
async def company(client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> None:
    await load_company(client, engine, settings)


@pytest.fixture
async def sign_in(app: FastAPI) -> AsyncIterator[SignIn]:
    """A new browser-like client signed in with `key` (its own cookie jar)."""
    clients: list[httpx.AsyncClient] = []

    async def open_session(key: str) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        clients.append(c)
        page = await c.get("/console/sign-in")
        answer = await c.post(
            "/console/sign-in",
            data={"csrf_token": csrf_from(page.text), "api_key": key, "next": "/console/"},
        )
        assert answer.status_code == 303, answer.text
        return c

    yield open_session
    for c in clients:
        await c.aclose()
