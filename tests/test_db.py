"""The embedded PostgreSQL sizes itself to the machine, once, and names the server it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import psutil
import pytest

from service.db import EmbeddedPostgres, _settings_in_kb, _to_kb, embedded_settings, libpq_url

GIB = 2**30


@pytest.mark.parametrize(
    ("memory", "shared_buffers", "wal_buffers"),
    [
        (1 * GIB, "128MB", "16MB"),
        (8 * GIB, "1024MB", "64MB"),
        (64 * GIB, "2048MB", "64MB"),
    ],
)
def test_sizing_follows_memory_within_bounds(
    memory: int, shared_buffers: str, wal_buffers: str
) -> None:
    wanted = embedded_settings(memory)
    assert (wanted["shared_buffers"], wanted["wal_buffers"]) == (shared_buffers, wal_buffers)
    assert wanted["max_wal_size"] == "4096MB"


def test_settings_compare_in_the_units_postgresql_shows() -> None:
    shown = """
         name         | setting | unit
----------------------+---------+------
 checkpoint_timeout   | 900     | s
 shared_buffers       | 262144  | 8kB
 max_wal_size         | 4096    | MB
 work_mem             | 16384   | kB
 checkpoint_completion_target | 0.9 |
(5 rows)
"""
    values = _settings_in_kb(shown)
    assert values["shared_buffers"] == _to_kb("2048MB")
    assert values["max_wal_size"] == _to_kb("4096MB")
    assert values["work_mem"] == _to_kb("16MB")
    assert values["checkpoint_timeout"] == _to_kb("900s")
    assert values["checkpoint_completion_target"] == _to_kb("0.9")
    assert values["shared_buffers"] != _to_kb("128MB")


async def test_embedded_server_runs_sized_and_reports_its_postmaster(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path, cleanup="delete")
    url = await asyncio.to_thread(embedded.start)
    try:
        conn = await asyncpg.connect(libpq_url(url))
        try:
            shown = await conn.fetchval("SHOW shared_buffers")
            # Read while the connection is open: its backend exits when it closes.
            postmaster = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")).ppid()
        finally:
            await conn.close()
        wanted = embedded_settings(psutil.virtual_memory().total)["shared_buffers"]
        assert _to_kb(shown) == _to_kb(wanted)
        # The server restarted with that size is the one named, not the first one started.
        assert postmaster == embedded.postmaster_pid()
    finally:
        await asyncio.to_thread(embedded.stop)
