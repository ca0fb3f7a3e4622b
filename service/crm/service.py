"""CRM delivery rules: the outbox dispatcher, retries and dead letters, readiness.

One dispatcher per worker process. A pass claims the due messages (one invoice at a time per
dispatcher, `FOR UPDATE SKIP LOCKED` plus a per-invoice advisory lock), coalesces each
invoice's pending messages to the newest, delivers it through the connector and records the
outcome. No transaction is open while the CRM is called: the claim is a short transaction
that leases the messages (a token, and not due again until the lease runs out), the outcome a
second one that records it only where the lease is still ours. A dispatcher killed
mid-delivery leaves its messages leased until the lease runs out, then another delivers them
(delivery is at least once; a repeated delivery finds the CRM already up to date and writes
nothing). A dispatcher stopped (cancelled) mid-delivery hands its messages back at once.
Every delivery ends before the lease does (each call has its own deadline too).

Local mode calls nothing: claim, delivery and record are one transaction, as fast as a queue
on PostgreSQL can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import __version__
from service.crm.client import OpenCrmClient
from service.crm.connector import (
    Change,
    Connector,
    CrmFields,
    KeptCrmStatus,
    LocalConnector,
    OpenCrmConnector,
    Outcome,
    Pushed,
    storable_id,
)
from service.crm.errors import (
    CrmAnswerTooLarge,
    CrmAuthError,
    CrmError,
    CrmHalt,
    CrmPagingBroken,
    CrmUnavailable,
)
from service.crm.lease import Lease
from service.crm.repository import adoption, cursor, health, outbox, outbox_admin, views
from service.crm.settings import CrmMode
from service.errors import Conflict, NotFound
from service.logging import get_logger
from service.metrics import CRM_DELIVERIES
from service.settings import Settings, SettingsError
from service.transaction import run_in_transaction

log = get_logger(__name__)

USER_AGENT = f"ledgerlink/{__version__}"
# While halted on refused credentials, try again this often (fixing OpenCRM's side, such as
# re-enabling API access, needs no restart; new credentials come with a restart anyway).
AUTH_RECHECK_SECONDS = 60.0
# A long Retry-After is honoured up to this.
MAX_RETRY_AFTER_SECONDS = 3600.0
# How often a healthy dispatcher refreshes last_success_at in the shared state row.
SUCCESS_WRITE_SECONDS = 30.0
# Deliveries must be over by this share of the lease, counted from before the claim: the rest
# is for recording the outcome while the lease still holds.
DELIVERY_SHARE_OF_LEASE = 0.8
DEFAULT_LEASE_SECONDS = 60.0


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, a cap on attempts, Retry-After honoured."""

    max_attempts: int
    base_seconds: float
    max_seconds: float
    auth_recheck_seconds: float = AUTH_RECHECK_SECONDS
    max_retry_after_seconds: float = MAX_RETRY_AFTER_SECONDS
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.crm_max_attempts,
            base_seconds=settings.crm_retry_base_seconds,
            max_seconds=settings.crm_retry_max_seconds,
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1`, after `attempt` failed ones (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_seconds)
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(attempt - 1, 0))
        return self.rng.uniform(0.0, ceiling)


@dataclass
class _Pass:
    """What one dispatcher pass did, applied and counted after its transaction commits."""

    results: list[outbox.Result] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)
    # Protected statuses a person set in the CRM, adopted when the outcome is recorded.
    kept: list[tuple[outbox.Message, KeptCrmStatus]] = field(default_factory=list)
    # What was claimed and not settled by the end of the pass: handed back untried.
    untried: list[outbox.Message] = field(default_factory=list)
    # Set when a lookup found OpenCRM ignoring paging; "" when one saw it page properly.
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
    def __init__(
        self,
        engine: AsyncEngine,
        connector: Connector,
        policy: RetryPolicy,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        db_now: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        self.engine = engine
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
        self._lock = asyncio.Lock()

    @property
    def tracks_health(self) -> bool:
        return not isinstance(self.connector, LocalConnector)

    async def run_once(self) -> int:
        """Deliver one batch; return how many messages it settled (0 = nothing to do now)."""
        async with self._lock:
            now = self._clock()
            if now < self._paused_until:
                return 0
            if self.halted_reason is not None:
                if now - self._halted_checked < self.policy.auth_recheck_seconds:
                    return 0
                self._halted_checked = now
            if self.connector.remote:
                return await self._leased_pass()
            return await self._local_pass()

    async def _local_pass(self) -> int:
        """Nothing is called: claim, deliver and record in one transaction."""
        work = _Pass()

        async def deliver(conn: AsyncConnection) -> None:
            groups = await outbox.claim(conn, limit=self.connector.batch_size, now=self._db_now())
            for group in groups:
                if not await self._handle(group, work, deadline=None):
                    break
            await self._finish(conn, work, lease=None)

        await run_in_transaction(self.engine, deliver)
        self._after_commit(work)
        return work.settled

    async def _leased_pass(self) -> int:
        """Claim and lease (one short transaction), call the CRM with no transaction open,
        record what is still ours (another short one)."""
        lease = Lease.new(self.lease_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lease_seconds * DELIVERY_SHARE_OF_LEASE

        async def claim(conn: AsyncConnection) -> list[outbox.Group]:
            return await outbox.claim(
                conn, limit=self.connector.batch_size, now=self._db_now(), lease=lease
            )

        groups = await run_in_transaction(self.engine, claim)
        if not groups:
            return 0
        work = _Pass()
        handled = 0
        try:
            for group in groups:
                if loop.time() >= deadline:
                    break  # the rest waits for the next pass, no attempt spent
                handled += 1
                if not await self._handle(group, work, deadline=deadline):
                    break
        except BaseException:
            # Stopped mid-delivery (a shutdown): hand everything back now rather than when
            # the lease runs out. The CRM may have the change already; sending it again
            # changes nothing there.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._hand_back(lease, groups))
            raise
        untried = groups[handled:]
        if work.halted is not None:
            untried = groups[handled - 1 :]  # the halted call cost no attempt either
        work.untried = [m for g in untried for m in g.messages]

        async def finish(conn: AsyncConnection) -> None:
            await self._finish(conn, work, lease=lease)

        await run_in_transaction(self.engine, finish)
        self._after_commit(work)
        return work.settled

    async def _hand_back(self, lease: Lease, groups: list[outbox.Group]) -> None:
        messages = [m for g in groups for m in g.messages]

        async def release(conn: AsyncConnection) -> None:
            await outbox.release(conn, messages, lease)

        await run_in_transaction(self.engine, release)

    async def _handle(self, group: outbox.Group, work: _Pass, *, deadline: float | None) -> bool:
        """Deliver one invoice's newest change; False when the rest of the batch must wait."""
        newest = group.newest
        if group.stale:
            # A re-queued dead letter older than what the CRM already has: never resend it.
            work.superseded.extend(m.id for m in group.messages)
            return True
        work.superseded.extend(m.id for m in group.messages[:-1])
        change = _change(newest, group.crm_id)
        if change.status is None and change.outstanding is None:
            work.results.append(outbox.Result(newest, "skipped", "nothing to send: no status"))
            work.outcomes["empty"] += 1
            return True
        try:
            outcome = await self._deliver(change, deadline)
        except CrmHalt as exc:
            # Every later call would fail the same way: stop, burn no attempt, tell readiness.
            work.halted = str(exc)
            work.outcomes["auth_failed" if isinstance(exc, CrmAuthError) else "misconfigured"] += 1
            return False
        except CrmUnavailable as exc:
            delay = self._fail(newest, str(exc), work, retry_after=exc.retry_after)
            work.failure = str(exc)
            # The CRM is down or throttling us: the other messages wait rather than each
            # burning an attempt on it.
            work.pause = delay
            return False
        except (CrmPagingBroken, CrmAnswerTooLarge) as exc:
            # About the CRM, not this invoice: readiness hears of it.
            self._fail(newest, str(exc), work)
            work.failure = str(exc)
            if isinstance(exc, CrmPagingBroken):
                work.paging = str(exc)
            return True
        except CrmError as exc:
            self._fail(newest, str(exc), work)
            return True
        except TimeoutError:
            error = f"no outcome within the lease ({self.lease_seconds:g}s, CRM_LEASE_SECONDS)"
            self._fail(newest, error, work)
            work.failure = error
            return False
        except Exception as exc:  # a bug or an unforeseen answer must not block the outbox
            log.exception("crm.delivery.unexpected", message_id=newest.id)
            self._fail(newest, f"unexpected {type(exc).__name__}: {exc}", work)
            return True
        work.succeeded = True
        crm_id = outcome.crm_id
        if crm_id and not storable_id(group.invoice_number, crm_id):
            crm_id = None  # a record id no column holds: delivered, not remembered
        if crm_id and crm_id != group.crm_id:
            work.crm_ids[group.invoice_number] = crm_id
        if isinstance(outcome, KeptCrmStatus):
            work.seen[outcome.crm_status] += 1
            work.views.append(_view(change, crm_id, outcome.crm_status, None))
            work.kept.append((newest, outcome))
            return True
        assert isinstance(outcome, Pushed)
        if outcome.crm_status:
            work.seen[outcome.crm_status] += 1
        if self.tracks_health:
            status = change.status or outcome.crm_status
            work.views.append(_view(change, crm_id, status, outcome.crm_outstanding))
        work.results.append(outbox.Result(newest, "delivered"))
        work.outcomes["delivered" if outcome.sent else "unchanged"] += 1
        return True

    async def _deliver(self, change: Change, deadline: float | None) -> Outcome:
        """The connector's delivery, over before `deadline` (loop time) when there is one."""
        if deadline is None:
            return await self.connector.deliver(change)
        async with asyncio.timeout_at(deadline):
            return await self.connector.deliver(change)

    async def _keep_crm_status(
        self, conn: AsyncConnection, message: outbox.Message, kept: KeptCrmStatus, work: _Pass
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
        work.results.append(outbox.Result(message, "skipped", note))
        work.outcomes["skipped_protected"] += 1
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
        work: _Pass,
        *,
        retry_after: float | None = None,
    ) -> float:
        attempt = message.attempts + 1
        if attempt >= self.policy.max_attempts:
            work.results.append(outbox.Result(message, "dead", error))
            work.outcomes["dead"] += 1
            log.warning(
                "crm.delivery.dead",
                message_id=message.id,
                invoice_number=message.invoice_number,
                attempts=attempt,
                error=error,
            )
            return self.policy.delay(attempt, retry_after)
        delay = self.policy.delay(attempt, retry_after)
        work.results.append(outbox.Result(message, "pending", error, delay))
        work.outcomes["retry"] += 1
        log.info(
            "crm.delivery.retry",
            message_id=message.id,
            invoice_number=message.invoice_number,
            attempt=attempt,
            delay_seconds=round(delay, 3),
            error=error,
        )
        return delay

    async def _finish(self, conn: AsyncConnection, work: _Pass, *, lease: Lease | None) -> None:
        """Write the batch's outcomes; the shared rows last, so locks on them are brief.

        Under a lease, only for the messages still ours: a dispatcher that outlived its lease
        (another took the messages over) records nothing of them.
        """
        now = self._db_now()
        if lease is not None:
            ours = await outbox.still_leased(
                conn,
                [r.id for r in work.results] + work.superseded + [m.id for m, _ in work.kept],
                lease,
            )
            work.results = [r for r in work.results if r.id in ours]
            work.superseded = [i for i in work.superseded if i in ours]
            work.kept = [(m, k) for m, k in work.kept if m.id in ours]
        for message, kept in work.kept:
            await self._keep_crm_status(conn, message, kept, work)
        await outbox.supersede(conn, work.superseded)
        await outbox.record(conn, work.results, now=now)
        if lease is not None:
            await outbox.release(conn, work.untried, lease)
        work.settled = len(work.results) + len(work.superseded)
        await views.cache_crm_ids(conn, {**self.connector.take_seen_ids(), **work.crm_ids})
        await views.remember_crm_views(conn, work.views)
        await views.observe_statuses(conn, dict(work.seen))
        if not self.tracks_health:
            return
        if work.paging is None and self.connector.take_paging_confirmed():
            work.paging = ""
        if work.paging is not None:
            await health.record_paging(conn, work.paging or None)
        if work.halted is not None:
            await health.record_halt(conn, work.halted)
        elif work.succeeded:
            if self._success_due():
                await health.record_success(conn)
        elif work.failure is not None:
            await health.record_failure(conn, work.failure)

    def _success_due(self) -> bool:
        if self._success_written is None or self.halted_reason is not None:
            return True
        return self._clock() - self._success_written >= SUCCESS_WRITE_SECONDS

    def _after_commit(self, work: _Pass) -> None:
        now = self._clock()
        for outcome, count in work.outcomes.items():
            CRM_DELIVERIES.labels(outcome).inc(count)
        if work.superseded:
            CRM_DELIVERIES.labels("superseded").inc(len(work.superseded))
        if work.halted is not None:
            if self.halted_reason is None:
                log.error("crm.dispatcher.halted", reason=work.halted)
            self.halted_reason = work.halted
            self._halted_checked = now
        elif work.succeeded:
            if self.tracks_health and self._success_due():
                self._success_written = now
            if self.halted_reason is not None:
                log.info("crm.dispatcher.resumed")
                self.halted_reason = None
        if work.pause is not None:
            self._paused_until = now + work.pause


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


def build_connector(settings: Settings, http: httpx.AsyncClient) -> Connector:
    if settings.crm_mode is CrmMode.local:
        # One advisory lock per claimed invoice: keep a pass well inside PostgreSQL's lock table
        # (max_locks_per_transaction), whatever the reconcile batch size is set to.
        return LocalConnector(batch_size=min(settings.worker_batch_size, LOCAL_BATCH_CAP))
    return build_opencrm_connector(settings, http)


def build_opencrm_connector(settings: Settings, http: httpx.AsyncClient) -> OpenCrmConnector:
    return OpenCrmConnector(
        build_client(settings, http),
        fields_from(settings),
        protected_statuses=settings.protected_statuses,
    )


def build_client(settings: Settings, http: httpx.AsyncClient) -> OpenCrmClient:
    base_url, key, passkey = (
        settings.opencrm_base_url,
        settings.opencrm_key,
        settings.opencrm_passkey,
    )
    if not base_url or key is None or passkey is None:  # the settings validator prevents it
        raise SettingsError("LEDGERLINK_CRM_MODE=opencrm needs the OPENCRM_* settings")
    return OpenCrmClient(
        http,
        base_url=base_url,
        key=key,
        passkey=passkey,
        path_template=settings.opencrm_path_template,
        timeout=settings.opencrm_timeout_seconds,
        user_agent=settings.opencrm_user_agent or USER_AGENT,
        max_answer_bytes=settings.opencrm_max_answer_bytes,
        max_pages=settings.opencrm_max_pages,
    )


def fields_from(settings: Settings) -> CrmFields:
    return CrmFields(
        status=settings.opencrm_status_field,
        number_query=settings.opencrm_number_field,
        number_record=settings.number_record_field,
        outstanding=settings.opencrm_outstanding_field,
        modified=settings.opencrm_modified_field,
        page_size=settings.opencrm_page_size,
        list_method=settings.opencrm_list_method,
    )


def build_dispatcher(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient
) -> Dispatcher:
    return Dispatcher(
        engine,
        build_connector(settings, http),
        RetryPolicy.from_settings(settings),
        lease_seconds=settings.crm_lease_seconds,
    )


# Dead letters (the admin API) -----------------------------------------------------------------


async def retry_dead_letter(conn: AsyncConnection, message_id: int) -> Any:
    """Dead letter -> pending, attempts reset; 404 unknown, 409 when it is not dead."""
    row = await outbox_admin.requeue_dead(conn, message_id)
    if row is None:
        existing = await outbox_admin.get_message(conn, message_id)
        if existing is None:
            raise NotFound(f"no outbox message {message_id}")
        raise Conflict(
            f"outbox message {message_id} is '{existing.state}', not 'dead': only dead letters "
            "can be retried"
        )
    await outbox_admin.notify_outbox(conn)
    log.info("crm.dead_letter.retried", message_id=message_id)
    return row


LOCAL_BATCH_CAP = 1000


# Readiness ------------------------------------------------------------------------------------


async def readiness_problems(
    conn: AsyncConnection, settings: Settings, dispatcher: Dispatcher | None
) -> tuple[list[str], list[str]]:
    """(problems that fail readiness, warnings that do not) about the CRM connection.

    Workers usually run in other processes, so their findings are read from the shared
    `crm_dispatcher_state` row on every probe; an in-process worker's halt shows at once.
    """
    state, dead = await health.read_state(conn)
    fatal: list[str] = []
    warnings: list[str] = []
    if dead:
        warnings.append(
            f"{dead} CRM outbox message(s) are dead letters: "
            "GET /v1/crm/outbox?state=dead, then POST /v1/crm/outbox/{id}/retry"
        )
    if settings.crm_mode is not CrmMode.opencrm:
        return fatal, warnings
    halted = dispatcher.halted_reason if dispatcher is not None else None
    if halted is None and state.halted_reason:
        since = state.halted_at.isoformat() if state.halted_at else "recently"
        halted = f"{state.halted_reason} (since {since})"
    if halted is not None:
        fatal.append(f"CRM deliveries halted, nothing is lost meanwhile: {halted}")
    elif _failing(state):
        warnings.append(f"OpenCRM calls failing: {state.last_error}")
    if state.paging_problem:
        since = state.paging_problem_at.isoformat() if state.paging_problem_at else "recently"
        warnings.append(
            f"OpenCRM lists do not page properly (since {since}): lookups of invoices past "
            f"the first page and read-back scans fail until they do: {state.paging_problem}"
        )
    if settings.crm_readback_seconds > 0:
        warnings.extend(_readback_warnings(await cursor.read_readback_state(conn)))
    return fatal, warnings


def _readback_warnings(state: cursor.ReadbackState | None) -> list[str]:
    if state is None:
        return []
    warnings = []
    skipped = max(state.skipped, state.scan_skipped)
    if skipped:
        warnings.append(
            f"CRM read-back skipped {skipped} record(s) it cannot store, so neither adopted "
            f"nor compared (fix them in OpenCRM); the last: {state.last_skipped}"
        )
    if state.last_error_at is None:
        return warnings
    if state.last_completed_at is not None and state.last_completed_at > state.last_error_at:
        return warnings
    warnings.append(
        f"CRM read-back failing ({state.failures} attempt(s) since "
        f"{state.last_error_at.isoformat()}; statuses set in OpenCRM are not seen): "
        f"{state.last_error}"
    )
    return warnings


def _failing(state: health.DispatcherState) -> bool:
    if state.last_error_at is None:
        return False
    return state.last_success_at is None or state.last_error_at > state.last_success_at
