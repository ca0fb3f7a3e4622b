"""A CRM outage end to end through a real `ledgerlink serve`: postings in by the webhook,
statuses out to the fake OpenCRM, which goes down, then answers 500s, then 429s.

tests/crm/test_outage.py drives the outbox directly (in-process worker) and also proves that
dead letters come only after the configured attempts; this one proves the whole pipeline in
one real process: nothing dropped, the latest change of every invoice delivered once the CRM
is back, each invoice's changes in order, no dead letter.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.faults.support import Service, connected, eventually, fetchval, migrated_postgres
from tests.support import fake_opencrm
from tests.support.factories import WEBHOOK, settle, si
from tests.support.fake_opencrm import FakeOpenCrm
from tests.support.webhooks import signed_request

pytestmark = pytest.mark.faults

INVOICES = 20
ACCOUNT = "CRM01"


class Books:
    """The Sage side: invoices and the postings that settle (or unsettle) them."""

    def __init__(self) -> None:
        self.numbers = [f"CRM-{i:03d}" for i in range(INVOICES)]
        self.si = {number: 1000 + i for i, number in enumerate(self.numbers)}
        self.next_tran = 100_000

    def invoices(self) -> list[dict[str, Any]]:
        return [si(self.si[n], n, "100.00", account=ACCOUNT) for n in self.numbers]

    def settle(self, kind: str, amount: str) -> list[dict[str, Any]]:
        postings = []
        for number in self.numbers:
            self.next_tran += 1
            postings.append(
                settle(
                    self.next_tran,
                    kind,
                    [(self.si[number], amount)],
                    account=ACCOUNT,
                    reference="BACS",
                )
            )
        return postings


async def test_a_crm_outage_loses_nothing_end_to_end() -> None:
    books = Books()
    fake = FakeOpenCrm()
    fake.start()
    for number in books.numbers:
        fake.add_invoice(number, status="Unpaid", outstanding="100.00")
    try:
        async with migrated_postgres() as pg:
            service = Service(
                pg.url,
                crm_mode="opencrm",
                opencrm_base_url=fake.base_url,
                opencrm_key=fake_opencrm.KEY,
                opencrm_passkey=fake_opencrm.PASSKEY,
                opencrm_outstanding_field=fake_opencrm.OUTSTANDING_FIELD,
                opencrm_timeout_seconds="2",
                crm_retry_base_seconds="0.05",
                crm_retry_max_seconds="0.5",
                crm_max_attempts="100",
            )
            await asyncio.to_thread(service.start)
            try:
                async with httpx.AsyncClient(base_url=service.base_url) as http:

                    async def push(postings: list[dict[str, Any]]) -> None:
                        body, headers = signed_request({"postings": postings})
                        response = await http.post(WEBHOOK, content=body, headers=headers)
                        assert response.status_code == 202, response.text

                    async def delivered(status: str, outstanding: str) -> None:
                        async def shown() -> bool:
                            return all(
                                (
                                    fake.invoice(n)[fake_opencrm.STATUS_FIELD],
                                    fake.invoice(n)[fake_opencrm.OUTSTANDING_FIELD],
                                )
                                == (status, outstanding)
                                for n in books.numbers
                            ) and await _outbox_settled(pg.url)

                        await eventually(shown, within=60, what=f"CRM shows {status}")

                    await push(books.invoices())
                    await eventually(
                        lambda: _outbox_rows(pg.url, INVOICES), within=30, what="first sync"
                    )
                    await eventually(
                        lambda: _outbox_settled(pg.url), within=30, what="first sync sent"
                    )

                    # Down: connections refused while two rounds of payments come in.
                    fake.stop()
                    await push(books.settle("SR", "40.00"))
                    await eventually(
                        lambda: _retrying(pg.url), within=30, what="deliveries retrying"
                    )
                    await push(books.settle("SR", "60.00"))
                    await eventually(
                        lambda: _outbox_rows(pg.url, INVOICES * 3), within=30, what="queued"
                    )
                    await asyncio.sleep(1.0)  # a few more refused attempts
                    assert fake.edits == []
                    fake.start()
                    await delivered("Paid", "0.00")

                    # 500s for a while: the refunds (back to unpaid) wait, then arrive.
                    fake.fail_next(10, 500)
                    await push(books.settle("SP", "100.00"))
                    await delivered("Unpaid", "100.00")

                    # Throttled: 429 with Retry-After, then served.
                    fake.fail_next(4, 429, retry_after="1")
                    await push(books.settle("SR", "100.00"))
                    await delivered("Paid", "0.00")
            finally:
                await asyncio.to_thread(service.stop)

            async with connected(pg.url) as conn:
                states = dict(await conn.fetch("SELECT state, count(*) FROM outbox GROUP BY 1"))
                ours = {
                    number: [
                        (r["status"], r["outstanding"])
                        for r in await conn.fetch(
                            "SELECT payload->>'status' AS status, "
                            "payload->>'outstanding' AS outstanding "
                            "FROM outbox WHERE invoice_number = $1 ORDER BY id",
                            number,
                        )
                    ]
                    for number in books.numbers
                }
    finally:
        fake.stop()

    assert set(states) <= {"delivered", "superseded"}, states
    assert sum(call.answered == 500 for call in fake.calls()) == 10
    assert sum(call.answered == 429 for call in fake.calls()) == 4
    for number in books.numbers:
        seen = [(e.status, e.outstanding) for e in fake.edits_for(number)]
        # Every edit the CRM got is one of ours, in our order; the last one is the latest.
        assert _is_subsequence(seen, ours[number]), (seen, ours[number])
        assert seen[-3:] == [("Paid", "0.00"), ("Unpaid", "100.00"), ("Paid", "0.00")]
    assert all(call.credentials_ok for call in fake.calls())
    assert fake.created == []
    print(
        f"CRM outage: {INVOICES} invoices, {sum(len(v) for v in ours.values())} changes, "
        f"{len(fake.edits)} edits delivered, states {states}, "
        f"{len(fake.calls())} CRM calls (10 answered 500, 4 answered 429), 0 dead letters"
    )


def _is_subsequence(seen: list[Any], ours: list[Any]) -> bool:
    remaining = iter(ours)
    return all(any(item == candidate for candidate in remaining) for item in seen)


async def _outbox_rows(url: str, count: int) -> bool:
    return int(await fetchval(url, "SELECT count(*) FROM outbox")) >= count


async def _outbox_settled(url: str) -> bool:
    pending = await fetchval(
        url, "SELECT count(*) FROM outbox WHERE state NOT IN ('delivered', 'superseded')"
    )
    dirty = await fetchval(url, "SELECT count(*) FROM dirty_invoices")
    return int(pending) == 0 and int(dirty) == 0


async def _retrying(url: str) -> bool:
    return int(await fetchval(url, "SELECT coalesce(max(attempts), 0) FROM outbox")) >= 2
