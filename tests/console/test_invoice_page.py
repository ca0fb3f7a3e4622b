"""The console's invoice page counts each allocation as the reconcile counts it."""

from __future__ import annotations

import re
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.reconcile.tasks import reconcile_all_dirty
from service.settings import Settings
from tests.conftest import READ_KEY
from tests.console.conftest import SignIn
from tests.support.webhooks import signed_request


def _usd(tran: int, type_: str, reference: str, pounds: str, dollars: str, **rest: Any) -> Any:
    return {
        "tran_number": tran,
        "type": type_,
        "account_ref": "YANK01",
        "reference": reference,
        "date": "2026-09-01",
        "net_amount": pounds,
        "tax_amount": "0.00",
        "gross_amount": pounds,
        "currency": "USD",
        "foreign_net_amount": dollars,
        "foreign_tax_amount": "0.00",
        "foreign_gross_amount": dollars,
        **rest,
    }


# $1,600 invoiced at 1.25 (1,280.00) and paid in full at 1.28 (1,250.00): Sage clears the
# 30.00 the receipt fell short by with a REVAL SC on the exchange variance nominal
# (docs/CURRENCY.md, "Exchange revaluations").
REVALUED = [
    _usd(2, "SI", "30002", "1280.00", "1600.00", details="Consultancy", nominal_code="4000"),
    _usd(
        11,
        "SR",
        "BACS",
        "1250.00",
        "1600.00",
        details="Sales Receipt",
        nominal_code="1210",
        allocations=[{"invoice_tran_number": 2, "amount": "1250.00", "foreign_amount": "1600.00"}],
    ),
    _usd(
        12,
        "SC",
        "REVAL",
        "30.00",
        "0.00",
        details="Currency Reval 30.00 to SI 2",
        nominal_code="7906",
        allocations=[{"invoice_tran_number": 2, "amount": "30.00", "foreign_amount": "0.00"}],
    ),
]


async def test_a_revaluation_shows_as_an_exchange_adjustment(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, sign_in: SignIn
) -> None:
    body, headers = signed_request({"source": "console-tests", "postings": REVALUED})
    delivered = await client.post("/v1/webhooks/sage/postings", content=body, headers=headers)
    assert delivered.status_code == 202, delivered.text
    await reconcile_all_dirty(engine, settings)

    page = (await (await sign_in(READ_KEY)).get("/console/invoices/30002")).text
    rows = {
        cells[1]: cells[-1]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.DOTALL)
        if len(cells := re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)) == 8
    }
    assert rows == {"SI": "the invoice", "SR": "paid", "SC": "exchange adjustment"}
