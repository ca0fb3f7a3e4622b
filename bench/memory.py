"""Service memory under the ingest load, and how ingest time grows with the postings held.

The service is started as `make run` starts it (worker in process). Its invoices are loaded
through the webhook, then receipts (each allocated to one invoice, as in bench/ingest.py) are
pushed in signed batches of 500, 8 at a time, until 5,000,000 postings are stored (150,000 in
quick mode). The bodies are made while they are sent, so the load generator holds one batch
per sender, not millions of postings.

- Memory: the resident set size (psutil, RSS of the `ledgerlink serve` process alone; the
  database is another process) is sampled every half second, and read when the first 1M
  and the last 5M postings are acknowledged (50k and 150k in quick mode). Target: <= 250 MB,
  and flat: less than 10% growth from the first checkpoint to the last.
- Growth: the time from the first batch to the 202 that brings the count to 100k, 1M and 5M
  postings (20k/50k/100k/150k in quick mode), so the chart shows whether the cost per posting
  stays the same while the tables grow (it does if postings/s stays flat).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import orjson

from bench.common import BenchResult, Service, Timer, rss_bytes, running_service
from bench.ingest import BATCH_SIZE, batches, invoice, push, receipt
from service.db import libpq_url

TARGET_MB = 250.0
FLAT_GROWTH = 0.10  # "flat": under 10% more from the first memory checkpoint to the last
SAMPLE_SECONDS = 0.5
MAX_SAMPLES = 200  # kept for the chart
DRAIN_SECONDS = 120.0
MB = 2**20
SERIES = "ingest over HTTP (worker on)"


@dataclass(frozen=True)
class Size:
    postings: int
    invoices: int
    memory_at: tuple[int, int]
    growth_at: tuple[int, ...]


FULL = Size(
    postings=5_000_000,
    invoices=100_000,
    memory_at=(1_000_000, 5_000_000),
    growth_at=(100_000, 1_000_000, 5_000_000),
)
QUICK = Size(
    postings=150_000,
    invoices=10_000,
    memory_at=(50_000, 150_000),
    growth_at=(20_000, 50_000, 100_000, 150_000),
)


@dataclass
class Checkpoint:
    postings: int
    seconds: float
    rss_mb: float


@dataclass
class Progress:
    """What the senders have had acknowledged so far, read by the sampler."""

    pid: int
    checkpoints_at: list[int]
    timer: Timer = field(default_factory=Timer)
    accepted: int = 0
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    samples: list[tuple[int, float]] = field(default_factory=list)

    def on_accepted(self, _index: int) -> None:
        self.accepted += BATCH_SIZE
        while self.checkpoints_at and self.accepted >= self.checkpoints_at[0]:
            at = self.checkpoints_at.pop(0)
            self.checkpoints[at] = Checkpoint(at, self.timer.elapsed, rss_bytes(self.pid) / MB)


def bodies(size: Size) -> Iterator[bytes]:
    """The receipts' bodies, made one batch at a time as the senders ask for them."""
    for start in range(0, size.postings, BATCH_SIZE):
        end = min(start + BATCH_SIZE, size.postings)
        yield orjson.dumps(
            {"source": "bench", "postings": [receipt(i, size.invoices) for i in range(start, end)]}
        )


async def _sampler(progress: Progress, stop: asyncio.Event) -> None:
    while not stop.is_set():
        progress.samples.append((progress.accepted, rss_bytes(progress.pid) / MB))
        try:
            await asyncio.wait_for(stop.wait(), timeout=SAMPLE_SECONDS)
        except TimeoutError:
            pass


async def _drain(service: Service) -> float | None:
    """Seconds until the worker has reconciled every dirty invoice (None: not within the
    limit)."""
    conn = await asyncpg.connect(libpq_url(service.database_url))
    try:
        timer = Timer()
        while timer.elapsed < DRAIN_SECONDS:
            dirty = await conn.fetchval("SELECT count(*) FROM dirty_invoices")
            if not dirty:
                return timer.elapsed
            await asyncio.sleep(0.5)
        return None
    finally:
        await conn.close()


def _thin(samples: list[tuple[int, float]]) -> list[list[float]]:
    step = max(1, len(samples) // MAX_SAMPLES)
    kept = samples[::step]
    if samples and kept[-1] != samples[-1]:
        kept.append(samples[-1])
    return [[float(x), round(mb, 1)] for x, mb in kept]


async def _run(size: Size) -> list[BenchResult]:
    with running_service() as service:
        invoices = [invoice(n) for n in range(1, size.invoices + 1)]
        await push(service, batches(invoices), "invoices", len(invoices))
        idle_mb = rss_bytes(service.pid) / MB
        checkpoints = sorted({*size.memory_at, *size.growth_at})
        progress = Progress(pid=service.pid, checkpoints_at=checkpoints)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sampler(progress, stop))
        progress.timer = Timer()
        try:
            stats = await push(
                service, bodies(size), "memory", size.postings, on_accepted=progress.on_accepted
            )
            pushed_samples = list(progress.samples)
            drained = await _drain(service)
            after_drain_mb = rss_bytes(service.pid) / MB
        finally:
            stop.set()
            await sampler
    peak_mb = max(mb for _, mb in progress.samples)
    first, last = (progress.checkpoints[at] for at in size.memory_at)
    growth = last.rss_mb / first.rss_mb - 1
    drain = f"{drained:.0f}s" if drained is not None else f"more than {DRAIN_SECONDS:.0f}s"
    context = (
        f"RSS of the `ledgerlink serve` process (API + worker; PostgreSQL not included); "
        f"{size.invoices:,} invoices loaded first; idle after start-up and the invoice load "
        f"{idle_mb:.0f} MB; peak while pushing {peak_mb:.0f} MB; after the worker caught up "
        f"({drain} after the last 202) {after_drain_mb:.0f} MB"
    )
    results = [
        BenchResult(
            name=f"memory: service RSS after {first.postings:,} postings pushed",
            value=first.rss_mb,
            unit="MB",
            target=f"<= {TARGET_MB:.0f} MB",
            met=first.rss_mb <= TARGET_MB,
            notes=context,
        ),
        BenchResult(
            name=f"memory: service RSS after {last.postings:,} postings pushed "
            f"(baseline: after {first.postings:,})",
            value=last.rss_mb,
            unit="MB",
            baseline_name=f"RSS after {first.postings:,}",
            baseline_value=first.rss_mb,
            target=f"<= {TARGET_MB:.0f} MB and flat (< {FLAT_GROWTH:.0%} growth)",
            met=max(first.rss_mb, last.rss_mb, peak_mb) <= TARGET_MB and growth < FLAT_GROWTH,
            notes=f"growth {growth:+.1%} ({last.rss_mb - first.rss_mb:+.1f} MB) over "
            f"{last.postings - first.postings:,} postings; the whole push took "
            f"{stats.seconds:.0f}s ({stats.rate:,.0f} postings/s); {stats.cpu}; {stats.cost}",
            extra={"rss_samples": _thin(pushed_samples), "rss_idle_mb": round(idle_mb, 1)},
        ),
    ]
    previous = Checkpoint(0, 0.0, idle_mb)
    for at in size.growth_at:
        point = progress.checkpoints[at]
        window = (point.postings - previous.postings) / (point.seconds - previous.seconds)
        results.append(
            BenchResult(
                name=f"growth: ingest, {at:,} postings over HTTP",
                value=point.seconds,
                unit="s",
                notes=f"{at / point.seconds:,.0f} postings/s overall, {window:,.0f}/s from "
                f"{previous.postings:,} to {at:,}; one continuous push, worker on; "
                f"RSS then {point.rss_mb:.0f} MB",
                series=SERIES,
                x=at,
                extra={"rate": at / point.seconds, "window_rate": window},
            )
        )
        previous = point
    return results


def run(quick: bool) -> list[BenchResult]:
    started = time.perf_counter()
    results = asyncio.run(_run(QUICK if quick else FULL))
    print(f"bench.memory took {time.perf_counter() - started:.0f}s", flush=True)
    return results
