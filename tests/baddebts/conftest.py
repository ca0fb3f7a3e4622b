"""The console tests' company, loaded through the webhook and reconciled."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.settings import Settings
from tests.console.support import load_company
from tests.support.settings import make_settings


@pytest.fixture
async def company(client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> None:
    await load_company(client, engine, settings)


@pytest.fixture
async def app_with_term(database_url: str, company: None) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(make_settings(database_url, bad_debt_payment_term_days=120))
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c
