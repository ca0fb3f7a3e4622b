"""Fixtures of the invoice tests: a worker context, and an app whose Global Update runs in the
request only up to 5 invoices."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.main import create_app
from service.settings import Settings
from tests.support.settings import make_settings


@pytest.fixture
async def worker_ctx(
    engine: AsyncEngine, settings: Settings, database_url: str
) -> AsyncIterator[WorkerContext]:
    async with httpx.AsyncClient() as http:
        yield WorkerContext(settings=settings, engine=engine, http=http)


@pytest.fixture
async def small_limit_app(engine: AsyncEngine, database_url: str) -> AsyncIterator[FastAPI]:
    """The app with an inline limit of 5 invoices, so the queued path needs only a few."""
    application = create_app(make_settings(database_url, bulk_sync_limit=5))
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def small_client(small_limit_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small_limit_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
