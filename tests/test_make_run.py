"""`make run` in a real process: embedded PostgreSQL, dev key, data kept, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil

from tests.support.processes import free_port


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEDGERLINK_")}
    env.update(
        {"LEDGERLINK_DATA_DIR": str(data_dir), "LEDGERLINK_PORT": str(port), "NO_COLOR": "1"}
    )
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_ready(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready within {timeout:g} s")


def _postgres_for(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and str(pgdata) in cmdline:
            found.append(proc)
    return found


def _stop(proc: subprocess.Popen[str], sig: int) -> str:
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    return output


def _sql(pgdata: Path, query: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(host=str(pgdata), user="postgres", database="ledgerlink")
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_make_run_starts_prints_key_keeps_data_and_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    pgdata = (data_dir / "pg").resolve()
    port = free_port()

    first = _start(data_dir, port)
    try:
        _wait_ready(port, first)
        key = (data_dir / "admin-api-key").read_text().strip()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        authorised = httpx.get(
            f"http://127.0.0.1:{port}/v1/picklists/invoice-status",
            headers={"Authorization": f"Bearer {key}"},
        )
        assert authorised.status_code != 401
        _sql(pgdata, "CREATE TABLE kept_between_runs (x int)")
    finally:
        output = _stop(first, signal.SIGINT)
    assert first.returncode == 0, output
    assert key in output
    assert "curl -H" in output
    assert f"API docs (Swagger UI):  http://127.0.0.1:{port}/docs" in output
    assert f"A demo company:         make demo URL=http://127.0.0.1:{port}" in output
    assert _postgres_for(pgdata) == [], "embedded PostgreSQL left running after Ctrl-C"

    second = _start(data_dir, port)
    try:
        _wait_ready(port, second)
        assert _sql(pgdata, "SELECT to_regclass('kept_between_runs') IS NOT NULL") is True
    finally:
        output = _stop(second, signal.SIGTERM)
    assert key not in output, "the key is printed once, when it is created"
    assert "Using the development admin API key" in output
    assert _postgres_for(pgdata) == [], "embedded PostgreSQL left running after SIGTERM"


def test_banner_names_the_docs_the_console_and_the_demo() -> None:
    from service.cli import _banner
    from service.main import create_app
    from service.settings import load_settings

    settings = load_settings(port=8000)
    banner = _banner(settings, create_app(settings))
    assert "http://127.0.0.1:8000/docs" in banner
    assert "Finance console:        http://127.0.0.1:8000/console/" in banner
    assert "A demo company:         make demo   " in banner
    hidden = load_settings(port=8019, docs_enabled=False)
    other = _banner(hidden, create_app(hidden))
    assert "/docs" not in other
    assert "make demo URL=http://127.0.0.1:8019" in other


def test_make_run_brings_a_killed_database_back_and_stops_it_once(tmp_path: Path) -> None:
    """kill -9 of the embedded postmaster, with a backend left running a statement (an
    orphan holding its shared memory): the service clears the orphan, starts PostgreSQL
    again and is ready without a restart of its own. Ctrl-C then stops PostgreSQL once,
    quietly."""
    data_dir = tmp_path / "data"
    pgdata = (data_dir / "pg").resolve()
    port = free_port()
    service = _start(data_dir, port)
    busy: subprocess.Popen[str] | None = None
    try:
        _wait_ready(port, service, timeout=180)
        # A backend busy in a statement never checks whether its postmaster is alive.
        busy = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import asyncio, asyncpg, sys\n"
                "async def main():\n"
                "    c = await asyncpg.connect(host=sys.argv[1], user='postgres', "
                "database='ledgerlink')\n"
                "    await c.fetchval('SELECT count(*) FROM generate_series(1, 10000000000)')\n"
                "asyncio.run(main())\n",
                str(pgdata),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        deadline = time.monotonic() + 30
        while len(_postgres_for_dir(pgdata)) < 2 or not _running_statement(pgdata):
            assert time.monotonic() < deadline, "the busy statement never started"
            time.sleep(0.2)
        os.kill(postmaster, signal.SIGKILL)
        orphans = [p for p in _postgres_for_dir(pgdata) if p.pid != postmaster]
        assert orphans, "no orphaned backend to clear"

        deadline = time.monotonic() + 60
        while True:
            assert service.poll() is None, "the service exited"
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except httpx.TransportError:
                ready = 0
            if ready == 200 and _postmaster_of(pgdata) not in (None, postmaster):
                break
            assert time.monotonic() < deadline, "PostgreSQL was not brought back"
            time.sleep(0.5)
        assert not any(p.is_running() for p in orphans)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait(10)
        output = _stop(service, signal.SIGINT)
    assert service.returncode == 0, output
    assert "database.embedded.restarted" in output
    for noise in ("PID file", "killing it instead", "Traceback"):
        assert noise not in output, output
    assert _postgres_for_dir(pgdata) == [], "embedded PostgreSQL left running after Ctrl-C"


def _postgres_for_dir(pgdata: Path) -> list[psutil.Process]:
    """Every server process of the data directory, the postmaster and its backends."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") != "postgres":
            continue
        try:
            if Path(proc.cwd()) == pgdata:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _running_statement(pgdata: Path) -> bool:
    return bool(
        _sql(
            pgdata,
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%generate_series%' "
            "AND state = 'active' AND pid <> pg_backend_pid()",
        )
    )


def _postmaster_of(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
