"""A worker SIGKILLed in the middle of a large reconciliation backlog.

80,000 dirty invoices (a quarter each unpaid, part paid, paid, written off) are reconciled
by `ledgerlink worker`; it is killed with SIGKILL while a batch transaction is open. Nothing
is half-written: every invoice is either reconciled whole (status, figures, history, outbox)
or still dirty; two new workers reclaim the backlog and finish it; no history row or outbox
row is there twice; every invoice ends with the right status.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.faults.support import (
    Service,
    connected,
    consistency_problems,
    eventually,
    fetchval,
    migrated_postgres,
)

pytestmark = pytest.mark.faults

INVOICES = 80_000
# g % 4: 0 unpaid, 1 part paid (40 of 100), 2 paid, 3 written off (SC on nominal 8100).
SEED = """
INSERT INTO postings (tran_number, type, account_ref, reference, date, net_amount, tax_amount,
                      gross_amount, content_hash, event_id)
SELECT g, 'SI', 'ACC' || (g % 50), 'INV-' || g, DATE '2026-01-01', 100, 0, 100,
       '\\x00'::bytea, 'seed'
FROM generate_series(1, {n}) AS g;

INSERT INTO postings (tran_number, type, account_ref, reference, date, details, nominal_code,
                      net_amount, tax_amount, gross_amount, content_hash, event_id)
SELECT {n} + g, CASE g % 4 WHEN 3 THEN 'SC' ELSE 'SR' END, 'ACC' || (g % 50), 'PAY',
       DATE '2026-01-02', CASE g % 4 WHEN 3 THEN 'Bad debt write off' ELSE 'Payment' END,
       CASE g % 4 WHEN 3 THEN '8100' ELSE '1200' END,
       CASE g % 4 WHEN 1 THEN 40 ELSE 100 END, 0, CASE g % 4 WHEN 1 THEN 40 ELSE 100 END,
       '\\x00'::bytea, 'seed'
FROM generate_series(1, {n}) AS g WHERE g % 4 <> 0;

INSERT INTO allocations (posting_tran_number, seq, invoice_tran_number, amount, posting_type)
SELECT {n} + g, 1, g, CASE g % 4 WHEN 1 THEN 40 ELSE 100 END,
       CASE g % 4 WHEN 3 THEN 'SC' ELSE 'SR' END
FROM generate_series(1, {n}) AS g WHERE g % 4 <> 0;

INSERT INTO invoices (invoice_number, account_ref, sage_tran_number, invoice_date, gross,
                      status)
SELECT 'INV-' || g, 'ACC' || (g % 50), g, DATE '2026-01-01', 100, 'Unpaid'
FROM generate_series(1, {n}) AS g;
INSERT INTO dirty_invoices (invoice_number) SELECT 'INV-' || g FROM generate_series(1, {n}) AS g;
"""
EXPECTED = {0: ("Unpaid", "100.00"), 1: ("Part Paid", "60.00"), 2: ("Paid", "0.00"),
            3: ("Written Off", "0.00")}  # fmt: skip
WRONG_RESULT = """
SELECT invoice_number, status, outstanding FROM invoices
WHERE (status, outstanding::text) IS DISTINCT FROM (
    CASE sage_tran_number % 4 WHEN 0 THEN 'Unpaid' WHEN 1 THEN 'Part Paid'
                              WHEN 2 THEN 'Paid' ELSE 'Written Off' END,
    CASE sage_tran_number % 4 WHEN 0 THEN '100.00' WHEN 1 THEN '60.00' ELSE '0.00' END)
LIMIT 10
"""
# A worker's reconcile transaction, caught in the act: it holds a transaction id (its claim
# locked rows) and is claiming or applying a batch.
BATCH_IN_FLIGHT = """
SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'ledgerlink' AND backend_xid IS NOT NULL
  AND (query LIKE '%FOR UPDATE SKIP LOCKED%' OR query LIKE '%labels AS MATERIALIZED%')
"""


async def dirty(url: str) -> int:
    return int(await fetchval(url, "SELECT count(*) FROM dirty_invoices"))


async def test_a_worker_killed_mid_batch_leaves_nothing_half_done_and_nothing_doubled() -> None:
    async with migrated_postgres() as pg:
        async with connected(pg.url) as conn:
            await conn.execute(SEED.format(n=INVOICES))
        worker = Service(pg.url, command="worker", worker_batch_size="1000")
        worker.start()
        try:
            # Let it get going, then wait for a batch transaction to be open and kill it there.
            await eventually(
                lambda: _below(pg.url, INVOICES - 10_000), within=120, what="worker progress"
            )
            deadline = time.monotonic() + 30
            while not await fetchval(pg.url, BATCH_IN_FLIGHT):
                assert time.monotonic() < deadline, "never caught a batch in flight"
                await asyncio.sleep(0.005)
            worker.signal(signal.SIGKILL)
            assert await asyncio.to_thread(worker.wait, 30) == -signal.SIGKILL
        finally:
            worker.stop()

        left = await dirty(pg.url)
        assert 0 < left < INVOICES - 10_000
        # The killed batch rolled back whole: every invoice reconciled or still dirty, with
        # history and figures agreeing.
        problems = await consistency_problems(pg.url)
        assert not any(problems.values()), problems
        outbox_before = await fetchval(pg.url, "SELECT count(*) FROM outbox")
        reconciled_before = await fetchval(
            pg.url, "SELECT count(*) FROM invoices WHERE derived_state IS NOT NULL"
        )
        assert outbox_before == reconciled_before

        # Two new workers share what is left (SKIP LOCKED) and finish it.
        successors = [
            Service(pg.url, command="worker", worker_batch_size="1000").start() for _ in range(2)
        ]
        try:
            await eventually(
                lambda: _below(pg.url, 1), within=180, what="backlog drained by the successors"
            )
        finally:
            for successor in successors:
                successor.stop()
        for successor in successors:
            assert successor.proc is not None
            assert successor.proc.returncode == 0, successor.output[-2000:]

        problems = await consistency_problems(pg.url)
        assert not any(problems.values()), problems
        async with connected(pg.url) as conn:
            assert await conn.fetch(WRONG_RESULT) == []
            history = await conn.fetchval("SELECT count(*) FROM status_history")
            per_invoice = await conn.fetchval(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM status_history "
                "GROUP BY invoice_number) AS h"
            )
            outbox = await conn.fetchval("SELECT count(*) FROM outbox WHERE source = 'sync'")
            outbox_per_invoice = await conn.fetchval(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM outbox GROUP BY invoice_number) AS o"
            )
        # Three quarters change status once (Unpaid -> ...); each invoice told the CRM once.
        assert history == INVOICES * 3 // 4
        assert per_invoice == 1
        assert outbox == INVOICES
        assert outbox_per_invoice == 1
        print(
            f"worker kill: {INVOICES} invoices, killed with {left} left, "
            f"{history} history rows, {outbox} outbox rows, 0 doubled"
        )


async def _below(url: str, limit: int) -> bool:
    return await dirty(url) < limit
