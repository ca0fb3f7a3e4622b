"""Ingest throughput: signed batches of receipts, each allocated to an invoice, pushed over HTTP
to the service started as `make run` starts it, beside a minimal baseline (the same rows, one
`unnest` upsert per batch straight through asyncpg, no HTTP, no validation, no hashing).

Before the timed run the invoices the receipts pay are loaded through the same webhook, so
every allocation marks a real invoice dirty and wakes the worker, as in production. The same
push is then repeated against a service with its worker switched off, to show what the
reconciliation running beside ingest costs on the same cores. Full mode: 400,000 receipts,
three times, each in a fresh service and database, the median reported (bench/memory.py pushes
5,000,000 in one go and reports the rate as the tables grow).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson

from bench.common import (
    BenchResult,
    CpuMeter,
    Service,
    Timer,
    percentile,
    running_service,
)
from service.db import libpq_url
from tests.support.webhooks import signed_request

WEBHOOK_PATH = "/v1/webhooks/sage/postings"
BATCH_SIZE = 500
CONCURRENCY = 8
TARGET_POSTINGS_PER_SECOND = 50_000


@dataclass(frozen=True)
class Size:
    postings: int
    invoices: int
    repeats: int = 1  # each in a fresh service and database; the median is reported


FULL = Size(postings=400_000, invoices=100_000, repeats=3)
QUICK = Size(postings=50_000, invoices=10_000)
RECEIPT_BASE = 10_000_000


@dataclass
class PushStats:
    postings: int
    seconds: float
    latencies: list[float]
    cpu: str = ""
    # CPU microseconds per posting by process: comparable between runs on a shared machine.
    cost: str = ""

    @property
    def rate(self) -> float:
        return self.postings / self.seconds


def invoice(n: int) -> dict[str, Any]:
    return {
        "tran_number": n,
        "type": "SI",
        "account_ref": f"CUST{n % 2000:04d}",
        "reference": f"INV{n:07d}",
        "date": "2026-01-05",
        "details": "Consulting services",
        "nominal_code": "4000",
        "net_amount": "100.00",
        "tax_amount": "20.00",
        "gross_amount": "120.00",
    }


def receipt(i: int, invoices: int) -> dict[str, Any]:
    target = i % invoices + 1
    return {
        "tran_number": RECEIPT_BASE + i,
        "type": "SR",
        "account_ref": f"CUST{target % 2000:04d}",
        "reference": f"BACS{i:08d}",
        "date": "2026-02-01",
        "details": "Sales Receipt",
        "nominal_code": "1200",
        "net_amount": "1.10",
        "tax_amount": "0.00",
        "gross_amount": "1.10",
        "allocations": [{"invoice_tran_number": target, "amount": "1.10", "date": "2026-02-01"}],
    }


def batches(postings: list[dict[str, Any]]) -> list[bytes]:
    return [
        orjson.dumps({"source": "bench", "postings": postings[i : i + BATCH_SIZE]})
        for i in range(0, len(postings), BATCH_SIZE)
    ]


async def push(
    service: Service,
    bodies: Iterable[bytes],
    label: str,
    postings: int,
    *,
    on_accepted: Callable[[int], None] | None = None,
) -> PushStats:
    """Send every body signed, with CONCURRENCY senders; each must be answered 202.

    `bodies` may be a generator (made as they are sent); `on_accepted(index)` is called after
    each 202."""
    latencies: list[float] = []
    queue = iter(enumerate(bodies))
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=service.base_url, limits=limits, timeout=120) as http:

        async def sender() -> None:
            for index, body in queue:
                _, headers = signed_request(
                    body, secret=service.webhook_secret, webhook_id=f"bench-{label}-{run}-{index}"
                )
                started = time.perf_counter()
                response = await http.post(WEBHOOK_PATH, content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise RuntimeError(
                        f"batch {index} answered {response.status_code}: {response.text[:500]}"
                    )
                if on_accepted is not None:
                    on_accepted(index)

        with CpuMeter(service) as cpu:
            timer = Timer()
            await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
            seconds = timer.elapsed
    return PushStats(
        postings=postings,
        seconds=seconds,
        latencies=latencies,
        cpu=cpu.describe(),
        cost=cpu.per_unit(postings),
    )


BASELINE_SCHEMA = "bench_baseline"
BASELINE_SQL = f"""
WITH p AS (
    INSERT INTO {BASELINE_SCHEMA}.postings AS t (
        tran_number, type, account_ref, reference, date, details, nominal_code,
        net_amount, tax_amount, gross_amount, content_hash, event_id
    )
    SELECT u.tran_number, u.type, u.account_ref, u.reference, u.date, u.details,
           u.nominal_code, u.net, u.tax, u.gross, '\\x'::bytea, $14
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::date[], $6::text[],
                $7::text[], $8::numeric[], $9::numeric[], $10::numeric[])
         AS u (tran_number, type, account_ref, reference, date, details, nominal_code,
               net, tax, gross)
    ON CONFLICT (tran_number) DO UPDATE SET
        account_ref = EXCLUDED.account_ref, gross_amount = EXCLUDED.gross_amount
)
INSERT INTO {BASELINE_SCHEMA}.allocations AS a (
    posting_tran_number, seq, invoice_tran_number, amount, date, posting_type
)
SELECT u.posting, 1, u.invoice, u.amount, u.date, u.type
FROM unnest($1::bigint[], $11::bigint[], $12::numeric[], $13::date[], $2::text[])
     AS u (posting, invoice, amount, date, type)
ON CONFLICT (posting_tran_number, seq) DO UPDATE SET amount = EXCLUDED.amount
"""


def _columns(postings: list[dict[str, Any]]) -> tuple[Any, ...]:
    day = dt.date.fromisoformat
    allocs = [p["allocations"][0] for p in postings]
    return (
        [p["tran_number"] for p in postings],
        [p["type"] for p in postings],
        [p["account_ref"] for p in postings],
        [p["reference"] for p in postings],
        [day(p["date"]) for p in postings],
        [p["details"] for p in postings],
        [p["nominal_code"] for p in postings],
        [Decimal(p["net_amount"]) for p in postings],
        [Decimal(p["tax_amount"]) for p in postings],
        [Decimal(p["gross_amount"]) for p in postings],
        [a["invoice_tran_number"] for a in allocs],
        [Decimal(a["amount"]) for a in allocs],
        [day(a["date"]) for a in allocs],
    )


async def baseline(database_url: str, postings: list[dict[str, Any]]) -> PushStats:
    """The same rows, one statement per batch of 500, 8 connections, arrays built beforehand."""
    url = libpq_url(database_url)
    setup = await asyncpg.connect(url)
    try:
        await setup.execute(
            f"""
            DROP SCHEMA IF EXISTS {BASELINE_SCHEMA} CASCADE;
            CREATE SCHEMA {BASELINE_SCHEMA};
            CREATE TABLE {BASELINE_SCHEMA}.postings (LIKE public.postings INCLUDING ALL);
            CREATE TABLE {BASELINE_SCHEMA}.allocations (LIKE public.allocations INCLUDING ALL);
            """
        )
    finally:
        await setup.close()
    work = [_columns(postings[i : i + BATCH_SIZE]) for i in range(0, len(postings), BATCH_SIZE)]
    latencies: list[float] = []
    queue = iter(work)
    pool = await asyncpg.create_pool(url, min_size=CONCURRENCY, max_size=CONCURRENCY)
    try:

        async def writer() -> None:
            async with pool.acquire() as conn:
                for columns in queue:
                    started = time.perf_counter()
                    await conn.execute(BASELINE_SQL, *columns, "baseline")
                    latencies.append(time.perf_counter() - started)

        timer = Timer()
        await asyncio.gather(*(writer() for _ in range(CONCURRENCY)))
        seconds = timer.elapsed
        async with pool.acquire() as conn:
            stored = await conn.fetchval(f"SELECT count(*) FROM {BASELINE_SCHEMA}.postings")
            await conn.execute(f"DROP SCHEMA {BASELINE_SCHEMA} CASCADE")
    finally:
        await pool.close()
    if stored != len(postings):
        raise RuntimeError(f"baseline stored {stored} postings of {len(postings)}")
    return PushStats(postings=len(postings), seconds=seconds, latencies=latencies)


async def _stored(database_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        postings = await conn.fetchval("SELECT count(*) FROM postings WHERE type = 'SR'")
        allocations = await conn.fetchval("SELECT count(*) FROM allocations")
        return int(postings), int(allocations)
    finally:
        await conn.close()


async def _ingest(
    size: Size, bodies: list[bytes], receipts: list[dict[str, Any]], *, worker: bool
) -> tuple[PushStats, PushStats | None]:
    """Load the invoices, push the receipts; with the worker on, the baseline follows on the
    same server."""
    env = None if worker else {"LEDGERLINK_RUN_WORKER": "false"}
    with running_service(extra_env=env) as service:
        invoices = [invoice(n) for n in range(1, size.invoices + 1)]
        await push(service, batches(invoices), "invoices", len(invoices))
        http = await push(service, bodies, "receipts", len(receipts))
        stored, allocations = await _stored(service.database_url)
        if stored != size.postings or allocations != size.postings:
            raise RuntimeError(
                f"{stored} receipts and {allocations} allocations stored of {size.postings}"
            )
        base = await baseline(service.database_url, receipts) if worker else None
    return http, base


def _median_run(runs: list[PushStats]) -> PushStats:
    """The run with the median rate (3 runs: the middle one), all runs' batch latencies."""
    ordered = sorted(runs, key=lambda r: r.rate)
    middle = ordered[(len(ordered) - 1) // 2]
    every = [latency for r in runs for latency in r.latencies]
    return PushStats(middle.postings, middle.seconds, every, middle.cpu, middle.cost)


def _rates(runs: list[PushStats]) -> str:
    return ", ".join(f"{r.rate:,.0f}" for r in runs) + "/s"


async def _run(size: Size) -> list[BenchResult]:
    receipts = [receipt(i, size.invoices) for i in range(size.postings)]
    bodies = batches(receipts)
    on_runs: list[PushStats] = []
    base_runs: list[PushStats] = []
    off_runs: list[PushStats] = []
    for repeat in range(size.repeats):
        http, base = await _ingest(size, bodies, receipts, worker=True)
        alone, _ = await _ingest(size, bodies, receipts, worker=False)
        assert base is not None
        on_runs.append(http)
        base_runs.append(base)
        off_runs.append(alone)
        print(
            f"  repeat {repeat + 1}: worker on {http.rate:,.0f}/s, worker off "
            f"{alone.rate:,.0f}/s, baseline {base.rate:,.0f}/s",
            flush=True,
        )
    http, base, alone = (_median_run(r) for r in (on_runs, base_runs, off_runs))
    runs = f"median of {size.repeats} (runs {_rates(on_runs)}; baseline {_rates(base_runs)})"
    ms = 1000
    return [
        BenchResult(
            name=f"ingest: postings/s over HTTP, end to end ({size.postings:,} receipts in "
            f"signed batches of {BATCH_SIZE}, concurrency {CONCURRENCY}, worker on)",
            value=http.rate,
            unit="postings/s",
            baseline_name="asyncpg unnest upsert, no HTTP",
            baseline_value=base.rate,
            target=f">= {TARGET_POSTINGS_PER_SECOND:,} postings/s",
            met=http.rate >= TARGET_POSTINGS_PER_SECOND,
            notes=f"{runs}; median run {http.seconds:.1f}s (baseline {base.seconds:.1f}s); "
            f"{size.invoices:,} invoices loaded first, every receipt allocated to one; "
            f"{http.cpu}; {http.cost}",
        ),
        BenchResult(
            name="ingest: postings/s over HTTP, worker off (ingest alone)",
            value=alone.rate,
            unit="postings/s",
            baseline_name="asyncpg unnest upsert, no HTTP",
            baseline_value=base.rate,
            notes=f"median of {size.repeats} (runs {_rates(off_runs)}); median run "
            f"{alone.seconds:.1f}s; {alone.cpu}; {alone.cost}",
        ),
        BenchResult(
            name="ingest: p50 batch latency (worker on)",
            value=percentile(http.latencies, 50) * ms,
            unit="ms",
            baseline_name="asyncpg p50",
            baseline_value=percentile(base.latencies, 50) * ms,
            notes="signed POST of 500 postings until its 202 (committed); over the batches of "
            "every run",
        ),
        BenchResult(
            name="ingest: p99 batch latency (worker on)",
            value=percentile(http.latencies, 99) * ms,
            unit="ms",
            baseline_name="asyncpg p99",
            baseline_value=percentile(base.latencies, 99) * ms,
            notes=f"worker off: p50 {percentile(alone.latencies, 50) * ms:.0f} ms, "
            f"p99 {percentile(alone.latencies, 99) * ms:.0f} ms",
        ),
    ]


def run(quick: bool) -> list[BenchResult]:
    return asyncio.run(_run(QUICK if quick else FULL))
