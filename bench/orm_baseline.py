"""Ours against what a naive service does: the same signed batches, ingested row by row
through the ORM.

The naive service (`naive_app` below) is the obvious FastAPI + SQLModel endpoint: it checks
the same Standard Webhooks signature with the same verifier, validates the body with the same
pydantic models, then, in one AsyncSession and one commit per batch, adds the inbox row,
`session.merge()`s every posting and every allocation (an upsert: a SELECT by primary key,
then an INSERT or UPDATE at flush) and loads the invoices the allocations name to queue each
in `dirty_invoices`. It does less than ours: no content hash (a re-sent posting is always
rewritten), no NOTIFY, no answer stored for replays, no retry of a whole delivery.

The comparison is fair by construction: both are HTTP services run by uvicorn the same way
(one process, uvloop + httptools, log level WARNING), fed the same bodies by the same sender
(signed batches of 500, concurrency 8), writing the same rows to the same tables of the same
PostgreSQL, one after the other, each from the same starting state (the receipts of the
previous push deleted, invoices clean, tables vacuumed). Ours runs with its worker off, since
the naive service has none: this compares ingestion with ingestion. Median of 3 (1 in quick
mode); the target is ours >= 2.5x the naive service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request, Response
from pydantic import SecretStr
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.common import (
    BenchResult,
    Service,
    free_port,
    running_service,
    serving,
)
from bench.ingest import (
    BATCH_SIZE,
    CONCURRENCY,
    RECEIPT_BASE,
    WEBHOOK_PATH,
    batches,
    invoice,
    push,
    receipt,
)
from service.db import create_engine, libpq_url
from service.ingest.models import Allocation, Posting, WebhookDelivery
from service.ingest.schemas import PostingBatch, PostingIn
from service.ingest.signature import SignatureRejected, Verifier
from service.invoices.models import DirtyInvoice, Invoice

TARGET_SPEEDUP = 2.5
NAIVE_ENV = "BENCH_NAIVE_"  # the naive service's settings: DATABASE_URL, PORT, SECRET


@dataclass(frozen=True)
class Size:
    postings: int
    invoices: int
    repeats: int


FULL = Size(postings=20_000, invoices=10_000, repeats=3)
QUICK = Size(postings=3_000, invoices=3_000, repeats=1)


# ---------------------------------------------------------------------------------------------
# The naive service
# ---------------------------------------------------------------------------------------------


def _posting_row(p: PostingIn, event_id: str) -> dict[str, Any]:
    return {
        "tran_number": p.tran_number,
        "type": p.type,
        "account_ref": p.account_ref,
        "reference": p.reference,
        "date": p.date,
        "details": p.details,
        "nominal_code": p.nominal_code,
        "net_amount": p.net_amount,
        "tax_amount": p.tax_amount,
        "gross_amount": p.gross_amount,
        "outstanding": p.outstanding,
        "deleted": p.deleted,
        "content_hash": b"",
        "event_id": event_id,
    }


def _allocation_rows(p: PostingIn) -> list[dict[str, Any]]:
    return [
        {
            "posting_tran_number": p.tran_number,
            "seq": seq,
            "invoice_tran_number": a.invoice_tran_number,
            "amount": a.amount,
            "date": a.date,
            "deleted": a.deleted,
            "posting_type": p.type,
            "posting_deleted": p.deleted,
        }
        for seq, a in enumerate(p.allocations, start=1)
    ]


async def store_merge(session: AsyncSession, batch: PostingBatch, event_id: str) -> None:
    """The textbook upsert: session.merge() per posting and per allocation."""
    for p in batch.postings:
        await session.merge(Posting(**_posting_row(p, event_id)))
        for row in _allocation_rows(p):
            await session.merge(Allocation(**row))


async def store_batched(session: AsyncSession, batch: PostingBatch, event_id: str) -> None:
    """A careful ORM service: the rows that exist are loaded with one IN query per table, then
    one ORM object per row is added or updated (flushed as executemany)."""
    numbers = [p.tran_number for p in batch.postings]
    postings = {
        row.tran_number: row
        for row in await session.exec(select(Posting).where(col(Posting.tran_number).in_(numbers)))
    }
    allocations = {
        (row.posting_tran_number, row.seq): row
        for row in await session.exec(
            select(Allocation).where(col(Allocation.posting_tran_number).in_(numbers))
        )
    }
    for p in batch.postings:
        found = postings.get(p.tran_number)
        if found is None:
            session.add(Posting(**_posting_row(p, event_id)))
        else:
            for name, value in _posting_row(p, event_id).items():
                setattr(found, name, value)
    # The models declare no relationship(), so the unit of work does not know postings come
    # before their allocations: flush them first.
    await session.flush()
    for p in batch.postings:
        for row in _allocation_rows(p):
            old = allocations.pop((p.tran_number, row["seq"]), None)
            if old is None:
                session.add(Allocation(**row))
            else:
                for name, value in row.items():
                    setattr(old, name, value)
    for gone in allocations.values():  # no longer sent: the set is replaced
        await session.delete(gone)


STRATEGIES = {"merge": store_merge, "batched": store_batched}


def naive_app(database_url: str, secret: str) -> FastAPI:
    """Both naive services in one app: /v1/... uses merge(), /batched/v1/... batched lookups."""
    engine = create_engine(database_url)
    verifier = Verifier([SecretStr(secret)], 300)
    app = FastAPI(title="naive ORM ingest")

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    async def receive(request: Request, strategy: str) -> Response:
        body = await request.body()
        try:
            signed = verifier.check_headers(
                request.headers.get("webhook-id"),
                request.headers.get("webhook-timestamp"),
                request.headers.get("webhook-signature"),
                now=time.time(),
            )
            verifier.verify(signed, body)
        except SignatureRejected as exc:
            return Response(exc.detail, status_code=401)
        batch = PostingBatch.model_validate_json(body, strict=True)
        for attempt in range(3):  # a deadlock between concurrent batches: run it again
            try:
                async with AsyncSession(engine) as session:
                    session.add(
                        WebhookDelivery(
                            webhook_id=signed.webhook_id,
                            body_sha256=b"",
                            source=batch.source,
                            status_code=202,
                            response={},
                            postings_received=len(batch.postings),
                            received_at=dt.datetime.now(dt.UTC),
                        )
                    )
                    await STRATEGIES[strategy](session, batch, signed.webhook_id)
                    targets = {a.invoice_tran_number for p in batch.postings for a in p.allocations}
                    now = dt.datetime.now(dt.UTC)
                    invoices = await session.exec(
                        select(Invoice).where(
                            col(Invoice.sage_tran_number).in_(targets),
                            col(Invoice.deleted).is_(False),
                        )
                    )
                    for found in invoices:
                        # One statement per invoice; a plain add would collide with another
                        # batch queueing the same invoice.
                        await session.exec(
                            pg_insert(DirtyInvoice)
                            .values(invoice_number=found.invoice_number, since=now)
                            .on_conflict_do_nothing()
                        )
                    await session.commit()
                break
            except DBAPIError as exc:
                if attempt == 2 or "deadlock" not in str(exc):
                    raise
        answer = orjson.dumps(
            {"event_id": signed.webhook_id, "postings_received": len(batch.postings)}
        )
        return Response(answer, status_code=202, media_type="application/json")

    @app.post(WEBHOOK_PATH, status_code=202)
    async def receive_merge(request: Request) -> Response:
        return await receive(request, "merge")

    @app.post(f"/batched{WEBHOOK_PATH}", status_code=202)
    async def receive_batched(request: Request) -> Response:
        return await receive(request, "batched")

    return app


def serve_naive() -> None:
    """`python -m bench.orm_baseline serve`: the naive service, run by uvicorn as ours is."""
    import logging

    import uvicorn

    logging.basicConfig(level=logging.WARNING)
    app = naive_app(os.environ[f"{NAIVE_ENV}DATABASE_URL"], os.environ[f"{NAIVE_ENV}SECRET"])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ[f"{NAIVE_ENV}PORT"]),
        log_config=None,
        log_level="warning",
        timeout_keep_alive=5,
    )


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------

_RESET_SQL = f"""
DELETE FROM allocations WHERE posting_tran_number >= {RECEIPT_BASE};
DELETE FROM postings WHERE tran_number >= {RECEIPT_BASE};
TRUNCATE webhook_deliveries;
TRUNCATE dirty_invoices;
VACUUM ANALYZE postings, allocations, invoices, webhook_deliveries;
CHECKPOINT;
"""


async def _reset(database_url: str) -> None:
    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        for statement in _RESET_SQL.split(";\n"):
            if statement.strip():
                await conn.execute(statement)
    finally:
        await conn.close()


async def _check(database_url: str, size: Size) -> None:
    """Every allocation stored, every invoice they name marked dirty."""
    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        stored = await conn.fetchval(
            f"SELECT count(*) FROM allocations WHERE posting_tran_number >= {RECEIPT_BASE}"
        )
        dirty = await conn.fetchval("SELECT count(*) FROM dirty_invoices")
    finally:
        await conn.close()
    expected_dirty = min(size.postings, size.invoices)
    if stored != size.postings or dirty != expected_dirty:
        raise RuntimeError(
            f"{stored} allocations and {dirty} dirty invoices, expected {size.postings} and "
            f"{expected_dirty}"
        )


async def _measure(services: dict[str, Service], size: Size) -> list[BenchResult]:
    """Each contender in turn, from the same state, `size.repeats` times; rates per contender."""
    bodies = batches([receipt(i, size.invoices) for i in range(size.postings)])
    database_url = services["ours"].database_url
    rates: dict[str, list[float]] = {name: [] for name in services}
    cpu: dict[str, list[str]] = {name: [] for name in services}
    for repeat in range(size.repeats):
        for name, service in services.items():
            await _reset(database_url)
            stats = await push(service, bodies, f"orm-{name}-{repeat}", size.postings)
            await _check(database_url, size)
            rates[name].append(stats.rate)
            cpu[name].append(f"{stats.cpu.split(': ', 1)[-1]}; {stats.cost}")
        print(
            f"  repeat {repeat + 1}: "
            + ", ".join(f"{name} {r[-1]:,.0f} postings/s" for name, r in rates.items()),
            flush=True,
        )
    median = {name: statistics.median(r) for name, r in rates.items()}

    def runs(name: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[name]) + "/s"

    common = (
        f"median of {size.repeats}; ours with its worker off (the naive one has none); same "
        f"database, same starting state, same sender; runs: ours {runs('ours')}"
    )
    results = []
    for name, label in (
        (
            "merge",
            "naive FastAPI + SQLModel service: session.merge per posting and per "
            "allocation, one commit per batch",
        ),
        (
            "batched",
            "careful ORM service: one IN query per table to find existing rows, "
            "then add()/update per row, one commit per batch",
        ),
    ):
        speedup = median["ours"] / median[name]
        results.append(
            BenchResult(
                name=f"ingest vs ORM-per-row ({name}): {size.postings:,} receipts over HTTP, "
                f"signed batches of {BATCH_SIZE}, concurrency {CONCURRENCY}",
                value=median["ours"],
                unit="postings/s",
                baseline_name=label,
                baseline_value=median[name],
                target=f">= {TARGET_SPEEDUP:g}x the ORM service" if name == "merge" else "",
                met=speedup >= TARGET_SPEEDUP if name == "merge" else None,
                notes=f"{common}, {name} {runs(name)}; CPU: ours "
                f"{cpu['ours'][-1]}; {name} {cpu[name][-1]}",
            )
        )
    return results


async def _run(size: Size) -> list[BenchResult]:
    with running_service(extra_env={"LEDGERLINK_RUN_WORKER": "false"}) as ours:
        invoices = [invoice(n) for n in range(1, size.invoices + 1)]
        await push(ours, batches(invoices), "invoices", len(invoices))
        port = free_port()
        env = {
            **os.environ,
            f"{NAIVE_ENV}DATABASE_URL": ours.database_url,
            f"{NAIVE_ENV}PORT": str(port),
            f"{NAIVE_ENV}SECRET": ours.webhook_secret,
        }
        with tempfile.TemporaryDirectory(prefix="ledgerlink-bench-naive-") as tmp:
            log_path = Path(tmp) / "naive.log"
            command = [sys.executable, "-m", "bench.orm_baseline", "serve"]
            with serving(command, env, log_path, f"http://127.0.0.1:{port}/readyz") as process:
                naive = {
                    name: Service(
                        base_url=f"http://127.0.0.1:{port}{prefix}",
                        database_url=ours.database_url,
                        api_key="",
                        webhook_secret=ours.webhook_secret,
                        pid=process.pid,
                        log_path=log_path,
                        postmaster_pid=ours.postmaster_pid,
                    )
                    for name, prefix in (("merge", ""), ("batched", "/batched"))
                }
                return await _measure({"ours": ours, **naive}, size)


def run(quick: bool) -> list[BenchResult]:
    started = time.perf_counter()
    results = asyncio.run(_run(QUICK if quick else FULL))
    print(f"bench.orm_baseline took {time.perf_counter() - started:.0f}s", flush=True)
    return results


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        serve_naive()
    else:
        raise SystemExit("usage: python -m bench.orm_baseline serve")


if __name__ == "__main__":
    main(sys.argv[1:])
