"""The whole product, end to end, in real processes: `ledgerlink-exporter demo` pushes a
generated Sage company (Sage's own numbering, multi-line invoices and receipts, mirrored and
zeroed usage rows) to a running `ledgerlink serve`, whose worker reconciles it; every invoice
must end with the status its scenario intends (write-offs told apart from payments) and the
paid / discounted / written-off / credited / outstanding figures the demo's ledger holds, in
the invoice's currency (its US-dollar customer's in dollars, Sage's revaluation an exchange
adjustment, not a credit), with no mismatch against Sage's OUTSTANDING in either currency.
The cleared year, pushed only by the first (first-load) export, stays after the second."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from ledgerlink_demo.company import generate_company
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.processes import FAULT_KEY, LedgerlinkProcess
from tests.support.webhooks import TEST_SECRET

CUSTOMERS = 12
SEED = 7


async def test_demo_company_ends_with_the_intended_statuses(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    company = generate_company(customers=CUSTOMERS, seed=SEED)
    intended = company.intended_statuses()
    assert {"Written Off", "Paid/Written Off", "Paid", "Part Paid", "Unpaid"} <= set(
        intended.values()
    )

    with LedgerlinkProcess(database_url) as service:
        # The demo is a separate process talking HTTP, like a user's terminal; run it off the
        # event loop so the test's own database fixtures stay responsive.
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "ledgerlink_exporter",
                "demo",
                "--url",
                service.base_url,
                "--customers",
                str(CUSTOMERS),
                "--seed",
                str(SEED),
                "--secret",
                TEST_SECRET,
                "--api-key",
                FAULT_KEY,
                "--out",
                str(tmp_path / "demo"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Written Off" in result.stdout

    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT invoice_number, status, deleted, mismatch, gross, paid, discounted,"
                    " written_off, credited, outstanding, coalesce(currency, 'GBP') AS currency,"
                    " exchange_adjustment FROM invoices ORDER BY 1"
                )
            )
        ).all()
        write_off_si_invoices = (
            await conn.execute(
                sa.text("SELECT count(*) FROM invoices WHERE sage_tran_number = ANY(:t)"),
                {"t": list(company.write_off_invoices)},
            )
        ).scalar_one()
    live = [row for row in rows if not row.deleted]
    assert {row.invoice_number: row.status for row in live} == intended
    assert set(company.cleared_invoices) <= {row.invoice_number for row in live}
    assert {row.currency for row in live} == {"GBP", "USD"}
    assert [row.invoice_number for row in live if row.mismatch] == []
    expected = {
        invoice.invoice_number: (
            f.gross,
            f.paid,
            f.discounted,
            f.written_off,
            f.credited,
            f.outstanding,
            f.currency,
            f.exchange_adjustment,
        )
        for invoice in company.invoices
        for f in [invoice.figures]
    }
    actual = {
        row.invoice_number: (
            row.gross,
            row.paid,
            row.discounted,
            row.written_off,
            row.credited,
            row.outstanding,
            row.currency,
            row.exchange_adjustment,
        )
        for row in live
    }
    assert actual == expected
    assert {row.invoice_number for row in rows if row.deleted} == set(company.deleted_invoices)
    assert write_off_si_invoices == 0, "a small-overpayment write-off SI became an invoice"
