"""Postings as the exporter sends them, and posting them signed, for the ingest tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from tests.support.webhooks import signed_request

WEBHOOK = "/v1/webhooks/sage/postings"


def si(tran: int, ref: str, gross: str = "120.00", **extra: Any) -> dict[str, Any]:
    return {
        "tran_number": tran,
        "type": "SI",
        "account_ref": "ACME01",
        "reference": ref,
        "date": "2026-01-05",
        "details": "Widgets",
        "nominal_code": "4000",
        "net_amount": gross,
        "tax_amount": "0.00",
        "gross_amount": gross,
        **extra,
    }


def sr(tran: int, *allocations: tuple[int, str], **extra: Any) -> dict[str, Any]:
    """A receipt allocated to the given (invoice tran_number, amount) pairs."""
    total = str(sum((Decimal(amount) for _, amount in allocations), Decimal("0.00")))
    posting: dict[str, Any] = {
        "tran_number": tran,
        "type": "SR",
        "account_ref": "ACME01",
        "reference": "BACS",
        "date": "2026-02-01",
        "details": "Payment",
        "nominal_code": "1200",
        "net_amount": total,
        "tax_amount": "0.00",
        "gross_amount": total,
        "allocations": [{"invoice_tran_number": t, "amount": a} for t, a in allocations],
    }
    posting.update(extra)
    return posting


async def deliver(
    client: httpx.AsyncClient, *postings: dict[str, Any], **signing: Any
) -> httpx.Response:
    body, headers = signed_request({"source": "tests", "postings": list(postings)}, **signing)
    return await client.post(WEBHOOK, content=body, headers=headers)
