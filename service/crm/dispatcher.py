"""The outbox dispatcher's rules: which messages a pass claims, how each delivery's outcome is
recorded (delivered, retried with backoff, dead letter, skipped for a status a person
protected in the CRM), and when deliveries halt or pause.

One dispatcher per worker process. A pass claims the due messages (one invoice at a time per
dispatcher, `FOR UPDATE SKIP LOCKED` plus a per-invoice advisory lock), coalesces each
invoice's pending messages to the newest, delivers it through the connector and records the
outcome. The task (service/crm/tasks.py) begins the transactions; the dispatcher is handed
them. No transaction is open while the CRM is called: the claim is a short transaction that
leases the messages (a token, and not due again until the lease runs out), the outcome a second
one that records it only where the lease is still ours. A dispatcher killed mid-delivery leaves
its messages leased until the lease runs out, then another delivers them (delivery is at least
once; a repeated delivery finds the CRM already up to date and writes nothing). A dispatcher
stopped (cancelled) mid-delivery hands its messages back at once. Every delivery ends before the
lease does (each call has its own deadline too).

Local mode calls nothing: claim, delivery and record are one transaction, as fast as a queue
on PostgreSQL can be.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy.ext.asyncio import AsyncConnection

from service.crm.connector import Change, Connector, KeptCrmStatus, Outcome, Pushed
from service.crm.errors import (
    CrmAnswerTooLarge,
    CrmAuthError,
    CrmError,
    CrmHalt,
    CrmPagingBroken,
    CrmUnavailable,
)
from service.crm.lease import Lease
from service.crm.repository import adoption, health, outbox, views
from service.crm.retry import DEFAULT_LEASE_SECONDS, RetryPolicy
from service.crm.values import storable_id
from service.logging import get_logger
from service.metrics import CRM_DELIVERIES

log = get_logger(__name__)

# How often a healthy dispatcher refreshes last_success_at in the shared state row.
SUCCESS_WRITE_SECONDS = 30.0
# Deliveries must be over by this share of the lease, counted from before the claim: the rest
# is for recording the outcome while the lease still holds.
DELIVERY_SHARE_OF_LEASE = 0.8


@dataclass
class PassReport:
    """What one dispatcher pass did: written by its last transaction, counted after it commits."""

    results: list[outbox.Result] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)
    # Protected statuses a person set in the CRM, adopted when the outcome is recorded.
    kept: list[tuple[outbox.Message, KeptCrmStatus]] = field(default_factory=list)
    # What was claimed and not settled by the end of the pass: handed back untried.
    untried: list[outbox.Message] = field(default_factory=list)
    # Set when a lookup found the CRM ignoring paging; "" when one saw it page properly.
    paging: str | None = None
    settled: int = 0
    crm_ids: dict[str, str] = field(default_factory=dict)
    # What the CRM shows after this pass, per invoice (for the crm_drift report).
    views: list[views.CrmView] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    halted: str | None = None
    failure: str | None = None
    pause: float | None = None
    succeeded: bool = False


class Dispatcher:
    """Delivers the outbox through one connector, and remembers between passes what it learnt
    of the CRM: a halt (refused credentials), a pause (the CRM down or throttling us)."""

    def __init__(
        self,
        connector: Connector,
        policy: RetryPolicy,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        db_now: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        self.connector = connector
        self.policy = policy
        self.lease_seconds = lease_seconds
        self._clock = clock
        # None: the database's now(). Tests give a fixed instant to check schedules exactly.
        self._db_now = db_now
        self._paused_until = 0.0
        self.halted_reason: str | None = None
        self._halted_checked = 0.0
        self._success_written: float | None = None

    @property
    def leases(self) -> bool:
        """Whether a pass leases what it claims and calls the CRM with no transaction open
        (a connector that calls nothing delivers inside the claiming transaction)."""
        return self.connector.remote

    @property
    def tracks_health(self) -> bool:
        """Whether the CRM's health (halts, failures, paging) is kept for /readyz: only of a
        CRM that is called."""
        return self.connector.remote

    def due(self) -> bool:
        """Whether a pass may run now: not while paused after the CRM failed, and while halted
        only once per recheck interval."""
        now = self._clock()
        if now < self._paused_until:
            return False
        if self.halted_reason is not None:
            if now - self._halted_checked < self.policy.auth_recheck_seconds:
                return False
            self._halted_checked = now
        return True

    def delivery_deadline(self) -> float:
        """When (loop time) the deliveries of a leased pass must be over, taken before the
        claim."""
        loop = asyncio.get_running_loop()
        return loop.time() + self.lease_seconds * DELIVERY_SHARE_OF_LEASE

    async def claim(self, conn: AsyncConnection, *, lease: Lease | None) -> list[outbox.Group]:
        """The invoices this pass delivers, each with its pending messages; leased when `lease`
        is given (the caller commits, then delivers), else held by the caller's transaction."""
        return await outbox.claim(
            conn, limit=self.connector.batch_size, now=self._db_now(), lease=lease
        )

    async def deliver(
        self, groups: list[outbox.Group], report: PassReport, *, deadline: float | None
    ) -> None:
        """Deliver each invoice's newest change, in order, until one says the rest must wait or
        `deadline` (loop time) passes; what was not tried goes to `report.untried`."""
        loop = asyncio.get_running_loop()
        handled = 0
        for group in groups:
            if deadline is not None and loop.time() >= deadline:
                break  # the rest waits for the next pass, no attempt spent
            handled += 1
            if not await self._handle(group, report, deadline=deadline):
                break
        untried = groups[handled:]
        if report.halted is not None:
            untried = groups[handled - 1 :]  # the halted call cost no attempt either
        report.untried = [m for g in untried for m in g.messages]

    async def hand_back(
        self, conn: AsyncConnection, *, groups: list[outbox.Group], lease: Lease
    ) -> None:
        """Stopped mid-delivery (a shutdown): everything back now rather than when the lease
        runs out. The CRM may have the change already; sending it again changes nothing there."""
        await outbox.release(conn, [m for g in groups for m in g.messages], lease)

    async def record(
        self, conn: AsyncConnection, *, report: PassReport, lease: Lease | None
    ) -> None:
        """Write the pass's outcomes; the shared rows last, so locks on them are brief.

        Under a lease, only for the messages still ours: a dispatcher that outlived its lease
        (another took the messages over) records nothing of them.
        """
        now = self._db_now()
        if lease is not None:
            ours = await outbox.still_leased(
                conn,
                [r.id for r in report.results] + report.superseded + [m.id for m, _ in report.kept],
                lease,
            )
            report.results = [r for r in report.results if r.id in ours]
            report.superseded = [i for i in report.superseded if i in ours]
            report.kept = [(m, k) for m, k in report.kept if m.id in ours]
        for message, kept in report.kept:
            await self._keep_crm_status(conn, message, kept, report)
        await outbox.supersede(conn, report.superseded)
        await outbox.record(conn, report.results, now=now)
        if lease is not None:
            await outbox.release(conn, report.untried, lease)
        report.settled = len(report.results) + len(report.superseded)
        await views.cache_crm_ids(conn, {**self.connector.take_seen_ids(), **report.crm_ids})
        await views.remember_crm_views(conn, report.views)
        await views.observe_statuses(conn, dict(report.seen))
        if not self.tracks_health:
            return
        if report.paging is None and self.connector.take_paging_confirmed():
            report.paging = ""
        if report.paging is not None:
            await health.record_paging(conn, report.paging or None)
        if report.halted is not None:
            await health.record_halt(conn, report.halted)
        elif report.succeeded:
            if self._success_due():
                await health.record_success(conn)
        elif report.failure is not None:
            await health.record_failure(conn, report.failure)

    def recorded(self, report: PassReport) -> int:
        """Counted once the pass's outcomes committed; how many messages it settled."""
        now = self._clock()
        for outcome, count in report.outcomes.items():
            CRM_DELIVERIES.labels(outcome).inc(count)
        if report.superseded:
            CRM_DELIVERIES.labels("superseded").inc(len(report.superseded))
        if report.halted is not None:
            if self.halted_reason is None:
                log.error("crm.dispatcher.halted", reason=report.halted)
            self.halted_reason = report.halted
            self._halted_checked = now
        elif report.succeeded:
            if self.tracks_health and self._success_due():
                self._success_written = now
            if self.halted_reason is not None:
                log.info("crm.dispatcher.resumed")
                self.halted_reason = None
        if report.pause is not None:
            self._paused_until = now + report.pause
        return report.settled

    async def _handle(
        self, group: outbox.Group, report: PassReport, *, deadline: float | None
    ) -> bool:
        """Deliver one invoice's newest change; False when the rest of the batch must wait."""
        newest = group.newest
        if group.stale:
            # A re-queued dead letter older than what the CRM already has: never resend it.
            report.superseded.extend(m.id for m in group.messages)
            return True
        report.superseded.extend(m.id for m in group.messages[:-1])
        change = _change(newest, group.crm_id)
        if change.status is None and change.outstanding is None:
            report.results.append(outbox.Result(newest, "skipped", "nothing to send: no status"))
            report.outcomes["empty"] += 1
            return True
        try:
            outcome = await self._deliver(change, deadline)
        except CrmHalt as exc:
            # Every later call would fail the same way: stop, burn no attempt, tell readiness.
            report.halted = str(exc)
            report.outcomes[
                "auth_failed" if isinstance(exc, CrmAuthError) else "misconfigured"
            ] += 1
            return False
        except CrmUnavailable as exc:
            delay = self._fail(newest, str(exc), report, retry_after=exc.retry_after)
            report.failure = str(exc)
            # The CRM is down or throttling us: the other messages wait rather than each
            # burning an attempt on it.
            report.pause = delay
            return False
        except (CrmPagingBroken, CrmAnswerTooLarge) as exc:
            # About the CRM, not this invoice: readiness hears of it.
            self._fail(newest, str(exc), report)
            report.failure = str(exc)
            if isinstance(exc, CrmPagingBroken):
                report.paging = str(exc)
            return True
        except CrmError as exc:
            self._fail(newest, str(exc), report)
            return True
        except TimeoutError:
            error = f"no outcome within the lease ({self.lease_seconds:g}s, CRM_LEASE_SECONDS)"
            self._fail(newest, error, report)
            report.failure = error
            return False
        except Exception as exc:  # a bug or an unforeseen answer must not block the outbox
            log.exception("crm.delivery.unexpected", message_id=newest.id)
            self._fail(newest, f"unexpected {type(exc).__name__}: {exc}", report)
            return True
        report.succeeded = True
        crm_id = outcome.crm_id
        if crm_id and not storable_id(group.invoice_number, crm_id):
            crm_id = None  # a record id no column holds: delivered, not remembered
        if crm_id and crm_id != group.crm_id:
            report.crm_ids[group.invoice_number] = crm_id
        if isinstance(outcome, KeptCrmStatus):
            report.seen[outcome.crm_status] += 1
            report.views.append(_view(change, crm_id, outcome.crm_status, None))
            report.kept.append((newest, outcome))
            return True
        assert isinstance(outcome, Pushed)
        if outcome.crm_status:
            report.seen[outcome.crm_status] += 1
        if self.tracks_health:
            status = change.status or outcome.crm_status
            report.views.append(_view(change, crm_id, status, outcome.crm_outstanding))
        report.results.append(outbox.Result(newest, "delivered"))
        report.outcomes["delivered" if outcome.sent else "unchanged"] += 1
        return True

    async def _deliver(self, change: Change, deadline: float | None) -> Outcome:
        """The connector's delivery, over before `deadline` (loop time) when there is one."""
        if deadline is None:
            return await self.connector.deliver(change)
        async with asyncio.timeout_at(deadline):
            return await self.connector.deliver(change)

    async def _keep_crm_status(
        self,
        conn: AsyncConnection,
        message: outbox.Message,
        kept: KeptCrmStatus,
        report: PassReport,
    ) -> None:
        wanted = message.payload.get("status")
        reason = (
            f"set to '{kept.crm_status}' in OpenCRM by a person; protected, so the sync's "
            f"'{wanted}' (outbox message {message.id}) was not written"
        )
        result = await adoption.keep_crm_status(
            conn,
            invoice_number=message.invoice_number,
            message_id=message.id,
            crm_status=kept.crm_status,
            reason=reason,
        )
        note = f"not written: OpenCRM shows the protected status '{kept.crm_status}'"
        if result == "person_decided_later":
            note += "; a later change made in ledgerlink follows"
        report.results.append(outbox.Result(message, "skipped", note))
        report.outcomes["skipped_protected"] += 1
        log.info(
            "crm.protected_in_crm",
            invoice_number=message.invoice_number,
            crm_status=kept.crm_status,
            mirror=result,
        )

    def _fail(
        self,
        message: outbox.Message,
        error: str,
        report: PassReport,
        *,
        retry_after: float | None = None,
    ) -> float:
        attempt = message.attempts + 1
        if attempt >= self.policy.max_attempts:
            report.results.append(outbox.Result(message, "dead", error))
            report.outcomes["dead"] += 1
            log.warning(
                "crm.delivery.dead",
                message_id=message.id,
                invoice_number=message.invoice_number,
                attempts=attempt,
                error=error,
            )
            return self.policy.delay(attempt, retry_after)
        delay = self.policy.delay(attempt, retry_after)
        report.results.append(outbox.Result(message, "pending", error, delay))
        report.outcomes["retry"] += 1
        log.info(
            "crm.delivery.retry",
            message_id=message.id,
            invoice_number=message.invoice_number,
            attempt=attempt,
            delay_seconds=round(delay, 3),
            error=error,
        )
        return delay

    def _success_due(self) -> bool:
        if self._success_written is None or self.halted_reason is not None:
            return True
        return self._clock() - self._success_written >= SUCCESS_WRITE_SECONDS


def _change(message: outbox.Message, crm_id: str | None) -> Change:
    raw_status = message.payload.get("status")
    status = str(raw_status).strip() if raw_status is not None else ""
    raw = message.payload.get("outstanding")
    outstanding: Decimal | None = None
    if raw is not None and str(raw).strip():
        try:
            outstanding = Decimal(str(raw))
        except InvalidOperation:
            outstanding = None
    return Change(
        message_id=message.id,
        invoice_number=message.invoice_number,
        source=message.source,
        status=status or None,
        outstanding=outstanding,
        crm_id=crm_id,
    )


def _view(
    change: Change, crm_id: str | None, status: str | None, outstanding: Decimal | None
) -> views.CrmView:
    return views.CrmView(change.invoice_number, crm_id, status, outstanding)
