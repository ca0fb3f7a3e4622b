"""Read-back: statuses (and balances) a person set in OpenCRM come back into ledgerlink.

A worker task. Every `LEDGERLINK_CRM_READBACK_SECONDS` a scan pages through OpenCRM's invoice
list, one page of at most 100 per pass, with no transaction open while OpenCRM answers: lease
the cursor row (a short transaction: FOR UPDATE SKIP LOCKED, a token, not due again until the
lease runs out, so one worker reads at a time), read the page, then in a second short
transaction apply it and move the cursor, only while the lease is still ours. A worker killed
mid-page leaves the cursor where it was; once the lease runs out the next one reads that page
again (applying a page twice changes nothing). A worker stopped mid-page hands it back at once.

With `LEDGERLINK_OPENCRM_MODIFIED_FIELD` set, a scan only asks for invoices modified since the
last modification time seen, one day at a time (`FIELD|BEGINS|YYYY-MM-DD`: OpenCRM's filters
know `=`, `LIKE`, `BEGINS`, `ENDS` and `CONTAINS`, no comparison; Jacobomara901/opencrm_api,
`src/opencrm/utils/query.py`). If the CRM ignores that filter the scan reads everything.

What a page teaches:
- a protected status ("Written Off", any case) is adopted at once: the invoice takes it, with
  a history row (source `crm`, actor `opencrm`), and is queued for reconciliation, so that
  where Sage disagrees (the invoice is paid) the conflict shows at once; from then on syncs
  leave it alone;
- everything seen is remembered in `crm_invoices`; an unprotected difference from our status
  or balance is CRM drift, listed by `GET /v1/reconciliation/report?kind=crm_drift`;
- every status value seen feeds the picklist verification's `observed_in_crm`;
- record ids are cached on the invoices, so deliveries never search for them.

A record that cannot be stored (a status longer than the column, a NUL, a lone surrogate, an
object where text belongs) is skipped and reported (log, metric, `/readyz`); the rest of the
page is applied and the cursor moves on. An unreadable balance is stored as unknown (NULL).
A CRM that answers the same page again (it ignores `limit_start`), a scan past
`LEDGERLINK_OPENCRM_MAX_PAGES` pages, a CRM error or a page that cannot be stored fail the
attempt: the scan backs off exponentially and `/readyz` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.crm.client import CrmInvoice, page_ids, paging_ignored, too_many_pages
from service.crm.connector import OpenCrmConnector, parse_amount, text_problem
from service.crm.errors import CrmError, CrmHalt, CrmPagingBroken, CrmUnavailable
from service.crm.lease import Lease
from service.crm.models import CRM_ID_LENGTH, INVOICE_NUMBER_LENGTH, MODIFIED_LENGTH, STATUS_LENGTH
from service.crm.repository import adoption, cursor, health, views
from service.crm.service import DEFAULT_LEASE_SECONDS, RetryPolicy, build_opencrm_connector
from service.logging import get_logger
from service.metrics import CRM_READBACK
from service.settings import Settings
from service.transaction import run_in_transaction

log = get_logger(__name__)

ADOPTED_REASON = (
    "set to '%s' in OpenCRM by a person (found by read-back); protected, so syncs leave it"
)
# A page must be read and applied by this share of the lease, counted from before the claim.
_READ_SHARE_OF_LEASE = 0.8
_MAX_REASON = 200


@dataclass
class _Page:
    """What one page of records comes to: one view per invoice, and what had to be left out."""

    views: list[views.CrmView] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unreadable_amounts: int = 0


class ReadBack:
    def __init__(
        self,
        engine: AsyncEngine,
        connector: OpenCrmConnector,
        policy: RetryPolicy,
        *,
        interval: float,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self.engine = engine
        self.connector = connector
        self.policy = policy
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._today = today

    async def run_once(self) -> int:
        """Read and apply one page when one is due; return how many records it held, at least
        1 while the scan goes on (0 = nothing due, or the attempt failed)."""
        lease = Lease.new(self.lease_seconds)
        deadline = asyncio.get_running_loop().time() + self.lease_seconds * _READ_SHARE_OF_LEASE

        async def claim(conn: AsyncConnection) -> tuple[cursor.ReadbackState, list[str]] | None:
            state = await cursor.claim_readback(conn, interval=self.interval, lease=lease)
            if state is None:
                return None
            # Read before the CRM is: a person's change delivered while the page is read was
            # decided after what the page shows.
            return state, await adoption.invoices_with_undelivered_edits(conn)

        claimed = await run_in_transaction(self.engine, claim)
        if claimed is None:
            return 0
        state, edited = claimed
        try:
            read = await self._read_page(state, edited, lease, deadline)
        except BaseException:
            # Stopped mid-page (a shutdown): hand the cursor back now, not when the lease ends.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release(lease))
            raise
        if read is None:
            return 0
        count, finished = read
        CRM_READBACK.labels("read").inc(count)
        if finished:
            log.info("crm.readback.finished")
        return count if finished else max(1, count)

    async def _read_page(
        self, state: cursor.ReadbackState, edited: list[str], lease: Lease, deadline: float
    ) -> tuple[int, bool] | None:
        """One page read, applied and the cursor advanced: (records, scan finished), or None
        when the attempt failed (recorded, with its backoff) or the lease was lost."""
        scanning = state.scan_started_at is not None
        day = state.scan_day if scanning else self._first_day(state)
        start = state.page_start if scanning else 0
        if scanning and state.pages >= self.connector.client.max_pages:
            exc = too_many_pages(self.connector.fields.list_method, state.pages)
            await self._failed(state, lease, str(exc), restart=True)
            return None
        try:
            async with asyncio.timeout_at(deadline):
                page = await self._page(day, start)
            read = self._read(page)
        except TimeoutError:
            await self._failed(state, lease, "no page within the lease (CRM_LEASE_SECONDS)")
            return None
        except CrmError as exc:
            await self._failed(state, lease, str(exc), exc=exc)
            return None
        except Exception as exc:  # an answer nothing foresaw: back off all the same
            log.exception("crm.readback.unexpected")
            await self._failed(state, lease, f"unexpected {type(exc).__name__}: {exc}")
            return None
        digest = _digest(page)
        if scanning and start > 0 and digest == state.page_digest:
            ignored = paging_ignored(self.connector.fields.list_method, start)
            await self._failed(state, lease, str(ignored), exc=ignored)
            return None
        if day is not None and any(not self._on_day(r, day) for r in page):
            # The CRM ignored the filter: this page is the whole list; read it all.
            log.warning("crm.readback.filter_ignored", field=self.connector.fields.modified)
            day = None
        finished, next_day, next_start = self._next(day, start, len(page))

        async def apply(conn: AsyncConnection) -> bool:
            if not await cursor.hold_readback(conn, lease):
                return False
            modified = await self._apply(conn, read.views, edited)
            last_modified = max([m for m in (state.last_modified, modified) if m], default=None)
            await cursor.advance_readback(
                conn,
                scan_day=next_day,
                page_start=next_start,
                last_modified=last_modified,
                finished=finished,
                # Only a page of the same list can repeat this one.
                page_digest=digest if next_start > 0 else None,
                skipped=cursor.Skipped(
                    len(read.skipped), read.skipped[-1] if read.skipped else None
                ),
            )
            if start > 0:
                await health.record_paging(conn, None)  # a next page, not the same one again
            return True

        try:
            applied = await run_in_transaction(self.engine, apply)
        except Exception as exc:  # the page cannot be stored: back off, as for a CRM error
            error = f"a page could not be stored: {_database_error(exc)}"
            if isinstance(exc, sa.exc.DBAPIError):
                # Not log.exception: the statement's parameters are the page's records.
                log.error("crm.readback.apply_failed", error=error)
            else:
                log.exception("crm.readback.apply_failed", error=error)
            await self._failed(state, lease, error)
            return None
        if not applied:
            log.warning("crm.readback.lease_lost", lease_seconds=self.lease_seconds)
            return None
        self._report(read)
        return len(page), finished

    def _first_day(self, state: cursor.ReadbackState) -> date | None:
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
        self, conn: AsyncConnection, seen: list[views.CrmView], edited: list[str]
    ) -> str | None:
        """Adopt, remember, observe; return the latest modification time on the page."""
        protected = {
            v.invoice_number: kept
            for v in seen
            if (kept := self.connector.protected(v.status)) is not None
        }
        adopted = await adoption.adopt_protected(
            conn, protected, edited=edited, reason=ADOPTED_REASON
        )
        await views.remember_crm_views(conn, seen)
        await views.cache_crm_ids(
            conn, {v.invoice_number: v.crm_id for v in seen if v.crm_id is not None}
        )
        await views.observe_statuses(conn, dict(Counter(v.status for v in seen if v.status)))
        if adopted:
            CRM_READBACK.labels("adopted").inc(len(adopted))
            log.info("crm.readback.adopted", invoices=adopted[:20], count=len(adopted))
        return max((v.modified for v in seen if v.modified), default=None)

    def _read(self, page: list[CrmInvoice]) -> _Page:
        """One view per invoice number. A record that cannot be stored is skipped; a number
        on two CRM records is ambiguous and skipped (the dispatcher edits neither)."""
        fields = self.connector.fields
        read = _Page()
        by_number: dict[str, list[CrmInvoice]] = {}
        for record in page:
            number = self.connector.number_of(record)
            bad_number = text_problem(
                record.fields.get(fields.number_record), limit=INVOICE_NUMBER_LENGTH
            )
            if bad_number is not None:
                read.skipped.append(_reason(record, None, fields.number_record, bad_number))
            elif number:
                by_number.setdefault(number, []).append(record)
        for number, records in by_number.items():
            if len(records) > 1:
                log.warning("crm.readback.ambiguous", invoice_number=number, records=len(records))
                continue
            record = records[0]
            unstorable = self._unstorable(record)
            if unstorable is not None:
                read.skipped.append(_reason(record, number, *unstorable))
                continue
            raw_amount = record.fields.get(fields.outstanding) if fields.outstanding else None
            outstanding = parse_amount(raw_amount)
            if outstanding is None and raw_amount not in (None, ""):
                read.unreadable_amounts += 1
                log.info("crm.readback.amount_unreadable", invoice_number=number)
            read.views.append(
                views.CrmView(
                    invoice_number=number,
                    crm_id=record.crm_id or None,
                    status=record.text(fields.status) or None,
                    outstanding=outstanding,
                    modified=self._modified(record),
                )
            )
        return read

    def _unstorable(self, record: CrmInvoice) -> tuple[str, str] | None:
        """(field, problem) of the first field of `record` that cannot be stored."""
        fields = self.connector.fields
        checks: list[tuple[str, Any, int]] = [
            ("crmid", record.crm_id, CRM_ID_LENGTH),
            (fields.status, record.fields.get(fields.status), STATUS_LENGTH),
        ]
        if fields.modified:
            checks.append((fields.modified, record.fields.get(fields.modified), MODIFIED_LENGTH))
        for name, value, limit in checks:
            problem = text_problem(value, limit=limit)
            if problem is not None:
                return name, problem
        return None

    def _report(self, read: _Page) -> None:
        if read.skipped:
            CRM_READBACK.labels("skipped").inc(len(read.skipped))
            log.warning("crm.readback.skipped", count=len(read.skipped), last=read.skipped[-1])
        if read.unreadable_amounts:
            CRM_READBACK.labels("amount_unreadable").inc(read.unreadable_amounts)

    async def _failed(
        self,
        state: cursor.ReadbackState,
        lease: Lease,
        error: str,
        *,
        exc: CrmError | None = None,
        restart: bool = False,
    ) -> None:
        if isinstance(exc, CrmHalt):
            delay = self.policy.auth_recheck_seconds
        else:
            retry_after = exc.retry_after if isinstance(exc, CrmUnavailable) else None
            delay = self.policy.delay(state.failures + 1, retry_after)

        async def record(conn: AsyncConnection) -> None:
            await cursor.readback_failed(
                conn, lease=lease, error=error, delay=delay, restart=restart
            )
            if isinstance(exc, CrmPagingBroken):
                await health.record_paging(conn, error)

        await run_in_transaction(self.engine, record)
        CRM_READBACK.labels("failed").inc()
        log.warning("crm.readback.failed", error=error, retry_in_seconds=round(delay, 3))

    async def _release(self, lease: Lease) -> None:
        async def release(conn: AsyncConnection) -> None:
            await cursor.release_readback(conn, lease)

        await run_in_transaction(self.engine, release)


def _digest(page: list[CrmInvoice]) -> str:
    """What tells the page from the next one, kept in the cursor row (64 characters)."""
    joined = "\n".join(page_ids(page)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(joined).hexdigest()


def _reason(record: CrmInvoice, number: str | None, name: str, problem: str) -> str:
    """Which record was skipped and why, with nothing of the bad value in it."""
    who = f"invoice {number}" if number is not None else f"CRM record {record.crm_id!a}"
    reason = f"{who}: {name} {problem}"
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"


def _database_error(exc: Exception) -> str:
    """A database error as one line, without the statement and its parameters (the page)."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    text = " ".join(str(cause).split())
    return f"{type(exc).__name__}: {text[:_MAX_REASON]}"


def build_readback(settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient) -> ReadBack:
    return ReadBack(
        engine,
        build_opencrm_connector(settings, http),
        RetryPolicy.from_settings(settings),
        interval=settings.crm_readback_seconds,
        lease_seconds=settings.crm_lease_seconds,
    )
