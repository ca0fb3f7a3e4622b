"""The embedded PostgreSQL sizes itself to the machine, once, and names the server it runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
import pytest

from service.db import libpq_url
from service.embedded import EmbeddedPostgres, _settings_in_kb, _to_kb, embedded_settings

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


# Run as its own process, which adopts the orphaned postmasters (a child subreaper) and reaps
# the one start() replaced (the restart that sizes it) as soon as it exits, as init does on an
# ordinary machine. Prints the running postmaster's PID, then whether it still ran when a
# directory of the throwaway server was deleted.
_DELETED_UNDER_A_RUNNING_SERVER = """
import ctypes, os, shutil, psutil
from service.embedded import throwaway_postgres

PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

def running(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

still_running = []
remove = shutil.rmtree

def rmtree(path, *args, **kwargs):
    still_running.append(running(pid))
    remove(path, *args, **kwargs)

shutil.rmtree = rmtree
with throwaway_postgres("ledgerlink-test-") as server:
    pid = server.postmaster_pid()
    for child in psutil.Process().children():
        if child.pid != pid:
            os.waitpid(child.pid, 0)
print(pid, any(still_running))
if running(pid):
    psutil.Process(pid).kill()
"""


def test_a_throwaway_server_is_stopped_before_its_directory_goes() -> None:
    """A full test run left the session database's server running after pytest exited, its
    temporary directory deleted: the wheel's clean-up stops only the postmaster it started
    itself, which start() had replaced."""
    result = subprocess.run(
        [sys.executable, "-c", _DELETED_UNDER_A_RUNNING_SERVER],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pid, running = result.stdout.split()
    assert running == "False", f"the directory of postgres {pid} was deleted while it ran"
