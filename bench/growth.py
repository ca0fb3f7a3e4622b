"""How reconciliation cost grows: the full reconcile of bench/reconcile.py (every invoice
dirty, drained through the real code path, beside the bare `UPDATE ... FROM (aggregate)`) at
100,000, 1,000,000 and 5,000,000 postings, one invoice per five postings (20k/50k/100k in
quick mode), each in a fresh database. One run per size: the median of three lives in
bench/reconcile.py at 1M; these points show the shape of the line (flat postings/s = linear).

Ingest's growth line comes from bench/memory.py's one continuous push (the same 5M postings
it measures memory under).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from bench import reconcile
from bench.common import BenchResult

FULL = (100_000, 1_000_000, 5_000_000)
QUICK = (20_000, 50_000, 100_000)
POSTINGS_PER_INVOICE = 5
SERIES = "reconcile, all dirty (real code path)"


async def _point(postings: int) -> BenchResult:
    size = dataclasses.replace(
        reconcile.QUICK, postings=postings, invoices=postings // POSTINGS_PER_INVOICE, repeats=1
    )
    timer = time.perf_counter()
    (measured,) = await reconcile.full_reconcile(size)
    took = time.perf_counter() - timer
    bare = measured.baseline_value
    return BenchResult(
        name=f"growth: reconcile, {postings:,} postings / {size.invoices:,} invoices",
        value=measured.value,
        unit="s",
        baseline_name=measured.baseline_name,
        baseline_value=bare,
        notes=f"{postings / measured.value:,.0f} postings/s "
        + (f"(bare {postings / bare:,.0f}/s)" if bare else "")
        + f"; one run; data generated in SQL, {took:.0f}s in all",
        series=SERIES,
        x=postings,
        extra={"rate": postings / measured.value},
    )


async def _run(sizes: tuple[int, ...]) -> list[BenchResult]:
    return [await _point(postings) for postings in sizes]


def run(quick: bool) -> list[BenchResult]:
    started = time.perf_counter()
    results = asyncio.run(_run(QUICK if quick else FULL))
    print(f"bench.growth took {time.perf_counter() - started:.0f}s", flush=True)
    return results
