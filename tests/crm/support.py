"""Helpers for the CRM tests: dispatchers and connectors with test clocks and policies."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.crm.connector import Connector, LocalConnector
from service.crm.dispatcher import Dispatcher
from service.crm.opencrm.client import OpenCrmClient
from service.crm.opencrm.connector import OpenCrmConnector
from service.crm.opencrm.fields import CrmFields
from service.crm.retry import RetryPolicy
from service.crm.tasks import DispatcherTask
from tests.support import fake_opencrm
from tests.support.queries import scalar

BASE_URL = "https://acme.opencrm.test"


async def set_invoice(engine: AsyncEngine, number: str, *, status: str, outstanding: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE invoices SET status = :s, outstanding = :o WHERE invoice_number = :n"),
            {"n": number, "s": status, "o": Decimal(outstanding)},
        )


async def db_now(engine: AsyncEngine) -> datetime:
    value: datetime = await scalar(engine, "SELECT now()")
    return value


class TopRandom(random.Random):
    """Full jitter at its ceiling: the backoff is exactly base * 2^(n-1) (capped)."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Clocks:
    """A monotonic clock and a database instant, both moved by hand."""

    now: datetime
    mono: float = 1000.0
    log: list[str] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.mono

    def db(self) -> datetime | None:
        return self.now

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.now += timedelta(seconds=seconds)


def policy(max_attempts: int = 5, base: float = 2.0, cap: float = 60.0) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        base_seconds=base,
        max_seconds=cap,
        auth_recheck_seconds=60.0,
        rng=TopRandom(),
    )


def opencrm_connector(
    http: httpx.AsyncClient,
    *,
    base_url: str = BASE_URL,
    outstanding_field: str | None = fake_opencrm.OUTSTANDING_FIELD,
    batch_size: int = 20,
    number_query: str = fake_opencrm.NUMBER_FIELD,
    number_record: str | None = None,
    user_agent: str = "ledgerlink/test",
) -> OpenCrmConnector:
    from pydantic import SecretStr

    client = OpenCrmClient(
        http,
        base_url=base_url,
        key=SecretStr(fake_opencrm.KEY),
        passkey=SecretStr(fake_opencrm.PASSKEY),
        user_agent=user_agent,
        timeout=5.0,
    )
    fields = CrmFields(
        status=fake_opencrm.STATUS_FIELD,
        number_query=number_query,
        number_record=number_record or number_query,
        outstanding=outstanding_field,
    )
    return OpenCrmConnector(
        client,
        fields,
        protected_statuses=["Written Off", "Paid/Written Off"],
        batch_size=batch_size,
    )


def dispatcher(
    engine: AsyncEngine,
    connector: Connector | None = None,
    *,
    clocks: Clocks | None = None,
    retry: RetryPolicy | None = None,
    lease_seconds: float | None = None,
) -> DispatcherTask:
    kwargs: dict[str, Any] = {}
    if clocks is not None:
        kwargs = {"clock": clocks.monotonic, "db_now": clocks.db}
    if lease_seconds is not None:
        kwargs["lease_seconds"] = lease_seconds
    return DispatcherTask(
        engine, Dispatcher(connector or LocalConnector(), retry or policy(), **kwargs)
    )
