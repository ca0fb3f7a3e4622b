"""CRM outbox drain benchmark (issue 17).

100,000 pending outbox messages (one per invoice, as one reconcile of 100,000 invoices leaves
them), drained by the real dispatcher (service.crm.dispatcher.Dispatcher: claim the oldest due
message per invoice under an advisory lock, deliver, record, in one transaction per batch) with
the local connector (`LEDGERLINK_CRM_MODE=local`: every change counts as delivered, so the
figure is ledgerlink's own cost, not a CRM's). Beside it, on the same rows in the same run, the
least a queue on PostgreSQL must do: one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED
LIMIT n)` per batch, n being the dispatcher's own batch size in local mode (1,000). Target:
>= 20,000 messages/s. Median of 3 (1 in quick mode, 20,000 messages). Counted from the database
afterwards: every message delivered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import psutil

from bench.common import BenchResult, Timer, _database, run_script
from service.crm.tasks import build_dispatcher
from service.crm.vendors import LOCAL_BATCH_CAP
from service.db import create_engine, libpq_url
from service.logging import configure_logging
from service.migrate import upgrade_to_head
from service.settings import load_settings

TARGET = 20_000
# The local connector's batch with the default LEDGERLINK_WORKER_BATCH_SIZE (2,000).
BATCH = LOCAL_BATCH_CAP


@dataclass(frozen=True)
class Size:
    messages: int
    repeats: int


FULL = Size(messages=100_000, repeats=3)
QUICK = Size(messages=20_000, repeats=1)

_SEED = """
INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date, gross,
                      outstanding, paid, status, derived_state)
SELECT 'OB' || lpad(g::text, 7, '0'), 'CUST' || (g % 100), g, DATE '2026-01-15', 120.00, 0.00,
       120.00, 'Paid', 'paid'
FROM generate_series(1, $1::int) AS g;

INSERT INTO outbox (invoice_number, source, payload)
SELECT 'OB' || lpad(g::text, 7, '0'), 'sync',
       jsonb_build_object('status', 'Paid', 'outstanding', '0.00', 'history_id', g)
FROM generate_series(1, $1::int) AS g
"""

_RESET = """
UPDATE outbox SET state = 'pending', attempts = 0, delivered_at = NULL, last_error = NULL,
                  next_attempt_at = now() - interval '1 second';

VACUUM FULL outbox;

VACUUM ANALYZE;

CHECKPOINT
"""

_BARE = """
UPDATE outbox AS o SET state = 'delivered', attempts = o.attempts + 1, delivered_at = now()
FROM (SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= now()
      ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) AS c
WHERE o.id = c.id
"""


class _Cpu:
    """CPU seconds of this process and of our PostgreSQL server (all its backends)."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self._pids = [os.getpid()] + ([postmaster_pid] if postmaster_pid else [])

    def now(self) -> tuple[float, float]:
        own = psutil.Process(os.getpid()).cpu_times()
        pg = 0.0
        if len(self._pids) > 1:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self._pids[1])
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = proc.cpu_times()
                        pg += times.user + times.system
        return own.user + own.system, pg


@contextlib.contextmanager
def _measure(cpu: _Cpu, into: list[tuple[float, float, float]]) -> Iterator[None]:
    own0, pg0 = cpu.now()
    timer = Timer()
    yield
    elapsed = timer.elapsed
    own1, pg1 = cpu.now()
    into.append((elapsed, own1 - own0, pg1 - pg0))


async def _drain(size: Size) -> list[BenchResult]:
    configure_logging("WARNING", "console")
    with _database() as (url, postmaster_pid):
        await asyncio.to_thread(upgrade_to_head, url)
        settings = load_settings(database_url=url, crm_mode="local")
        conn = await asyncpg.connect(libpq_url(url))
        engine = create_engine(url, pool_size=2)
        cpu = _Cpu(postmaster_pid)
        real: list[tuple[float, float, float]] = []
        bare: list[tuple[float, float, float]] = []
        try:
            await conn.execute("TRUNCATE invoices, outbox")
            await run_script(conn, _SEED, size.messages)
            async with httpx.AsyncClient() as http:
                for repeat in range(size.repeats):
                    await run_script(conn, _RESET)
                    with _measure(cpu, bare):
                        while True:
                            status = await conn.execute(_BARE, BATCH)
                            if status == "UPDATE 0":
                                break
                    await run_script(conn, _RESET)
                    dispatcher = build_dispatcher(settings, engine, http)
                    with _measure(cpu, real):
                        while await dispatcher.run_once():
                            pass
                    counts = await conn.fetchrow(
                        "SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered, "
                        "count(*) FILTER (WHERE attempts <> 1) AS not_once FROM outbox"
                    )
                    assert counts is not None
                    if counts["delivered"] != size.messages or counts["not_once"]:
                        raise RuntimeError(f"drain incomplete or repeated: {dict(counts)}")
                    print(
                        f"  repeat {repeat + 1}: dispatcher {real[-1][0]:.2f}s, "
                        f"bare {bare[-1][0]:.2f}s ({counts['delivered']:,} delivered once)"
                    )
        finally:
            await engine.dispose()
            await conn.close()
    n = size.messages
    real_s = statistics.median(r[0] for r in real)
    bare_s = statistics.median(b[0] for b in bare)
    median_run = sorted(real, key=lambda r: r[0])[len(real) // 2]
    _, py_cpu, pg_cpu = median_run
    cores = os.cpu_count() or 1
    per = (py_cpu + pg_cpu) / n * 1e6
    return [
        BenchResult(
            name=f"outbox: CRM outbox drain, local mode, {n:,} messages (dispatcher, batches "
            f"of {BATCH})",
            value=n / real_s,
            unit="messages/s",
            baseline_name=f"bare UPDATE ... FOR UPDATE SKIP LOCKED, batches of {BATCH}",
            baseline_value=n / bare_s,
            target=f">= {TARGET:,} messages/s",
            met=n / real_s >= TARGET,
            notes=f"median of {size.repeats}; dispatcher {real_s:.2f}s, bare {bare_s:.2f}s; "
            f"every message delivered exactly once (counted in the database); CPU per message: "
            f"{per:.1f} us (dispatcher {py_cpu / n * 1e6:.1f}, PostgreSQL "
            f"{pg_cpu / n * 1e6:.1f}); at that cost {cores} cores with nothing else running "
            f"could do at most {n * cores / (py_cpu + pg_cpu):,.0f}/s",
        )
    ]


def run(quick: bool) -> list[BenchResult]:
    return asyncio.run(_drain(QUICK if quick else FULL))
