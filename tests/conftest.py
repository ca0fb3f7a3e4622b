"""Real PostgreSQL for every test: migrated once per session, truncated between tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import create_engine
from service.main import create_app
from service.migrate import upgrade_to_head
from service.settings import Settings, load_settings
from tests.support.database import scratch_database
from tests.support.webhooks import TEST_SECRET

READ_KEY = "test-read-key-000000000000"
WRITE_KEY = "test-write-key-00000000000"
ADMIN_KEY = "test-admin-key-00000000000"
API_KEYS = {
    READ_KEY: {"name": "reader", "scopes": ["read"]},
    WRITE_KEY: {"name": "writer", "scopes": ["write"]},
    ADMIN_KEY: {"name": "admin", "scopes": ["admin"]},
}


# What the initial migration seeds (an OpenCRM-like list holding both write-off values), and
# what every test starts from (tests/picklist checks the two agree).
DEFAULT_PICKLIST: tuple[str, ...] = (
    "Created",
    "Approved",
    "Sent",
    "Unpaid",
    "Part Paid",
    "Paid",
    "Credit Invoice",
    "Written Off",
    "Paid/Written Off",
    "Cancelled",
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    async with scratch_database() as url:
        await asyncio.to_thread(upgrade_to_head, url)
        yield url


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(autouse=True)
async def _clean_database(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test starts from the migrated, seeded state (truncation, not rollback: the
    concurrency tests need several real connections and committed transactions)."""
    if "engine" not in request.fixturenames:
        yield
        return
    await reset_database(request.getfixturevalue("engine"))
    yield


async def reset_database(engine: AsyncEngine) -> None:
    """Every table empty but the picklist, which holds its default values."""
    async with engine.begin() as conn:
        tables = (
            await conn.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
        ).scalars()
        names = ", ".join(f'"{t}"' for t in tables)
        await conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        await conn.execute(
            sa.text("INSERT INTO picklist_values (value, position) VALUES (:v, :p)"),
            [{"v": v, "p": i} for i, v in enumerate(DEFAULT_PICKLIST)],
        )


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "api_keys": json.dumps(API_KEYS),
        "webhook_secrets": TEST_SECRET,
        "run_worker": False,
        "log_format": "console",
        "db_pool_size": 5,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
