"""The fixture company pushed by the exporter into the real service (its app, on PostgreSQL)
and reconciled: every invoice ends with the status, outstanding and four figures Sage's own
ledger implies, with no mismatch. Sage's OUTSTANDING alone would hide misattributed money, so
the figures are compared, not just the statuses."""

from __future__ import annotations

import datetime as dt

import httpx
from ledgerlink_exporter.client import Signer, WebhookClient
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import plan_push, run_push

from tests.exporter.ledger import FIXTURE_LEDGER, live_views, mismatched, sync_and_read
from tests.exporter.sage_files import FILES
from tests.support.webhooks import TEST_SECRET


async def test_the_fixture_company_reconciles_to_its_ledger(client: httpx.AsyncClient) -> None:
    plan = plan_push(read_export(*FILES), None, batch_size=7, lookback=dt.timedelta(0))
    sender = WebhookClient(client, str(client.base_url), Signer.from_secret(TEST_SECRET))
    report = await run_push(plan, sender.deliver)
    assert report.error is None
    assert report.postings_applied == 22

    invoices = await sync_and_read(client)
    assert live_views(invoices) == FIXTURE_LEDGER
    assert mismatched(invoices) == []
    numbers = {item["invoice_number"] for item in invoices}
    assert "BADDBT" not in numbers, "the small-overpayment write-off SI is not an invoice"
    assert {item["invoice_number"] for item in invoices if item["deleted"]} == {"10006"}
