"""Fixtures of the CRM tests: the fake OpenCRM on a real port, an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.crm.support import Clocks, db_now
from tests.support.fake_opencrm import FakeOpenCrm


@pytest.fixture
def fake_crm() -> Iterator[FakeOpenCrm]:
    fake = FakeOpenCrm()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def clocks(engine: AsyncEngine) -> Clocks:
    """Hand-moved clocks, a minute ahead: every row the test inserts is due at once."""
    return Clocks(now=await db_now(engine) + timedelta(seconds=60))
