"""Read-back: statuses (and balances) a person set in the CRM come back into ledgerlink.

Every `LEDGERLINK_CRM_READBACK_SECONDS` a scan pages through the CRM's invoice list, one page
per pass, with no transaction open while the CRM answers. The task (service/crm/tasks.py)
begins the transactions; this module is handed them: lease the cursor row (a short
transaction: FOR UPDATE SKIP LOCKED, a token, not due again until the lease runs out, so one
worker reads at a time), read the page, then in a second short transaction apply it and move
the cursor, only while the lease is still ours. A worker killed mid-page leaves the cursor where
it was; once the lease runs out the next one reads that page again (applying a page twice
changes nothing). A worker stopped mid-page hands it back at once.

A CRM is read through a `ReadBackSource` (OpenCRM's: service/crm/opencrm/readback.py): one
page at a place in the list, filtered to one modification day when it can be, so that a scan
reads only what changed since the last. If the CRM ignores that filter the scan reads
everything.

What a page teaches:
- a protected status ("Written Off", any case) is adopted at once: the invoice takes it, with
  a history row (source `crm`, actor `opencrm`), and is queued for reconciliation, so that
  where Sage disagrees (the invoice is paid) the conflict shows at once; from then on syncs
  leave it alone;
- everything seen is remembered in `crm_invoices`; an unprotected difference from our status
  or balance is CRM drift, listed by `GET /v1/reconciliation/report?kind=crm_drift`;
- every status value seen feeds the picklist verification's `observed_in_crm`;
- record ids are cached on the invoices, so deliveries never search for them.

A record that cannot be stored is skipped and reported (log, metric, `/readyz`); the rest of the
page is applied and the cursor moves on. A CRM that answers the same page again (it ignores
where a page starts), a scan past the pages allowed, a CRM error or a page that cannot be
stored fail the attempt: the scan backs off exponentially and `/readyz` says so.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.crm.connector import ProtectedStatuses
from service.crm.errors import CrmError, CrmHalt, CrmPagingBroken, CrmUnavailable
from service.crm.lease import Lease
from service.crm.repository import adoption, cursor, health, views
from service.crm.retry import DEFAULT_LEASE_SECONDS, RetryPolicy
from service.logging import get_logger
from service.metrics import CRM_READBACK

log = get_logger(__name__)

ADOPTED_REASON = (
    "set to '%s' in OpenCRM by a person (found by read-back); protected, so syncs leave it"
)
# A page must be read and applied by this share of the lease, counted from before the claim.
_READ_SHARE_OF_LEASE = 0.8
_MAX_ERROR = 200


@dataclass
class Page:
    """One page of the CRM's invoice list as ledgerlink can store it: one view per invoice, and
    what had to be left out."""

    views: list[views.CrmView] = field(default_factory=list)
    # Why each record left out was (safe to log: no value is quoted).
    skipped: list[str] = field(default_factory=list)
    unreadable_amounts: int = 0
    # Records the CRM answered (the next page starts after them; fewer than a page: the end).
    records: int = 0
    # What tells this page from the next one (64 characters): the same again means the CRM
    # ignores where a page starts.
    digest: str = ""
    # The page holds records modified on other days than the one asked for.
    day_filter_ignored: bool = False


class ReadBackSource(Protocol):
    """A CRM's invoice list, a page at a time."""

    @property
    def page_size(self) -> int:
        """Records asked for per page."""
        ...

    @property
    def max_pages(self) -> int:
        """Pages one scan may read: past them the list counts as not ending."""
        ...

    @property
    def day_field(self) -> str | None:
        """The modification-time field a page can be filtered on by day (None: it cannot)."""
        ...

    def first_day(self, last_modified: str | None) -> date | None:
        """The day a new scan starts on, from the last modification time seen (as the CRM
        writes it); None: the scan reads everything."""
        ...

    async def read_page(self, day: date | None, start: int) -> Page:
        """The page starting at record `start` (of the invoices modified on `day`)."""
        ...

    def too_many_pages(self, pages: int) -> CrmPagingBroken: ...

    def paging_ignored(self, start: int) -> CrmPagingBroken: ...


@dataclass(frozen=True)
class Claimed:
    """The cursor, leased, and the invoices with a person's change not yet delivered to the
    CRM, read before the CRM is: a change delivered while the page is read was decided after
    what the page shows."""

    state: cursor.ReadbackState
    edited: list[str]


@dataclass(frozen=True)
class PageToApply:
    """A page read, and where the cursor goes after it."""

    page: Page
    start: int
    finished: bool
    next_day: date | None
    next_start: int


@dataclass(frozen=True)
class Failure:
    """An attempt that failed, and when the next may start."""

    error: str
    delay: float
    # The CRM's lists do not page properly: /readyz hears of it.
    paging: bool = False
    # The scan starts over (it read more pages than a scan may).
    restart: bool = False


class ReadBack:
    """The read-back's rules, handed a connection for each of its short transactions."""

    def __init__(
        self,
        source: ReadBackSource,
        protected: ProtectedStatuses,
        policy: RetryPolicy,
        *,
        interval: float,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self.source = source
        self.protected = protected
        self.policy = policy
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._today = today

    def read_deadline(self) -> float:
        """When (loop time) the page must be read by, taken before the claim: the rest of the
        lease is for applying it while the lease still holds."""
        loop = asyncio.get_running_loop()
        return loop.time() + self.lease_seconds * _READ_SHARE_OF_LEASE

    async def claim(self, conn: AsyncConnection, *, lease: Lease) -> Claimed | None:
        """Lease the cursor when a page is due (None: none is, or another worker reads)."""
        state = await cursor.claim_readback(conn, interval=self.interval, lease=lease)
        if state is None:
            return None
        return Claimed(state, await adoption.invoices_with_undelivered_edits(conn))

    async def read(self, claimed: Claimed, deadline: float) -> PageToApply | Failure:
        """The next page, read from the CRM (no transaction is open), or why it could not be."""
        state = claimed.state
        scanning = state.scan_started_at is not None
        day = state.scan_day if scanning else self.source.first_day(state.last_modified)
        start = state.page_start if scanning else 0
        if scanning and state.pages >= self.source.max_pages:
            exc = self.source.too_many_pages(state.pages)
            return self.failure(state, str(exc), restart=True)
        try:
            async with asyncio.timeout_at(deadline):
                page = await self.source.read_page(day, start)
        except TimeoutError:
            return self.failure(state, "no page within the lease (CRM_LEASE_SECONDS)")
        except CrmError as exc:
            return self.failure(state, str(exc), exc=exc)
        except Exception as exc:  # an answer nothing foresaw: back off all the same
            log.exception("crm.readback.unexpected")
            return self.failure(state, f"unexpected {type(exc).__name__}: {exc}")
        if scanning and start > 0 and page.digest == state.page_digest:
            ignored = self.source.paging_ignored(start)
            return self.failure(state, str(ignored), exc=ignored)
        if day is not None and page.day_filter_ignored:
            # The CRM ignored the filter: this page is the whole list; read it all.
            log.warning("crm.readback.filter_ignored", field=self.source.day_field)
            day = None
        finished, next_day, next_start = self._next(day, start, page.records)
        return PageToApply(page, start, finished, next_day, next_start)

    async def apply(
        self, conn: AsyncConnection, *, claimed: Claimed, read: PageToApply, lease: Lease
    ) -> bool:
        """What the page taught, and the cursor moved past it, while the lease is still ours
        (False: it was not, and nothing is written)."""
        if not await cursor.hold_readback(conn, lease):
            return False
        page, state = read.page, claimed.state
        modified = await self._adopt_and_remember(conn, page.views, claimed.edited)
        last_modified = max([m for m in (state.last_modified, modified) if m], default=None)
        await cursor.advance_readback(
            conn,
            scan_day=read.next_day,
            page_start=read.next_start,
            last_modified=last_modified,
            finished=read.finished,
            # Only a page of the same list can repeat this one.
            page_digest=page.digest if read.next_start > 0 else None,
            skipped=cursor.Skipped(len(page.skipped), page.skipped[-1] if page.skipped else None),
        )
        if read.start > 0:
            await health.record_paging(conn, None)  # a next page, not the same one again
        return True

    def applied(self, read: PageToApply, applied: bool) -> int:
        """Counted once the page's transaction committed: how many records it held, at least
        1 while the scan goes on (0: the lease was lost)."""
        if not applied:
            log.warning("crm.readback.lease_lost", lease_seconds=self.lease_seconds)
            return 0
        page = read.page
        if page.skipped:
            CRM_READBACK.labels("skipped").inc(len(page.skipped))
            log.warning("crm.readback.skipped", count=len(page.skipped), last=page.skipped[-1])
        if page.unreadable_amounts:
            CRM_READBACK.labels("amount_unreadable").inc(page.unreadable_amounts)
        CRM_READBACK.labels("read").inc(page.records)
        if read.finished:
            log.info("crm.readback.finished")
            return page.records
        return max(1, page.records)

    def apply_failed(self, claimed: Claimed, exc: Exception) -> Failure:
        """The page cannot be stored: back off, as for a CRM error."""
        error = f"a page could not be stored: {_database_error(exc)}"
        if isinstance(exc, sa.exc.DBAPIError):
            # Not log.exception: the statement's parameters are the page's records.
            log.error("crm.readback.apply_failed", error=error)
        else:
            log.exception("crm.readback.apply_failed", error=error)
        return self.failure(claimed.state, error)

    def failure(
        self,
        state: cursor.ReadbackState,
        error: str,
        *,
        exc: CrmError | None = None,
        restart: bool = False,
    ) -> Failure:
        if isinstance(exc, CrmHalt):
            delay = self.policy.auth_recheck_seconds
        else:
            retry_after = exc.retry_after if isinstance(exc, CrmUnavailable) else None
            delay = self.policy.delay(state.failures + 1, retry_after)
        return Failure(error, delay, paging=isinstance(exc, CrmPagingBroken), restart=restart)

    async def record_failure(
        self, conn: AsyncConnection, *, failure: Failure, lease: Lease
    ) -> None:
        await cursor.readback_failed(
            conn, lease=lease, error=failure.error, delay=failure.delay, restart=failure.restart
        )
        if failure.paging:
            await health.record_paging(conn, failure.error)

    def failure_recorded(self, failure: Failure) -> None:
        CRM_READBACK.labels("failed").inc()
        log.warning(
            "crm.readback.failed", error=failure.error, retry_in_seconds=round(failure.delay, 3)
        )

    async def release(self, conn: AsyncConnection, *, lease: Lease) -> None:
        """Hand the cursor back untouched (a shutdown in the middle of a page)."""
        await cursor.release_readback(conn, lease)

    def _next(self, day: date | None, start: int, count: int) -> tuple[bool, date | None, int]:
        """(finished, day, start) after a page of `count` records."""
        if count >= self.source.page_size:
            return False, day, start + count
        # The CRM's clock may be ahead of ours (UK time): tomorrow is read too.
        if day is not None and day <= self._today():
            return False, day + timedelta(days=1), 0
        return True, None, 0

    async def _adopt_and_remember(
        self, conn: AsyncConnection, seen: list[views.CrmView], edited: list[str]
    ) -> str | None:
        """Adopt, remember, observe; return the latest modification time on the page."""
        protected = {
            v.invoice_number: kept
            for v in seen
            if (kept := self.protected.match(v.status)) is not None
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


def _database_error(exc: Exception) -> str:
    """A database error as one line, without the statement and its parameters (the page)."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    text = " ".join(str(cause).split())
    return f"{type(exc).__name__}: {text[:_MAX_ERROR]}"
