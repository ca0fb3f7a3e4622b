"""The console's invoice page counts each allocation as the reconcile counts it."""

from __future__ import annotations

import re

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.console.support import SignIn
from tests.support.factories import allocation, deliver, in_currency, reconcile, settle, si
from tests.support.keys import READ_KEY

# $1,600 invoiced at 1.25 (1,280.00) and paid in full at 1.28 (1,250.00): Sage clears the
# 30.00 the receipt fell short by with a REVAL SC on the exchange variance nominal
# (docs/CURRENCY.md, "Exchange revaluations").
REVALUED = [
    si(
        2,
        "30002",
        "1280.00",
        account="YANK01",
        day="2026-09-01",
        details="Consultancy",
        **in_currency("1600.00"),
    ),
    settle(
        11,
        "SR",
        [allocation(2, "1250.00", foreign_amount="1600.00")],
        account="YANK01",
        day="2026-09-01",
        reference="BACS",
        details="Sales Receipt",
        nominal="1210",
        **in_currency("1600.00"),
    ),
    settle(
        12,
        "SC",
        [allocation(2, "30.00", foreign_amount="0.00")],
        account="YANK01",
        day="2026-09-01",
        reference="REVAL",
        details="Currency Reval 30.00 to SI 2",
        nominal="7906",
        **in_currency("0.00"),
    ),
]


async def test_a_revaluation_shows_as_an_exchange_adjustment(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, sign_in: SignIn
) -> None:
    delivered = await deliver(client, *REVALUED)
    assert delivered.status_code == 202, delivered.text
    await reconcile(engine, settings)

    page = (await (await sign_in(READ_KEY)).get("/console/invoices/30002")).text
    rows = {
        cells[1]: cells[-1]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.DOTALL)
        if len(cells := re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)) == 8
    }
    assert rows == {"SI": "the invoice", "SR": "paid", "SC": "exchange adjustment"}
