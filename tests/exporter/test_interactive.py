"""What a person at a terminal sees: Ctrl-C during a push or the demo is one line and no
traceback; the demo pointed at nothing says where it looked and how to point it elsewhere, at
once; `make demo` goes where `make run` serves (LEDGERLINK_PORT) or where URL= says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.exporter.sage_files import FILES
from tests.exporter.stand_in import Answer, StandIn, serving
from tests.support.processes import free_port
from tests.support.webhooks import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
EXPORTER = [sys.executable, "-m", "ledgerlink_exporter"]


def exporter_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERLINK_")}
    env["LEDGERLINK_EXPORTER_SECRET"] = TEST_SECRET
    return env


def interrupt_once_sent(args: list[str], server: StandIn) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        [*EXPORTER, *args],
        env=exporter_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not server.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.received, "the exporter never sent anything"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("command", ["push", "demo"])
def test_ctrl_c_is_one_line_and_no_traceback(command: str, tmp_path: Path) -> None:
    with serving(StandIn([], then=Answer(delay=20))) as server:
        if command == "push":
            args = ["push", "--url", server.url, *map(str, FILES)]
        else:
            args = ["demo", "--url", server.url, "--api-key", "k", "--out", str(tmp_path)]
        result = interrupt_once_sent(args, server)
    assert result.returncode == 130, result.stderr
    [line] = result.stderr.splitlines()
    assert " error: interrupted" in line
    assert "Traceback" not in result.stdout + result.stderr


def test_the_demo_against_nothing_says_where_it_looked_at_once(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [*EXPORTER, "demo", "--url", url, "--api-key", "k", "--out", str(tmp_path)],
        env=exporter_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert f"cannot connect to {url} (" in line
    assert "--url or LEDGERLINK_URL (make demo URL=...)" in line
    assert elapsed < 5, f"took {elapsed:.1f} s"


def make_demo_command(*args: str, **env: str) -> str:
    result = subprocess.run(
        ["make", "-n", "demo", *args],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LEDGERLINK_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [line] = [line for line in result.stdout.splitlines() if "ledgerlink-exporter demo" in line]
    return line


def test_make_demo_follows_make_run_and_url() -> None:
    assert make_demo_command().endswith("--url http://127.0.0.1:8000")
    assert make_demo_command(LEDGERLINK_PORT="8123").endswith("--url http://127.0.0.1:8123")
    assert make_demo_command("URL=http://sage-box:9000").endswith("--url http://sage-box:9000")
