"""Read-back: statuses (and balances) a person set in OpenCRM come back into ledgerlink.

A worker task. Every `LEDGERLINK_CRM_READBACK_SECONDS` a scan pages through OpenCRM's invoice
list, one page of at most 100 per transaction: lock the cursor row (FOR UPDATE SKIP LOCKED, so
one worker reads at a time), read the page, apply it, move the cursor, commit. A worker killed
mid-page leaves the cursor where it was; the next one reads that page again (applying a page
twice changes nothing).

With `LEDGERLINK_OPENCRM_MODIFIED_FIELD` set, a scan only asks for invoices modified since the
last modification time seen, one day at a time (`FIELD|BEGINS|YYYY-MM-DD`: OpenCRM's filters
know `=`, `LIKE`, `BEGINS`, `ENDS` and `CONTAINS`, no comparison; Jacobomara901/opencrm_api,
`src/opencrm/utils/query.py`). If the CRM ignores that filter the scan reads everything.

What a page teaches:
- a protected status ("Written Off") is adopted at once: the invoice takes it, with a history
  row (source `crm`, actor `opencrm`); from then on syncs leave it alone;
- everything seen is remembered in `crm_invoices`; an unprotected difference from our status
  or balance is CRM drift, listed by `GET /v1/reconciliation/report?kind=crm_drift`;
- every status value seen feeds the picklist verification's `observed_in_crm`;
- record ids are cached on the invoices, so deliveries never search for them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.crm import repository as repo
from service.crm.client import CrmError, CrmHalt, CrmInvoice, CrmUnavailable
from service.crm.connector import OpenCrmConnector, parse_amount
from service.crm.service import RetryPolicy, build_opencrm_connector
from service.logging import get_logger
from service.metrics import CRM_READBACK
from service.settings import Settings
from service.transaction import run_in_transaction

log = get_logger(__name__)

ADOPTED_REASON = (
    "set to '%s' in OpenCRM by a person (found by read-back); protected, so syncs leave it"
)


class ReadBack:
    def __init__(
        self,
        engine: AsyncEngine,
        connector: OpenCrmConnector,
        policy: RetryPolicy,
        *,
        interval: float,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self.engine = engine
        self.connector = connector
        self.policy = policy
        self.interval = interval
        self._today = today

    async def run_once(self) -> int:
        """Read and apply one page when one is due; return how many records it held, at least
        1 while the scan goes on (0 = nothing due)."""
        read = await run_in_transaction(self.engine, self._read_page)
        if read is None:
            return 0
        count, finished = read
        CRM_READBACK.labels("read").inc(count)
        if finished:
            log.info("crm.readback.finished")
        return count if finished else max(1, count)

    async def _read_page(self, conn: AsyncConnection) -> tuple[int, bool] | None:
        """One page, applied and the cursor advanced: (records, scan finished), or None when
        none was due or the CRM failed."""
        state = await repo.claim_readback(conn, interval=self.interval)
        if state is None:
            return None
        day = state.scan_day if state.scan_started_at else self._first_day(state)
        start = state.page_start if state.scan_started_at else 0
        deciding = await repo.people_deciding(conn)
        try:
            page = await self._page(day, start)
            views = self._views(page)
        except CrmError as exc:
            await self._failed(conn, state, exc)
            return None
        modified = await self._apply(conn, views, deciding)
        last_modified = max([m for m in (state.last_modified, modified) if m], default=None)
        if day is not None and any(not self._on_day(r, day) for r in page):
            # The CRM ignored the filter: this page is the whole list; read it all.
            log.warning("crm.readback.filter_ignored", field=self.connector.fields.modified)
            day = None
        finished, day, start = self._next(day, start, len(page))
        await repo.advance_readback(
            conn, scan_day=day, page_start=start, last_modified=last_modified, finished=finished
        )
        return len(page), finished

    def _first_day(self, state: repo.ReadbackState) -> date | None:
        """Where a new scan starts: the day of the last modification seen (None: everything)."""
        if not self.connector.fields.modified or not state.last_modified:
            return None
        try:
            return date.fromisoformat(state.last_modified[:10])
        except ValueError:
            return None

    async def _page(self, day: date | None, start: int) -> list[CrmInvoice]:
        fields = self.connector.fields
        query = f"{fields.modified}|BEGINS|{day.isoformat()}" if day and fields.modified else None
        return await self.connector.client.list_page(
            start=start, size=fields.page_size, query=query, method=fields.list_method
        )

    def _next(self, day: date | None, start: int, count: int) -> tuple[bool, date | None, int]:
        """(finished, day, start) after a page of `count` records."""
        if count >= self.connector.fields.page_size:
            return False, day, start + count
        # The CRM's clock may be ahead of ours (UK time): tomorrow is read too.
        if day is not None and day <= self._today():
            return False, day + timedelta(days=1), 0
        return True, None, 0

    def _on_day(self, record: CrmInvoice, day: date) -> bool:
        modified = self._modified(record)
        return modified is not None and modified.startswith(day.isoformat())

    def _modified(self, record: CrmInvoice) -> str | None:
        name = self.connector.fields.modified
        return record.text(name) or None if name else None

    async def _apply(
        self, conn: AsyncConnection, views: list[repo.CrmView], deciding: list[str]
    ) -> str | None:
        """Adopt, remember, observe; return the latest modification time on the page."""
        protected = {
            v.invoice_number: kept
            for v in views
            if (kept := self.connector.protected(v.status)) is not None
        }
        adopted = await repo.adopt_protected(
            conn, protected, deciding=deciding, reason=ADOPTED_REASON
        )
        await repo.remember_crm_views(conn, views)
        await repo.cache_crm_ids(
            conn, {v.invoice_number: v.crm_id for v in views if v.crm_id is not None}
        )
        await repo.observe_statuses(conn, dict(Counter(v.status for v in views if v.status)))
        if adopted:
            CRM_READBACK.labels("adopted").inc(len(adopted))
            log.info("crm.readback.adopted", invoices=adopted[:20], count=len(adopted))
        return max((v.modified for v in views if v.modified), default=None)

    def _views(self, page: list[CrmInvoice]) -> list[repo.CrmView]:
        """One view per invoice number; a number on two CRM records is ambiguous and skipped."""
        fields = self.connector.fields
        by_number: dict[str, list[CrmInvoice]] = {}
        for record in page:
            number = self.connector.number_of(record)
            if number:
                by_number.setdefault(number, []).append(record)
        views = []
        for number, records in by_number.items():
            if len(records) > 1:
                log.warning("crm.readback.ambiguous", invoice_number=number, records=len(records))
                continue
            record = records[0]
            outstanding = record.text(fields.outstanding) if fields.outstanding else None
            views.append(
                repo.CrmView(
                    invoice_number=number,
                    crm_id=record.crm_id or None,
                    status=record.text(fields.status) or None,
                    outstanding=parse_amount(outstanding),
                    modified=self._modified(record),
                )
            )
        return views

    async def _failed(
        self, conn: AsyncConnection, state: repo.ReadbackState, exc: CrmError
    ) -> None:
        if isinstance(exc, CrmHalt):
            delay = self.policy.auth_recheck_seconds
        else:
            retry_after = exc.retry_after if isinstance(exc, CrmUnavailable) else None
            delay = self.policy.delay(state.failures + 1, retry_after)
        await repo.readback_failed(conn, error=str(exc), delay=delay)
        CRM_READBACK.labels("failed").inc()
        log.warning("crm.readback.failed", error=str(exc), retry_in_seconds=round(delay, 3))


def build_readback(settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient) -> ReadBack:
    return ReadBack(
        engine,
        build_opencrm_connector(settings, http),
        RetryPolicy.from_settings(settings),
        interval=settings.crm_readback_seconds,
    )
