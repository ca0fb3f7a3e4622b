"""A small Sage company for the console and bad-debt tests, sent the way the exporter sends
it (signed webhook deliveries), and console sign-in over plain HTTP."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.reconcile.tasks import reconcile_all_dirty
from service.settings import Settings
from tests.support.webhooks import signed_request

WRITE_OFF = {"nominal_code": "8100", "details": "Bad Debt Write Off"}


def _si(tran: int, ref: str, account: str, day: str, net: str, vat: str) -> dict[str, Any]:
    gross = str(Decimal(net) + Decimal(vat))
    return {
        "tran_number": tran,
        "type": "SI",
        "account_ref": account,
        "reference": ref,
        "date": day,
        "details": "Consulting",
        "nominal_code": "4000",
        "net_amount": net,
        "tax_amount": vat,
        "gross_amount": gross,
    }


def _settle(
    tran: int, type_: str, account: str, day: str, invoice_tran: int, amount: str, **extra: str
) -> dict[str, Any]:
    return {
        "tran_number": tran,
        "type": type_,
        "account_ref": account,
        "reference": extra.pop("reference", ""),
        "date": day,
        "details": extra.pop("details", "Receipt"),
        "nominal_code": extra.pop("nominal_code", "1200"),
        "net_amount": amount,
        "tax_amount": "0.00",
        "gross_amount": amount,
        "allocations": [{"invoice_tran_number": invoice_tran, "amount": amount}],
    }


# INV-1001 written off in full (old), INV-1002 paid, INV-2001 part paid then written off
# (old), INV-2002 unpaid, INV-3001 written off recently (too young for VAT relief).
COMPANY: list[dict[str, Any]] = [
    _si(1, "INV-1001", "ACME01", "2026-01-10", "100.00", "20.00"),
    _si(2, "INV-1002", "ACME01", "2026-10-01", "200.00", "40.00"),
    _si(3, "INV-2001", "BETA02", "2026-02-01", "500.00", "100.00"),
    _si(4, "INV-2002", "BETA02", "2026-10-15", "50.00", "10.00"),
    _si(5, "INV-3001", "GAMMA03", "2026-11-01", "300.00", "60.00"),
    _settle(11, "SC", "ACME01", "2026-09-30", 1, "120.00", reference="INV-1001", **WRITE_OFF),
    _settle(12, "SR", "ACME01", "2026-10-20", 2, "240.00"),
    _settle(13, "SR", "BETA02", "2026-03-01", 3, "100.00"),
    _settle(14, "SC", "BETA02", "2026-09-15", 3, "500.00", reference="BADDBT", **WRITE_OFF),
    _settle(15, "SC", "GAMMA03", "2026-11-20", 5, "360.00", reference="INV-3001", **WRITE_OFF),
]
WRITTEN_OFF = ["INV-1001", "INV-2001", "INV-3001"]


def company_delivery() -> tuple[bytes, dict[str, str]]:
    """The company as one signed delivery: POST it to /v1/webhooks/sage/postings."""
    return signed_request({"source": "console-tests", "postings": COMPANY})


async def load_company(client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> None:
    """Ingest the company through the webhook, then reconcile it."""
    body, headers = company_delivery()
    response = await client.post("/v1/webhooks/sage/postings", content=body, headers=headers)
    assert response.status_code == 202, response.text
    await reconcile_all_dirty(engine, settings)


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found is not None, html[:2000]
    return found.group(1)


# Invoice numbers (and an account) that a link built by pasting them into a URL would send
# elsewhere: dot segments, a slash, a query, a fragment, a percent sign.
ODD_ACCOUNT = "ODD/1?&#"
ODD_NUMBERS = ["..", ".", "A/B", "a?b#c", "50%2F", "x/../y", "..."]


def odd_delivery() -> tuple[bytes, dict[str, str]]:
    """One unpaid invoice for each of ODD_NUMBERS, as one signed delivery."""
    postings = [
        _si(900 + n, number, ODD_ACCOUNT, "2026-11-02", "10.00", "2.00")
        for n, number in enumerate(ODD_NUMBERS)
    ]
    return signed_request({"source": "console-tests", "postings": postings})
