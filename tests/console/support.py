"""A small Sage company for the console and bad-debt tests, sent the way the exporter sends
it (signed webhook deliveries), and console sign-in over plain HTTP: its secret, and the
CSRF token of a form."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.support.factories import WEBHOOK, WRITE_OFF, Posting, reconcile, settle, si
from tests.support.webhooks import signed_request

CONSOLE_SECRET = "console-test-secret-0123456789abcdef"
# The `sign_in` fixture: a new browser-like client signed in with the key given.
SignIn = Callable[[str], Coroutine[Any, Any, httpx.AsyncClient]]

# INV-1001 written off in full (old), INV-1002 paid, INV-2001 part paid then written off
# (old), INV-2002 unpaid, INV-3001 written off recently (too young for VAT relief).
COMPANY: list[Posting] = [
    si(1, "INV-1001", "120.00", tax="20.00", day="2026-01-10"),
    si(2, "INV-1002", "240.00", tax="40.00", day="2026-10-01"),
    si(3, "INV-2001", "600.00", tax="100.00", account="BETA02", day="2026-02-01"),
    si(4, "INV-2002", "60.00", tax="10.00", account="BETA02", day="2026-10-15"),
    si(5, "INV-3001", "360.00", tax="60.00", account="GAMMA03", day="2026-11-01"),
    settle(11, "SC", [(1, "120.00")], reference="INV-1001", day="2026-09-30", **WRITE_OFF),
    settle(12, "SR", [(2, "240.00")], day="2026-10-20", details="Receipt"),
    settle(13, "SR", [(3, "100.00")], account="BETA02", day="2026-03-01", details="Receipt"),
    settle(
        14,
        "SC",
        [(3, "500.00")],
        account="BETA02",
        reference="BADDBT",
        day="2026-09-15",
        **WRITE_OFF,
    ),
    settle(
        15,
        "SC",
        [(5, "360.00")],
        account="GAMMA03",
        reference="INV-3001",
        day="2026-11-20",
        **WRITE_OFF,
    ),
]
WRITTEN_OFF = ["INV-1001", "INV-2001", "INV-3001"]


def company_delivery() -> tuple[bytes, dict[str, str]]:
    """The company as one signed delivery: POST it to /v1/webhooks/sage/postings."""
    return signed_request({"source": "console-tests", "postings": COMPANY})


async def load_company(client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> None:
    """Ingest the company through the webhook, then reconcile it."""
    body, headers = company_delivery()
    response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 202, response.text
    await reconcile(engine, settings)


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
        si(900 + n, number, "12.00", tax="2.00", account=ODD_ACCOUNT, day="2026-11-02")
        for n, number in enumerate(ODD_NUMBERS)
    ]
    return signed_request({"source": "console-tests", "postings": postings})
