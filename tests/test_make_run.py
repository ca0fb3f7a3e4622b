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
    raise AssertionError("not ready within 60 s")


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
