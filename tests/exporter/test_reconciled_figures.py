"""The fixture company pushed by the exporter into the real service (its app, on PostgreSQL)
and reconciled: every invoice ends with the currency, status, outstanding and four figures
Sage's own ledger implies, with no mismatch. Sage's OUTSTANDING alone would hide misattributed
money, so the figures are compared, not just the statuses.

The company has a customer in US dollars (an invoice part paid, one paid in full at another
rate with Sage's REVAL SC allocated to it), a contra entry, and a cleared year that only the
AUDIT_HISTORY_* exports hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from ledgerlink_exporter.client import Signer, WebhookClient
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import PushReport, plan_push, run_push
from ledgerlink_exporter.sage import SageExport

from tests.exporter.ledger import (
    CLEARED,
    FIXTURE_BASE,
    FIXTURE_LEDGER,
    base_views,
    live_views,
    mismatched,
    sync_and_read,
)
from tests.exporter.sage_files import FILES, Rows, altered
from tests.support.webhooks import TEST_SECRET


async def push(client: httpx.AsyncClient, export: SageExport) -> PushReport:
    plan = plan_push(export, None, batch_size=7)
    sender = WebhookClient(client, str(client.base_url), Signer.from_secret(TEST_SECRET))
    report = await run_push(plan, sender.deliver)
    assert report.error is None
    return report


async def test_the_fixture_company_reconciles_to_its_ledger(client: httpx.AsyncClient) -> None:
    report = await push(client, read_export(*FILES, history=True))
    assert report.postings_applied == 33

    invoices = await sync_and_read(client)
    assert live_views(invoices) == FIXTURE_LEDGER
    assert base_views(invoices) == FIXTURE_BASE
    assert mismatched(invoices) == []
    numbers = {item["invoice_number"] for item in invoices}
    assert "BADDBT" not in numbers, "the small-overpayment write-off SI is not an invoice"
    assert {item["invoice_number"] for item in invoices if item["deleted"]} == {"10006"}


def without(*headers: str) -> Callable[[str, Rows], None]:
    """Drops the rows of these header numbers (and their lines and allocations), as a later
    Clear Audit Trail takes them out of the live tables."""
    gone_splits: set[str] = set()

    def change(table: str, rows: Rows) -> None:
        if table == "AUDIT_HEADER":
            rows[:] = [row for row in rows if row["HEADER_NUMBER"] not in headers]
        elif table == "AUDIT_SPLIT":
            gone_splits.update(r["TRAN_NUMBER"] for r in rows if r["HEADER_NUMBER"] in headers)
            rows[:] = [row for row in rows if row["HEADER_NUMBER"] not in headers]
        else:
            rows[:] = [
                row
                for row in rows
                if not {row["SPLIT_NUMBER"], row["SPLIT_CROSSREF"]} & gone_splits
            ]

    return change


async def test_rows_absent_from_a_later_export_are_not_deletions(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Only DELETED_FLAG deletes. A later export without the cleared year (not read after the
    first load) and without FOXG06's invoices and receipt (cleared since) leaves them all as
    they were."""
    await push(client, read_export(*FILES, history=True))
    first: list[dict[str, Any]] = await sync_and_read(client)

    later = read_export(*altered(tmp_path, without("22", "23", "24")))
    assert {p.tran_number for p in later.postings} >= {1, 30, 32, 34}
    assert not {24, 25, 26, 39, 42} & {p.tran_number for p in later.postings}
    await push(client, later)
    again = await sync_and_read(client)

    assert live_views(again) == live_views(first) == FIXTURE_LEDGER
    assert {item["invoice_number"] for item in again if item["deleted"]} == {"10006"}
    assert {"10008", "10009", *CLEARED} <= {item["invoice_number"] for item in again}
    assert mismatched(again) == []
