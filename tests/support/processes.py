"""Real processes for the fault tests: a PostgreSQL the test may stop and start, and the
service or a worker as `ledgerlink` subprocesses, configured like production."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import TracebackType

import httpx

from service.embedded import throwaway_postgres
from tests.support.webhooks import TEST_SECRET

FAULT_KEY = "fault-admin-key-0000000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThrowawayPostgres:
    """An embedded PostgreSQL in a temporary directory that a test may crash and restart."""

    def __init__(self) -> None:
        self._scope = contextlib.ExitStack()
        self.url = ""

    def __enter__(self) -> ThrowawayPostgres:
        self.embedded = self._scope.enter_context(throwaway_postgres("ledgerlink-fault-"))
        self.url = self.embedded.database_url
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scope.close()

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash as far as clients are concerned: connections just drop."""
        self.embedded.pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        # restart re-uses the options the server was first started with (postmaster.opts).
        self.embedded.pg_ctl("-w", "restart")


class LedgerlinkProcess:
    """`ledgerlink serve` or `ledgerlink worker` against a given database."""

    def __init__(self, database_url: str, *, command: str = "serve", **settings: str) -> None:
        self.port = free_port()
        self.command = command
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERLINK_")}
        env.update(
            {
                "LEDGERLINK_DATABASE_URL": database_url,
                "LEDGERLINK_PORT": str(self.port),
                "LEDGERLINK_API_KEYS": json.dumps({FAULT_KEY: ["admin"]}),
                "LEDGERLINK_WEBHOOK_SECRETS": TEST_SECRET,
                "LEDGERLINK_LOG_FORMAT": "json",
                "LEDGERLINK_WORKER_SWEEP_SECONDS": "0.5",
                # Several workers may run at once: each gets its own metrics port.
                "LEDGERLINK_WORKER_METRICS_PORT": str(free_port()),
            }
        )
        env.update({f"LEDGERLINK_{k.upper()}": v for k, v in settings.items()})
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""
        self._lines: list[str] = []
        self._reader = threading.Thread()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where `ledgerlink worker` serves /metrics and /healthz."""
        return f"http://127.0.0.1:{self.env['LEDGERLINK_WORKER_METRICS_PORT']}"

    def start(self, *extra: str) -> LedgerlinkProcess:
        # A second start would orphan the first process (`with p.start():` starts it twice).
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._lines = []
        args = [sys.executable, "-m", "service.cli", self.command, *extra]
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        stream = self.proc.stdout
        assert stream is not None
        # Read the output as it comes: a service whose pipe (64 KiB) fills up blocks on its
        # next log line, and every request with it.
        self._reader = threading.Thread(
            target=lambda: self._lines.extend(stream), name="ledgerlink-output", daemon=True
        )
        self._reader.start()
        if self.command == "serve":
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.wait(10)
                raise AssertionError(f"service exited: {self.output[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"service not ready in time: {self.log[-3000:]}")

    @property
    def log(self) -> str:
        """What it has printed so far."""
        return "".join(list(self._lines))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self.output = "".join(self._lines)
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.wait(10)

    def __enter__(self) -> LedgerlinkProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
