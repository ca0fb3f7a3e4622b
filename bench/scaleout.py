"""Scale-out benchmark (issue 17): more API and worker processes against one PostgreSQL.

The production shape (docs/OPERATIONS.md, "Scaling"): API processes (`ledgerlink serve
--no-worker`) and worker processes (`ledgerlink worker`) against one database. Each phase
starts a fresh embedded PostgreSQL (or uses LEDGERLINK_BENCH_DATABASE_URL), loads the
invoices in SQL, starts its processes, and pushes signed batches of receipts, each paying one
invoice in full, spread round-robin over the API processes. The figure is end to end: from
the first batch sent until every invoice reads Paid and every CRM message (local mode) is
delivered. Phases: 1 API + 1 worker (the baseline), then 2 APIs + 2 workers.

Afterwards the database is asked whether anything was skipped or done twice: every invoice
Paid, exactly one sync status_history row and one delivered outbox row per invoice. Each
worker's own /metrics says how many status changes it wrote, to show both took work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson
import psutil

from bench.common import (
    BENCH_API_KEY,
    BENCH_WEBHOOK_SECRET,
    PRELOAD_UNPAID_SQL,
    BenchResult,
    Timer,
    _database,
    _ledgerlink_command,
    free_port,
    paying_receipt,
    run_script,
    serving,
)
from service.db import libpq_url
from service.migrate import upgrade_to_head
from tests.support.webhooks import signed_request

WEBHOOK_PATH = "/v1/webhooks/sage/postings"
BATCH = 500
CONCURRENCY = 8


@dataclass(frozen=True)
class Size:
    receipts: int


FULL = Size(receipts=200_000)
QUICK = Size(receipts=20_000)

VERIFY_SQL = """
SELECT
  (SELECT count(*) FROM invoices WHERE status = 'Paid') AS paid,
  (SELECT count(*) FROM status_history WHERE source = 'sync') AS history,
  (SELECT count(DISTINCT invoice_number) FROM status_history WHERE source = 'sync')
      AS history_invoices,
  (SELECT count(*) FROM outbox) AS outbox,
  (SELECT count(DISTINCT invoice_number) FROM outbox) AS outbox_invoices,
  (SELECT count(*) FROM outbox WHERE state = 'delivered' AND attempts = 1) AS delivered_once,
  (SELECT count(*) FROM postings WHERE type = 'SR') AS receipts
"""


@dataclass
class Phase:
    apis: int
    workers: int
    receipts: int
    seconds: float = 0.0
    push_seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    others: float = 0.0
    per_worker: list[float] = field(default_factory=list)
    verified: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.receipts / self.seconds

    @property
    def label(self) -> str:
        return f"{self.apis} API + {self.workers} worker process{'es' if self.workers > 1 else ''}"

    def cost(self) -> str:
        ours = sum(self.cpu.values())
        parts = ", ".join(f"{k} {v / self.receipts * 1e6:.1f}" for k, v in self.cpu.items())
        cores = os.cpu_count() or 1
        return (
            f"CPU per posting {ours / self.receipts * 1e6:.1f} us ({parts}); other processes "
            f"on the machine {self.others / self.seconds / cores:.0%} of it; at that cost "
            f"{cores} idle cores could do at most {self.receipts * cores / ours:,.0f}/s"
        )


def _env(database_url: str, data_dir: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "LEDGERLINK_DATA_DIR": data_dir,
        "LEDGERLINK_DATABASE_URL": database_url,
        "LEDGERLINK_HOST": "127.0.0.1",
        "LEDGERLINK_API_KEYS": json.dumps({BENCH_API_KEY: ["admin"]}),
        "LEDGERLINK_WEBHOOK_SECRETS": BENCH_WEBHOOK_SECRET,
        "LEDGERLINK_LOG_LEVEL": "WARNING",
        "LEDGERLINK_CRM_MODE": "local",
        **extra,
    }


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path, ready_url: str) -> Iterator[int]:
    """A ledgerlink process of ours, until `ready_url` answers 200; stopped on the way out."""
    with serving([*_ledgerlink_command(), *args], env, log, ready_url) as process:
        yield process.pid


def _cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each role's processes and their children. The services are
    children of this process too: a later, narrower root wins (as in bench.common.CpuMeter)."""
    role_of: dict[int, str] = {}
    processes: dict[int, psutil.Process] = {}
    for role, pids in roots.items():
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(pid)
                for proc in [parent, *parent.children(recursive=True)]:
                    processes[proc.pid] = proc
                    role_of[proc.pid] = role
    totals = dict.fromkeys(roots, 0.0)
    for pid, proc in processes.items():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            totals[role_of[pid]] += times.user + times.system
    return totals


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


async def _push(bases: list[str], bodies: list[bytes]) -> None:
    queue = iter(enumerate(bodies))
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    clients = [httpx.AsyncClient(base_url=b, limits=limits, timeout=120) for b in bases]
    try:

        async def sender() -> None:
            for index, body in queue:
                _, headers = signed_request(
                    body, secret=BENCH_WEBHOOK_SECRET, webhook_id=f"bench-scaleout-{run}-{index}"
                )
                client = clients[index % len(clients)]
                response = await client.post(WEBHOOK_PATH, content=body, headers=headers)
                if response.status_code != 202:
                    raise RuntimeError(f"batch {index}: {response.status_code} {response.text}")

        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    finally:
        for client in clients:
            await client.aclose()


async def _status_changes(metrics_url: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(metrics_url)).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ledgerlink_status_changes_total{") and 'source="sync"' in line
    )


async def _phase(apis: int, workers: int, size: Size, bodies: list[bytes]) -> Phase:
    phase = Phase(apis=apis, workers=workers, receipts=size.receipts)
    with (
        _database() as (url, postmaster_pid),
        tempfile.TemporaryDirectory(prefix="ledgerlink-scaleout-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        await asyncio.to_thread(upgrade_to_head, url)
        conn = await asyncpg.connect(libpq_url(url))
        try:
            await run_script(conn, PRELOAD_UNPAID_SQL, size.receipts)
            api_pids, api_urls, worker_pids, worker_metrics = [], [], [], []
            for n in range(apis):
                port = free_port()
                env = _env(url, tmp, LEDGERLINK_PORT=str(port))
                base = f"http://127.0.0.1:{port}"
                api_pids.append(
                    stack.enter_context(
                        _process(
                            ["serve", "--no-worker"],
                            env,
                            Path(tmp) / f"api{n}.log",
                            base + "/readyz",
                        )
                    )
                )
                api_urls.append(base)
            for n in range(workers):
                port = free_port()
                env = _env(url, tmp, LEDGERLINK_WORKER_METRICS_PORT=str(port))
                metrics = f"http://127.0.0.1:{port}"
                worker_pids.append(
                    stack.enter_context(
                        _process(
                            ["worker"], env, Path(tmp) / f"worker{n}.log", metrics + "/healthz"
                        )
                    )
                )
                worker_metrics.append(metrics + "/metrics")
            roots = {
                "load generator": [os.getpid()],
                "API": api_pids,
                "worker": worker_pids,
                "PostgreSQL": [postmaster_pid] if postmaster_pid else [],
            }
            cpu0, busy0 = _cpu(roots), _machine_busy()
            timer = Timer()
            await _push(api_urls, bodies)
            phase.push_seconds = timer.elapsed
            # Every 202 committed its invoices as dirty: done when none is dirty and no CRM
            # message is pending (the queue and a partial index, so polling costs little).
            while True:
                busy = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM dirty_invoices) "
                    "OR EXISTS (SELECT 1 FROM outbox WHERE state = 'pending')"
                )
                if not busy:
                    break
                if timer.elapsed > 600:
                    raise RuntimeError("the workers did not finish within 10 minutes")
                await asyncio.sleep(0.02)
            phase.seconds = timer.elapsed
            cpu1, busy1 = _cpu(roots), _machine_busy()
            phase.cpu = {role: cpu1[role] - cpu0[role] for role in roots}
            phase.others = max(0.0, (busy1 - busy0) - sum(phase.cpu.values()))
            phase.per_worker = [await _status_changes(m) for m in worker_metrics]
            row = await conn.fetchrow(VERIFY_SQL)
            assert row is not None
            phase.verified = dict(row)
        finally:
            await conn.close()
    expected = size.receipts
    if any(value != expected for value in phase.verified.values()):
        raise RuntimeError(f"{phase.label}: skipped or repeated work: {phase.verified}")
    return phase


async def _run(size: Size) -> list[BenchResult]:
    receipts = [paying_receipt(n) for n in range(1, size.receipts + 1)]
    bodies = [
        orjson.dumps({"source": "bench", "postings": receipts[i : i + BATCH]})
        for i in range(0, len(receipts), BATCH)
    ]
    one = await _phase(1, 1, size, bodies)
    print(f"  {one.label}: {one.rate:,.0f}/s; {one.cost()}", flush=True)
    two = await _phase(2, 2, size, bodies)
    print(f"  {two.label}: {two.rate:,.0f}/s; {two.cost()}", flush=True)
    shares = ", ".join(f"{changes:,.0f}" for changes in two.per_worker)
    checked = (
        f"checked in the database after each phase: all {size.receipts:,} invoices Paid, one "
        "sync status_history row and one outbox row delivered at the first attempt per invoice"
    )
    return [
        BenchResult(
            name=f"scale-out: postings/s end to end (HTTP -> status -> CRM outbox), "
            f"{two.label}, {size.receipts:,} receipts",
            value=two.rate,
            unit="postings/s",
            baseline_name=one.label,
            baseline_value=one.rate,
            notes=f"{checked}; status changes written per worker: {shares}; "
            f"push {two.push_seconds:.1f}s, all reconciled and delivered {two.seconds:.1f}s; "
            f"{two.cost()}; baseline: push {one.push_seconds:.1f}s, done {one.seconds:.1f}s, "
            f"{one.cost()}",
        )
    ]


def run(quick: bool) -> list[BenchResult]:
    return asyncio.run(_run(QUICK if quick else FULL))
