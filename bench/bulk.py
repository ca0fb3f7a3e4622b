"""Global Update benchmark (issue 5).

(a) 100,000 invoices of one account set to "Written Off" through the API of the service started
    as `make run` starts it: POST /v1/invoices/bulk-status answers 202, the in-process worker
    runs the job (status + status_history + outbox + job_results, set-based, one transaction),
    the client polls GET /v1/jobs/{id} until it reads "succeeded". Beside it, in the same run
    on the same rows, the bare `UPDATE invoices SET status = ... WHERE account_ref = ...`.
    Target: <= 2 s. Median of 3 repeats (1 in quick mode, on 10,000 invoices).

(b) A small Global Update (1,000 invoices), answered within the request (200), beside the bare
    UPDATE of the same 1,000 rows. Median of 5 (3 in quick mode).

Another 100,000 invoices (other accounts) sit in the table, so the selection is a real
selection. Before every timed run the statuses are reset, the history, outbox and jobs
emptied and the table vacuumed, so each repeat starts from the same state.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import asyncpg
import httpx

from bench.common import BenchResult, CpuMeter, Service, Timer, running_service, server_cpu_seconds
from service.db import libpq_url

TARGET_SECONDS = 2.0
BIG_ACCOUNT = "BULK01"
SMALL_ACCOUNT = "BULK02"
SMALL = 1_000
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Size:
    invoices: int
    others: int
    repeats: int
    small_repeats: int


FULL = Size(invoices=100_000, others=100_000, repeats=3, small_repeats=5)
QUICK = Size(invoices=10_000, others=10_000, repeats=1, small_repeats=3)

_SEED = """
INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date, gross,
                      outstanding, paid, status, derived_state)
SELECT $1 || lpad(g::text, 7, '0'), $2, $3 + g, DATE '2026-01-15', 120.00, 0.00, 120.00,
       'Paid', 'paid'
  FROM generate_series(1, $4) AS g
"""


async def _seed(conn: asyncpg.Connection, size: Size) -> None:
    await conn.execute(_SEED, "W", BIG_ACCOUNT, 0, size.invoices)
    await conn.execute(_SEED, "S", SMALL_ACCOUNT, 10_000_000, SMALL)
    # Other customers' invoices: 100 accounts.
    await conn.execute(
        """
        INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date,
                              gross, outstanding, status)
        SELECT 'O' || lpad(g::text, 7, '0'), 'CUST' || (g % 100), 20000000 + g,
               DATE '2026-01-15', 120.00, 120.00, 'Unpaid'
          FROM generate_series(1, $1) AS g
        """,
        size.others,
    )
    await conn.execute("VACUUM ANALYZE invoices")


async def _reset(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE status_history, outbox, job_results, jobs")
    await conn.execute(
        "UPDATE invoices SET status = 'Paid' WHERE account_ref IN ($1, $2)",
        BIG_ACCOUNT,
        SMALL_ACCOUNT,
    )
    await conn.execute("VACUUM ANALYZE invoices, status_history, outbox, job_results, jobs")


async def _bare_update(conn: asyncpg.Connection, account: str, expected: int) -> float:
    timer = Timer()
    status = await conn.execute(
        "UPDATE invoices SET status = 'Written Off' WHERE account_ref = $1", account
    )
    seconds = timer.elapsed
    if status != f"UPDATE {expected}":
        raise RuntimeError(f"bare update: {status}, expected {expected} rows")
    return seconds


async def _global_update(
    http: httpx.AsyncClient, account: str, expected: int, *, queued: bool
) -> tuple[float, float]:
    """Seconds from the POST to reading the finished job, and the job's own run time."""
    timer = Timer()
    response = await http.post(
        "/v1/invoices/bulk-status",
        json={"status": "Written Off", "account_ref": account, "reason": "bench"},
    )
    if response.status_code != (202 if queued else 200):
        raise RuntimeError(f"bulk-status answered {response.status_code}: {response.text[:500]}")
    job = response.json()
    while job["status"] in ("queued", "running"):
        await asyncio.sleep(POLL_SECONDS)
        job = (await http.get(f"/v1/jobs/{job['job_id']}?results_limit=1")).json()
    seconds = timer.elapsed
    if job["status"] != "succeeded" or job["updated"] != expected:
        raise RuntimeError(f"job ended {job['status']} with {job['updated']} updated: {job}")
    return seconds, _job_seconds(job)


def _job_seconds(job: dict[str, object]) -> float:
    from datetime import datetime

    started = datetime.fromisoformat(str(job["started_at"]))
    finished = datetime.fromisoformat(str(job["finished_at"]))
    return (finished - started).total_seconds()


async def _check_written(conn: asyncpg.Connection, account: str, expected: int) -> None:
    history = await conn.fetchval(
        "SELECT count(*) FROM status_history h JOIN invoices i USING (invoice_number) "
        "WHERE i.account_ref = $1 AND h.source = 'bulk'",
        account,
    )
    outbox = await conn.fetchval("SELECT count(*) FROM outbox WHERE source = 'bulk'")
    if history != expected or outbox < expected:
        raise RuntimeError(f"{history} history and {outbox} outbox rows for {expected} invoices")


async def _run(size: Size) -> list[BenchResult]:
    with running_service() as service:
        return await _measure(service, size)


async def _measure(service: Service, size: Size) -> list[BenchResult]:
    conn = await asyncpg.connect(libpq_url(service.database_url))
    headers = {"Authorization": f"Bearer {service.api_key}"}
    try:
        await _seed(conn, size)
        async with httpx.AsyncClient(
            base_url=service.base_url, headers=headers, timeout=300
        ) as http:
            big: list[float] = []
            big_job: list[float] = []
            big_bare: list[float] = []
            bare_cpu: list[float] = []
            meters: list[CpuMeter] = []
            for _ in range(size.repeats):
                await _reset(conn)
                cpu = server_cpu_seconds(service.postmaster_pid)
                big_bare.append(await _bare_update(conn, BIG_ACCOUNT, size.invoices))
                bare_cpu.append(server_cpu_seconds(service.postmaster_pid) - cpu)
                await _reset(conn)
                with CpuMeter(service) as meter:
                    seconds, job_seconds = await _global_update(
                        http, BIG_ACCOUNT, size.invoices, queued=True
                    )
                meters.append(meter)
                await _check_written(conn, BIG_ACCOUNT, size.invoices)
                big.append(seconds)
                big_job.append(job_seconds)
            small: list[float] = []
            small_bare: list[float] = []
            for _ in range(size.small_repeats):
                await _reset(conn)
                small_bare.append(await _bare_update(conn, SMALL_ACCOUNT, SMALL))
                await _reset(conn)
                seconds, _ = await _global_update(http, SMALL_ACCOUNT, SMALL, queued=False)
                small.append(seconds)
    finally:
        await conn.close()
    value = statistics.median(big)
    median_run = sorted(range(len(big)), key=big.__getitem__)[len(big) // 2]
    meter = meters[median_run]
    cost = ""
    if service.postmaster_pid:
        per_bare = statistics.median(bare_cpu) / size.invoices * 1e6
        cost = (
            f"; {meter.per_unit(size.invoices, 'invoice')}; PostgreSQL "
            f"{meter.by_role['PostgreSQL'] / size.invoices * 1e6:.1f} us per invoice against "
            f"{per_bare:.1f} us for the bare UPDATE"
        )
    return [
        BenchResult(
            name=f"bulk: Global Update of {size.invoices:,} invoices (API to finished job)",
            value=value,
            unit="s",
            baseline_name="bare UPDATE ... WHERE account_ref",
            baseline_value=statistics.median(big_bare),
            target=f"<= {TARGET_SECONDS:g} s",
            met=value <= TARGET_SECONDS,
            notes=f"median of {size.repeats}; the worker's job itself "
            f"{statistics.median(big_job):.2f}s; writes status + status_history + outbox + "
            f"job_results per invoice in one transaction; runs "
            + ", ".join(f"{s:.2f}" for s in big)
            + f"s{cost}",
        ),
        BenchResult(
            name=f"bulk: Global Update of {SMALL:,} invoices within the request (200)",
            value=statistics.median(small) * 1000,
            unit="ms",
            baseline_name="bare UPDATE of the same rows",
            baseline_value=statistics.median(small_bare) * 1000,
            notes=f"median of {size.small_repeats}; POST to finished job, over HTTP",
        ),
    ]


def run(quick: bool) -> list[BenchResult]:
    started = time.perf_counter()
    results = asyncio.run(_run(QUICK if quick else FULL))
    print(f"bench.bulk took {time.perf_counter() - started:.0f}s", flush=True)
    return results
