"""What every benchmark shares: the result record, the service started as `make run` starts it,
and small statistics helpers."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH_DATABASE_ENV = "LEDGERLINK_BENCH_DATABASE_URL"
BENCH_API_KEY = "bench-admin-key-0000000000000000"
BENCH_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"ledgerlink-bench-secret-0123456789").decode()
READY_TIMEOUT_SECONDS = 180.0


@dataclass
class BenchResult:
    """One figure beside its baseline. `met` is None when the figure has no target."""

    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    notes: str = ""
    # A point of a growth line (bench/chart.py): the line's name and its x (postings). Such a
    # result is also listed in the report's growth table.
    series: str = ""
    x: float | None = None
    # Anything else the chart draws (JSON values), e.g. RSS samples; not shown in the table.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline_value:
            self.ratio = self.value / self.baseline_value


@dataclass(frozen=True)
class Service:
    base_url: str
    database_url: str
    api_key: str
    webhook_secret: str
    pid: int
    log_path: Path
    # The embedded PostgreSQL's postmaster (None for LEDGERLINK_BENCH_DATABASE_URL).
    postmaster_pid: int | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ledgerlink_command() -> list[str]:
    script = Path(sys.executable).with_name("ledgerlink")
    if script.exists():
        return [str(script)]
    found = shutil.which("ledgerlink")
    if found:
        return [found]
    return [sys.executable, "-c", "from service.cli import main; main()"]


@contextlib.contextmanager
def database() -> Iterator[str]:
    """LEDGERLINK_BENCH_DATABASE_URL when set, else an embedded PostgreSQL in a temporary
    directory (the same wheel and defaults `make run` uses), gone afterwards."""
    with _database() as (url, _postmaster_pid):
        yield url


@contextlib.contextmanager
def _database() -> Iterator[tuple[str, int | None]]:
    """database(), with the postmaster's pid when the server is ours."""
    url = os.environ.get(BENCH_DATABASE_ENV)
    if url:
        yield url, None
        return
    from service.embedded import throwaway_postgres

    with throwaway_postgres("ledgerlink-bench-pg-") as server:
        yield server.database_url, server.postmaster_pid()


@contextlib.contextmanager
def serving(
    command: list[str], env: dict[str, str], log_path: Path, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Any HTTP app started as a subprocess of ours (its own session), until `ready_url`
    answers 200; stopped as the service is (SIGINT, then SIGKILL) on the way out."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(ready_url, process, log_path)
        yield process
    except Exception:
        # What the server said is often the only clue to a 500: show its last lines.
        tail = log_path.read_text(errors="replace")[-4000:]
        print(f"--- last lines of {command[-2:]}'s log:\n{tail}", file=sys.stderr, flush=True)
        raise
    finally:
        _stop(process)


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (not its children)."""
    import psutil

    rss: int = psutil.Process(pid).memory_info().rss
    return rss


@contextlib.contextmanager
def running_service(*, extra_env: dict[str, str] | None = None) -> Iterator[Service]:
    """`ledgerlink serve --dev` (what `make run` runs: migrate, serve, worker in process) on a
    free port, with bench credentials, until /readyz answers 200.

    The database is the harness's own (see `database()`), handed over as
    LEDGERLINK_DATABASE_URL, so a baseline can write to the very same server.
    """
    with (
        _database() as (database_url, postmaster_pid),
        tempfile.TemporaryDirectory(prefix="ledgerlink-bench-") as tmp,
    ):
        port = free_port()
        env = {
            **os.environ,
            "LEDGERLINK_DATA_DIR": tmp,
            "LEDGERLINK_DATABASE_URL": database_url,
            "LEDGERLINK_HOST": "127.0.0.1",
            "LEDGERLINK_PORT": str(port),
            "LEDGERLINK_API_KEYS": json.dumps({BENCH_API_KEY: ["admin"]}),
            "LEDGERLINK_WEBHOOK_SECRETS": BENCH_WEBHOOK_SECRET,
            "LEDGERLINK_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        log_path = Path(tmp) / "service.log"
        command = [*_ledgerlink_command(), "serve", "--dev"]
        with serving(command, env, log_path, f"http://127.0.0.1:{port}/readyz") as process:
            yield Service(
                base_url=f"http://127.0.0.1:{port}",
                database_url=database_url,
                api_key=BENCH_API_KEY,
                webhook_secret=BENCH_WEBHOOK_SECRET,
                pid=process.pid,
                log_path=log_path,
                postmaster_pid=postmaster_pid,
            )


def _wait_ready(ready_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the service exited with {process.returncode} before it was ready:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the service was not ready within {READY_TIMEOUT_SECONDS:.0f}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The service we started, by its id: SIGINT (as Ctrl-C after `make run`), then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def run_script(conn: asyncpg.Connection, script: str, *args: Any) -> None:
    """Statements separated by blank lines, each given the positional arguments it uses."""
    for statement in script.split(";\n\n"):
        used = max((n for n in range(1, len(args) + 1) if f"${n}" in statement), default=0)
        await conn.execute(statement, *args[:used])


# $1 customer invoices (SI n, 120.00, reference INVnnnnnnn), already reconciled and unpaid:
# what paying_receipt(n) pays in full.
PRELOAD_UNPAID_SQL = """
INSERT INTO postings (tran_number, type, account_ref, reference, date, details, nominal_code,
                      net_amount, tax_amount, gross_amount, content_hash, event_id)
SELECT n, 'SI', 'CUST' || lpad((n % 2000)::text, 4, '0'), 'INV' || lpad(n::text, 7, '0'),
       DATE '2026-01-05', 'Consulting services', '4000', 120, 0, 120, '\\x'::bytea, 'bench'
FROM generate_series(1, $1::int) AS n;

INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date, gross,
                      gross_base, status, derived_state, outstanding, outstanding_base,
                      computed_outstanding, computed_outstanding_base)
SELECT reference, account_ref, tran_number, date, gross_amount, gross_amount, 'Unpaid',
       'unpaid', gross_amount, gross_amount, gross_amount, gross_amount
FROM postings WHERE type = 'SI';

VACUUM ANALYZE
"""


def paying_receipt(n: int) -> dict[str, Any]:
    """A receipt paying invoice SI `n` (120.00) in full: one posting, one allocation."""
    return {
        "tran_number": 50_000_000 + n,
        "type": "SR",
        "account_ref": f"CUST{n % 2000:04d}",
        "reference": f"BACS{n:08d}",
        "date": "2026-02-01",
        "details": "Sales Receipt",
        "nominal_code": "1200",
        "net_amount": "120.00",
        "tax_amount": "0.00",
        "gross_amount": "120.00",
        "allocations": [{"invoice_tran_number": n, "amount": "120.00"}],
    }


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def server_cpu_seconds(postmaster_pid: int | None) -> float:
    """CPU seconds used so far by our PostgreSQL server and its backends (0 for a server
    named by LEDGERLINK_BENCH_DATABASE_URL, which is not ours to measure). Backends that ended
    in between are not counted: measure with long-lived connections."""
    import psutil

    if not postmaster_pid:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(postmaster_pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


@dataclass
class Timer:
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class CpuMeter:
    """CPU used during a measurement: by the benchmark's own processes (this one, the service,
    our PostgreSQL) and by everything else on the machine, which the figures cannot exclude.

    `by_role` splits ours into "load generator" (this process and helpers), "service" and
    "PostgreSQL". CPU-seconds per unit of work hardly depend on what else runs on the machine,
    unlike the rate: they are what to compare between runs on a shared box.
    """

    ROLES = ("load generator", "service", "PostgreSQL")

    def __init__(self, service: Service) -> None:
        self._service = service
        self._start: tuple[float, float, dict[str, float]] | None = None
        self.ours = 0.0
        self.others = 0.0
        self.capacity = 0.0
        self.seconds = 0.0
        self.by_role: dict[str, float] = dict.fromkeys(self.ROLES, 0.0)

    def _ours_now(self) -> dict[str, float]:
        import psutil

        roots = [
            ("load generator", os.getpid()),
            ("service", self._service.pid),
            ("PostgreSQL", self._service.postmaster_pid),
        ]
        role_of: dict[int, str] = {}
        processes: dict[int, psutil.Process] = {}
        for role, root in roots:
            if not root:
                continue
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(root)
                for proc in [parent, *parent.children(recursive=True)]:
                    # The service is also this process's child: the later, narrower root wins.
                    processes[proc.pid] = proc
                    role_of[proc.pid] = role
        totals = dict.fromkeys(self.ROLES, 0.0)
        for pid, proc in processes.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                totals[role_of[pid]] += times.user + times.system
        return totals

    @staticmethod
    def _machine_now() -> tuple[float, float]:
        import psutil

        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0), time.monotonic()

    def __enter__(self) -> CpuMeter:
        busy, now = self._machine_now()
        self._start = (busy, now, self._ours_now())
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._start is not None
        busy0, t0, ours0 = self._start
        busy1, t1 = self._machine_now()
        ours1 = self._ours_now()
        # Processes that ended during the run (pool connections) are not counted as ours.
        self.by_role = {role: max(0.0, ours1[role] - ours0[role]) for role in self.ROLES}
        self.ours = sum(self.by_role.values())
        self.others = max(0.0, (busy1 - busy0) - self.ours)
        self.seconds = t1 - t0
        self.capacity = self.seconds * (os.cpu_count() or 1)

    def describe(self) -> str:
        if not self.capacity:
            return ""
        return (
            f"CPU during the run: benchmark + service + PostgreSQL "
            f"{self.ours / self.capacity:.0%}, other processes on the machine "
            f"{self.others / self.capacity:.0%}"
        )

    def per_unit(self, units: int, unit: str = "posting") -> str:
        """CPU microseconds per unit of work, by role, and the rate that cost allows on this
        machine's cores if nothing else ran."""
        if not units or not self.ours:
            return ""
        parts = ", ".join(f"{role} {self.by_role[role] / units * 1e6:.1f}" for role in self.ROLES)
        cores = os.cpu_count() or 1
        return (
            f"CPU per {unit}: {self.ours / units * 1e6:.1f} us ({parts}); at that cost "
            f"{cores} cores with nothing else running could do at most "
            f"{units * cores / self.ours:,.0f}/s"
        )
