"""A large CRM backlog on an outbox whose statistics say nothing is pending.

Autovacuum analyses `outbox` whenever enough rows changed, which is mostly while it is
drained: the statistics then say no row is pending. A backlog (a first import, a Global
Update over every invoice, the end of a CRM outage) arrives after that. The dispatcher's
claim must not depend on the planner noticing.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.support import Service, connected, eventually, fetchval, migrated_postgres

pytestmark = pytest.mark.faults

INVOICES = 50_000
# Invoices that get a second change while the first still waits: only the newer is sent.
TWICE = 5_000


async def test_a_backlog_created_after_the_outbox_was_analysed_empty_drains_in_seconds() -> None:
    async with migrated_postgres() as pg:
        async with connected(pg.url) as conn:
            # The statistics stay as they were taken (drained), as between autovacuum runs.
            await conn.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
            await conn.execute(
                """
                INSERT INTO outbox (invoice_number, payload, source, state, delivered_at)
                SELECT 'INV-' || g, '{"status": "Unpaid", "outstanding": "100.00"}', 'sync',
                       'delivered', now()
                FROM generate_series(1, $1) AS g
                """,
                INVOICES,
            )
            await conn.execute("VACUUM ANALYZE outbox")
            assert await conn.fetchval("SELECT count(*) FROM outbox WHERE state = 'pending'") == 0
            # The Global Update: every invoice changes at once, some of them twice.
            await conn.execute(
                """
                INSERT INTO outbox (invoice_number, payload, source)
                SELECT 'INV-' || g, '{"status": "Written Off", "outstanding": "0.00"}', 'bulk'
                FROM generate_series(1, $1) AS g
                """,
                INVOICES,
            )
            await conn.execute(
                """
                INSERT INTO outbox (invoice_number, payload, source)
                SELECT 'INV-' || g, '{"status": "Paid", "outstanding": "0.00"}', 'bulk'
                FROM generate_series(1, $1) AS g
                """,
                TWICE,
            )
        pending = INVOICES + TWICE
        assert await fetchval(pg.url, "SELECT count(*) FROM outbox WHERE state = 'pending'") == (
            pending
        )

        started = time.monotonic()
        with Service(pg.url, command="worker"):

            async def drained() -> bool:
                left: int = await fetchval(
                    pg.url, "SELECT count(*) FROM outbox WHERE state = 'pending'"
                )
                return left == 0

            # Before the claim was reshaped, this backlog took many minutes (the claim alone
            # scanned every pending row once per pending row).
            await eventually(drained, within=90, what=f"{pending} pending messages delivered")
        elapsed = time.monotonic() - started
        print(f"\n{pending} messages over {INVOICES} invoices drained in {elapsed:.1f} s")

        async with connected(pg.url) as conn:
            states = dict(
                await conn.fetch(
                    "SELECT state, count(*) FROM outbox WHERE source = 'bulk' GROUP BY state"
                )
            )
            # The newest change of each invoice delivered, the older one it replaced superseded.
            assert states == {"delivered": INVOICES, "superseded": TWICE}
            stale = await conn.fetchval(
                """
                SELECT count(*) FROM outbox
                WHERE state = 'delivered' AND source = 'bulk'
                  AND payload->>'status' = 'Written Off'
                  AND substr(invoice_number, 5)::int <= $1
                """,
                TWICE,
            )
            assert stale == 0
