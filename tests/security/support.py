"""Shared by the security tests: a small ledger delivered through the webhook."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from tests.support.factories import WRITE_OFF, deliver, settle, si

_trans = itertools.count(1)


def next_tran() -> int:
    return next(_trans)


async def seed_ledger(client: httpx.AsyncClient, invoices: int = 6) -> list[str]:
    """A few invoices: unpaid, part paid, paid, written off. Returns their numbers."""
    postings: list[dict[str, Any]] = []
    numbers = []
    for i in range(invoices):
        number = f"SEC-{i:04d}"
        numbers.append(number)
        tran = next_tran()
        postings.append(si(tran, number))
        if i % 4 == 1:
            postings.append(settle(next_tran(), "SR", [(tran, "20.00")]))
        elif i % 4 == 2:
            postings.append(settle(next_tran(), "SR", [(tran, "120.00")]))
        elif i % 4 == 3:
            postings.append(settle(next_tran(), "SC", [(tran, "120.00")], **WRITE_OFF))
    response = await deliver(client, *postings, source="security-tests")
    assert response.status_code == 202, response.text
    return numbers
