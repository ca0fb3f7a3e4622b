"""Shared pieces of the end-to-end CRM tests: a worker delivering to the fake OpenCRM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import contracts
from service.context import WorkerContext
from service.crm import tasks as crm_tasks
from service.settings import Settings
from service.worker import Worker
from tests.support import fake_opencrm
from tests.support.factories import add_invoice
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.settings import make_settings

# States an invoice goes through, each different from the one before it.
CYCLE = (
    ("Part Paid", "60.00"),
    ("Part Paid", "25.50"),
    ("Paid", "0.00"),
    ("Unpaid", "100.00"),
)


def crm_settings(database_url: str, fake: FakeOpenCrm, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "crm_mode": "opencrm",
        "opencrm_base_url": fake.base_url,
        "opencrm_key": fake_opencrm.KEY,
        "opencrm_passkey": fake_opencrm.PASSKEY,
        "opencrm_outstanding_field": fake_opencrm.OUTSTANDING_FIELD,
        "opencrm_timeout_seconds": 5.0,
        "crm_retry_base_seconds": 0.01,
        "crm_retry_max_seconds": 0.1,
        "crm_max_attempts": 100,
        "worker_sweep_seconds": 0.05,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@dataclass
class Ledger:
    """The changes the service made, per invoice, in order (what the CRM must end up with)."""

    engine: AsyncEngine
    changes: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    async def open(self, fake: FakeOpenCrm, numbers: list[str]) -> None:
        for number in numbers:
            await add_invoice(self.engine, number, status="Unpaid", gross="100.00")
            fake.add_invoice(number, status="Unpaid", outstanding="100.00")

    async def change(self, number: str, status: str, outstanding: str) -> None:
        """What reconciliation does: the invoice and its outbox row in one transaction."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE invoices SET status = :s, outstanding = :o WHERE invoice_number = :n"
                ),
                {"n": number, "s": status, "o": Decimal(outstanding)},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO outbox (invoice_number, payload, source) "
                    "VALUES (:n, CAST(:p AS jsonb), 'sync')"
                ),
                {"n": number, "p": json.dumps({"status": status, "outstanding": outstanding})},
            )
            await contracts.notify(conn, contracts.OUTBOX_CHANNEL)
        self.changes[number].append((status, outstanding))

    async def round(self, numbers: list[str], step: int) -> None:
        for number in numbers:
            await self.change(number, *CYCLE[step % len(CYCLE)])

    async def ours(self) -> dict[str, tuple[str, str]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT invoice_number, status, outstanding FROM invoices")
            )
            return {r.invoice_number: (r.status, f"{r.outstanding:.2f}") for r in rows}

    async def states(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.text("SELECT state, count(*) FROM outbox GROUP BY state"))
            return {r[0]: r[1] for r in rows}


async def wait_for(engine: AsyncEngine, condition: str, within: float = 30.0) -> None:
    """Poll until the SQL condition holds (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        async with engine.connect() as conn:
            if (await conn.execute(sa.text(f"SELECT {condition}"))).scalar():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {within}s: {condition}")
        await asyncio.sleep(0.05)


async def drained(engine: AsyncEngine, within: float = 30.0) -> None:
    await wait_for(engine, "NOT EXISTS (SELECT 1 FROM outbox WHERE state = 'pending')", within)


@asynccontextmanager
async def running_worker(
    settings: Settings, engine: AsyncEngine, database_url: str
) -> AsyncIterator[asyncio.Task[None]]:
    """The real worker loop with the CRM task, in this process; cancelled at the end."""
    async with httpx.AsyncClient() as http:
        ctx = WorkerContext(settings=settings, engine=engine, http=http)
        worker = Worker(
            [("crm_outbox", crm_tasks.dispatcher(ctx).run_once)],
            database_url=database_url,
            sweep_seconds=settings.worker_sweep_seconds,
        )
        task = asyncio.create_task(worker.run(), name="crm-test-worker")
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def crm_sequence(fake: FakeOpenCrm, number: str) -> list[tuple[str, str]]:
    """The states the CRM invoice went through, one per edit."""
    return [(e.status, e.outstanding) for e in fake.edits_for(number)]


def is_subsequence(seen: list[Any], ours: list[Any]) -> bool:
    it = iter(ours)
    return all(any(item == candidate for candidate in it) for item in seen)


def assert_crm_matches(fake: FakeOpenCrm, final: dict[str, tuple[str, str]]) -> None:
    for number, (status, outstanding) in final.items():
        record = fake.invoice(number)
        got = (record[fake_opencrm.STATUS_FIELD], record[fake_opencrm.OUTSTANDING_FIELD])
        assert got == (status, outstanding), number
    assert fake.created == []
    for edit in fake.edits:
        assert edit.fields
        assert all(value.strip() for value in edit.fields.values()), edit
    for call in fake.calls():
        assert call.credentials_ok
        assert call.user_agent.startswith("ledgerlink/")
