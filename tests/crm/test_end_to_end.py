"""End to end: a running worker pushes to a fake OpenCRM on a real port, and survives a kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.crm.e2e import (
    CYCLE,
    Ledger,
    assert_crm_matches,
    crm_sequence,
    crm_settings,
    drained,
    is_subsequence,
    running_worker,
    wait_for,
)
from tests.support import fake_opencrm
from tests.support.fake_opencrm import FakeOpenCrm

NUMBERS = [f"INV-{i:03d}" for i in range(12)]


async def wait_for_dropped(fake: FakeOpenCrm) -> None:
    """The held edit was lost with the killed sender (the fake notices the hang-up)."""
    for _ in range(200):
        if fake.dropped:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the held edit was not dropped")


async def test_every_change_arrives_in_order_across_a_kill_mid_delivery(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm
) -> None:
    settings = crm_settings(database_url, fake_crm)
    ledger = Ledger(engine)
    await ledger.open(fake_crm, NUMBERS)

    async with running_worker(settings, engine, database_url):
        await ledger.round(NUMBERS, 0)
        await drained(engine)

    hold = fake_crm.hold_next_edit()
    async with running_worker(settings, engine, database_url) as worker:
        await ledger.round(NUMBERS, 1)
        assert await asyncio.to_thread(hold.reached.wait, 30), "no edit reached the CRM"
        worker.cancel()  # killed while OpenCRM is still answering
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    hold.release.set()
    await wait_for_dropped(fake_crm)
    # The batch it held is still pending: nothing was recorded as delivered.
    assert (await ledger.states()).get("pending", 0) >= 1

    async with running_worker(settings, engine, database_url):
        await drained(engine)
        for step in (2, 3, 4):
            await ledger.round(NUMBERS, step)
            await drained(engine)

    states = await ledger.states()
    assert set(states) == {"delivered"}, states
    for number in NUMBERS:
        # Each change reached the CRM exactly as decided, in order, none twice.
        assert crm_sequence(fake_crm, number) == ledger.changes[number], number
    assert_crm_matches(fake_crm, await ledger.ours())


async def test_bursts_coalesce_but_keep_order_and_the_final_state(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm
) -> None:
    settings = crm_settings(database_url, fake_crm)
    ledger = Ledger(engine)
    await ledger.open(fake_crm, NUMBERS[:4])
    async with running_worker(settings, engine, database_url):
        for step in range(9):
            await ledger.round(NUMBERS[:4], step)
        await drained(engine)
    states = await ledger.states()
    assert set(states) <= {"delivered", "superseded"}, states
    for number in NUMBERS[:4]:
        seen = crm_sequence(fake_crm, number)
        assert seen, number
        assert is_subsequence(seen, ledger.changes[number]), (seen, ledger.changes[number])
    assert_crm_matches(fake_crm, await ledger.ours())


async def test_two_workers_share_the_outbox_without_reordering(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm
) -> None:
    settings = crm_settings(database_url, fake_crm)
    ledger = Ledger(engine)
    await ledger.open(fake_crm, NUMBERS)
    async with (
        running_worker(settings, engine, database_url),
        running_worker(settings, engine, database_url),
    ):
        for step in range(6):
            await ledger.round(NUMBERS, step)
        await drained(engine)
    for number in NUMBERS:
        seen = crm_sequence(fake_crm, number)
        assert is_subsequence(seen, ledger.changes[number]), (seen, ledger.changes[number])
    assert_crm_matches(fake_crm, await ledger.ours())


@pytest.mark.faults
async def test_a_worker_process_killed_with_sigkill_loses_nothing(
    engine: AsyncEngine, database_url: str, fake_crm: FakeOpenCrm, tmp_path: Path
) -> None:
    """`ledgerlink worker` (every task) as a real process, SIGKILLed mid-edit: its leases run
    out (10 s here) and the next worker delivers everything."""
    ledger = Ledger(engine)
    await ledger.open(fake_crm, NUMBERS)
    env = {
        **os.environ,
        "LEDGERLINK_DATABASE_URL": database_url,
        "LEDGERLINK_CRM_MODE": "opencrm",
        "LEDGERLINK_OPENCRM_BASE_URL": fake_crm.base_url,
        "LEDGERLINK_OPENCRM_KEY": fake_opencrm.KEY,
        "LEDGERLINK_OPENCRM_PASSKEY": fake_opencrm.PASSKEY,
        "LEDGERLINK_OPENCRM_OUTSTANDING_FIELD": fake_opencrm.OUTSTANDING_FIELD,
        "LEDGERLINK_CRM_RETRY_BASE_SECONDS": "0.01",
        "LEDGERLINK_CRM_RETRY_MAX_SECONDS": "0.1",
        "LEDGERLINK_OPENCRM_TIMEOUT_SECONDS": "5",
        "LEDGERLINK_CRM_LEASE_SECONDS": "10",
        "LEDGERLINK_WORKER_SWEEP_SECONDS": "0.1",
        "LEDGERLINK_LOG_LEVEL": "WARNING",
    }

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / "worker.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"], env=env, stdout=log, stderr=log
        )

    hold = fake_crm.hold_next_edit()
    process = start()
    try:
        await ledger.round(NUMBERS, 0)
        assert await asyncio.to_thread(hold.reached.wait, 60), (tmp_path / "worker.log").read_text()
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
    finally:
        hold.release.set()
        if process.poll() is None:
            process.kill()
    await wait_for_dropped(fake_crm)
    await wait_for(engine, "EXISTS (SELECT 1 FROM outbox WHERE state = 'pending')")
    await ledger.round(NUMBERS, 1)

    process = start()
    try:
        await drained(engine, within=60)
        await ledger.round(NUMBERS, 2)
        await drained(engine, within=60)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    assert set(await ledger.states()) <= {"delivered", "superseded"}
    for number in NUMBERS:
        seen = crm_sequence(fake_crm, number)
        assert is_subsequence(seen, ledger.changes[number]), (seen, ledger.changes[number])
        assert seen[-1] == CYCLE[2]
    assert_crm_matches(fake_crm, await ledger.ours())
