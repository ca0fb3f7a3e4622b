"""The exporter's command against a real `ledgerlink serve` (a separate process on PostgreSQL,
configured as production is): the service's own answers acknowledge (new batches, and the
stored answers to replayed ones), a company of thousands of rows streams through in many
batches and arrives whole, and a modify date in the future hides no later posting."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.exporter import write_company
from tests.exporter.sage_files import altered, saved_state
from tests.exporter.test_push import dated_2030, with_new_invoice
from tests.support.processes import LedgerlinkProcess
from tests.support.webhooks import TEST_SECRET

STAMP_LENGTH = len("2026-11-29T09:15:00+00:00 ")


def lines(text: str) -> list[str]:
    return [line[STAMP_LENGTH:] for line in text.splitlines()]


async def push(url: str, *args: str, files: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    """`ledgerlink-exporter push`, a process of its own, as on the Sage PC."""
    command = [sys.executable, "-m", "ledgerlink_exporter", "push", "--url", url, *args]
    return await asyncio.to_thread(
        subprocess.run,
        [*command, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"LEDGERLINK_EXPORTER_SECRET": TEST_SECRET, "PATH": ""},
    )


async def stored(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT tran_number FROM postings ORDER BY 1"))
        return list(rows.scalars())


async def test_a_company_streams_into_the_service_and_is_acknowledged_by_it(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    files = write_company(tmp_path / "company", 2_000)
    state = tmp_path / "state.json"
    with LedgerlinkProcess(database_url) as service:
        first = await push(
            service.base_url, "--state", str(state), "--batch-size", "150", files=files
        )
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Sent: 1900 postings in 13 batches (1900 applied, 0 unchanged;" in first.stdout
        pushed = await stored(engine)
        assert len(pushed) == 1900
        assert sorted(saved_state(state).acknowledged) == pushed

        # Without the state file the same batches go again: the service returns its stored
        # answers (200), and they acknowledge too.
        replay = await push(service.base_url, "--batch-size", "150", files=files)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "Replayed: 13 batches (1900 postings) the server already had" in lines(replay.stdout)

        again = await push(
            service.base_url, "--state", str(state), "--batch-size", "150", files=files
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Sent: 0 postings in 0 batches" in again.stdout
    assert await stored(engine) == pushed


async def test_a_row_modified_in_2030_hides_no_later_posting_from_the_service(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    with LedgerlinkProcess(database_url) as service:
        first = await push(
            service.base_url, "--state", str(state), files=altered(before, dated_2030)
        )
        assert first.returncode == 0, first.stdout + first.stderr
        assert "a posting modified in the future, the latest transaction 1 on 2030-06-01" in (
            first.stderr
        )
        mark = saved_state(state).high_water
        assert mark is not None
        assert mark <= dt.datetime.now()
        assert 100 not in await stored(engine)

        later = altered(after, with_new_invoice)
        second = await push(service.base_url, "--state", str(state), files=later)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "Sent: 1 posting in 1 batch (1 applied, 0 unchanged;" in second.stdout
    assert 100 in await stored(engine)
