"""Talking to the ledgerlink service: signed webhook deliveries with retries, and the calls
the demo makes (trigger a sync run, list invoices)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

WEBHOOK_PATH = "/v1/webhooks/sage/postings"
URL_ENV = "LEDGERLINK_URL"
SECRET_ENV = "LEDGERLINK_EXPORTER_SECRET"
SECRET_HINT = (
    f"Check that the exporter's secret (--secret or {SECRET_ENV}) is one of the "
    "service's LEDGERLINK_WEBHOOK_SECRETS, and that this PC's clock is right"
)
_RETRYABLE_STATUSES = frozenset({409, 429})

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], dt.datetime]


class DeliveryError(Exception):
    """A batch the server did not take; `str()` is one line a person can act on."""


class BatchRejected(DeliveryError):
    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"the server rejected the batch (HTTP {status}): {detail}")


class DeliveryGaveUp(DeliveryError):
    pass


class NotLedgerlink(DeliveryError):
    """A 2xx that is not the service's acknowledgement of this batch: a proxy's or captive
    portal's page, or a URL that is not a ledgerlink webhook. Nothing may count as delivered on
    its word, and sending again would get the same page, so the run stops."""

    def __init__(self, url: str, status: int, what: str) -> None:
        self.url = url
        self.status = status
        super().__init__(
            f"{url} answered HTTP {status} but not as ledgerlink does ({what}); nothing was "
            f"taken as delivered. Check --url or {URL_ENV}, and any proxy in between"
        )


class Unreachable(DeliveryError):
    def __init__(self, url: str, exc: Exception) -> None:
        self.url = url
        super().__init__(
            f"cannot connect to {url} ({_why(exc)}): is the service running there? "
            f"Point the exporter elsewhere with --url or {URL_ENV}"
        )


class ServiceCallError(Exception):
    """A call to the service's API failed; `str()` is one line."""


@dataclass(frozen=True)
class Acknowledgement:
    replayed: bool
    event_id: str
    postings_received: int
    postings_applied: int
    postings_unchanged: int
    invoices_affected: int


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    # A Retry-After is obeyed as given, up to this, so a confused proxy cannot park us for a day.
    max_retry_after: float = 600.0


@dataclass(frozen=True)
class _Retry:
    reason: str
    retry_after: float | None


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Signer:
    """Standard Webhooks signing (standardwebhooks.com): HMAC-SHA256 over "id.timestamp.body"
    with the base64 key of a whsec_ secret. A few lines of the standard library, so the
    exporter needs no signing package on the Sage PC."""

    key: bytes

    @classmethod
    def from_secret(cls, secret: str) -> Signer:
        """Checks the secret up front, so a typo fails before anything is read or sent."""
        if not secret.startswith("whsec_"):
            raise ValueError("the webhook secret must start with 'whsec_'")
        try:
            # Decoded exactly as the service decodes it (standardwebhooks: padding added,
            # characters outside the base64 alphabet skipped), so a URL-safe secret such as
            # the one `make run` creates signs what the service checks.
            key = base64.b64decode(secret.removeprefix("whsec_") + "==")
        except (binascii.Error, ValueError):
            raise ValueError("the webhook secret is not whsec_ followed by base64") from None
        if not key:
            raise ValueError("the webhook secret is not whsec_ followed by base64")
        return cls(key)

    def headers(self, msg_id: str, body: bytes, now: dt.datetime) -> dict[str, str]:
        """The three headers over exactly `body`, the bytes that go on the wire."""
        timestamp = str(math.floor(now.timestamp()))
        signed = f"{msg_id}.{timestamp}.".encode() + body
        digest = hmac.new(self.key, signed, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }


def webhook_url(url: str) -> str:
    """The webhook's URL from either the service's base URL or the webhook URL itself."""
    base = url.rstrip("/")
    return base if base.endswith(WEBHOOK_PATH) else base + WEBHOOK_PATH


def base_url(url: str) -> str:
    return url.rstrip("/").removesuffix(WEBHOOK_PATH)


class WebhookClient:
    """Delivers one signed batch, retrying what a retry can fix.

    5xx, 409 (the same id is being processed right now), 429, timeouts and broken connections
    are retried with exponential backoff and jitter, or after Retry-After when the server sends
    one, and each retry is announced through `on_retry` as it happens. A refused connection is
    not retried: nothing is listening at that address, and saying so at once, with the URL,
    helps more than a minute of silent waiting (an unattended `--every` run tries again at its
    next turn). Any other answer below 200 or from 400 up stops at once: sending it again would
    not change the server's mind. A 2xx acknowledges the batch only when it is ledgerlink's
    answer to this very delivery (`acknowledgement`); any other 2xx stops the run too. Each
    attempt is signed afresh, since a long wait could otherwise outlive the server's timestamp
    tolerance.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        signer: Signer,
        *,
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self._http = http
        self._url = webhook_url(url)
        self._signer = signer
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._on_retry = on_retry

    @property
    def url(self) -> str:
        return self._url

    async def deliver(self, body: bytes, webhook_id: str) -> Acknowledgement:
        attempts = self._policy.max_attempts
        for attempt in range(1, attempts + 1):
            outcome = await self._attempt(body, webhook_id)
            if isinstance(outcome, Acknowledgement):
                return outcome
            if attempt == attempts:
                raise DeliveryGaveUp(f"gave up after {attempts} attempts: {outcome.reason}")
            delay = self._delay(attempt, outcome.retry_after)
            if self._on_retry is not None:
                self._on_retry(
                    f"retrying {attempt + 1}/{attempts} in {delay:.0f} s: {outcome.reason}"
                )
            await self._sleep(delay)
        raise AssertionError("unreachable: max_attempts is at least 1")

    async def _attempt(self, body: bytes, webhook_id: str) -> Acknowledgement | _Retry:
        headers = self._signer.headers(webhook_id, body, self._clock())
        headers["content-type"] = "application/json"
        try:
            response = await self._http.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException:
            return _Retry("the server did not answer in time", None)
        except httpx.ConnectError as exc:
            raise Unreachable(self._url, exc) from None
        except httpx.TransportError as exc:
            return _Retry(f"lost the connection to {self._url} ({_why(exc)})", None)
        status = response.status_code
        if response.is_success:
            return acknowledgement(response, self._url, webhook_id, _postings_in(body))
        if status >= 500 or status in _RETRYABLE_STATUSES:
            reason = f"{status} {problem_detail(response)}"
            return _Retry(reason, retry_after_seconds(response, self._clock()))
        if status == 401:
            raise BatchRejected(status, f"{problem_detail(response)}. {SECRET_HINT}")
        raise BatchRejected(status, problem_detail(response))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._policy.max_retry_after)
        ceiling = min(self._policy.max_delay, self._policy.base_delay * 2 ** (attempt - 1))
        # "Equal jitter": never zero, so a restarted server is not hit by every client at once.
        return self._jitter(ceiling / 2, ceiling)


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


_COUNTS = ("postings_received", "postings_applied", "postings_unchanged", "invoices_affected")


def acknowledgement(
    response: httpx.Response, url: str, webhook_id: str, postings: int
) -> Acknowledgement:
    """The service's answer to this delivery, or NotLedgerlink.

    The webhook answers 202 with its result for a new delivery and 200 with the stored first
    result when the webhook-id was delivered before (the body is then the same, so are the
    counts). The result names the delivery (`event_id` is the webhook-id) and counts the batch:
    every posting received, each one either applied or unchanged (a batch that names a
    transaction twice is refused with a 422, so none counts twice). A 2xx that says anything
    else did not come from the service, and the batch may never have reached it.
    """
    status = response.status_code

    def refuse(what: str) -> NotLedgerlink:
        return NotLedgerlink(url, status, what)

    if status not in (200, 202):
        raise refuse(f"{_sample(response)}; the webhook answers 202, or 200 for a replay")
    payload = _json_object(response)
    if not payload:
        raise refuse(_sample(response))
    if payload.get("event_id") != webhook_id:
        raise refuse(
            f"event_id {json.dumps(payload.get('event_id'))[:80]} where the service names "
            f"the delivery {webhook_id}"
        )
    counts = {name: payload.get(name) for name in _COUNTS}
    bad = [n for n, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        raise refuse(f"{bad[0]} is {json.dumps(counts[bad[0]])[:40]}, not a count")
    received, applied, unchanged, invoices = (int(counts[name] or 0) for name in _COUNTS)
    if received != postings:
        raise refuse(f"postings_received {received} for a batch of {postings} postings")
    if applied + unchanged != received:
        raise refuse(
            f"{applied} applied and {unchanged} unchanged do not add up to the "
            f"{received} postings received"
        )
    return Acknowledgement(
        replayed=status == 200,
        event_id=webhook_id,
        postings_received=received,
        postings_applied=applied,
        postings_unchanged=unchanged,
        invoices_affected=invoices,
    )


def _postings_in(body: bytes) -> int:
    """How many postings the body carries: what the service must say it received."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return 0
    postings = payload.get("postings") if isinstance(payload, dict) else None
    return len(postings) if isinstance(postings, list) else 0


def _sample(response: httpx.Response) -> str:
    """What came back, on one short line."""
    kind = response.headers.get("content-type", "no content type").split(";")[0].strip()
    text = _one_line(response.content[:300].decode("utf-8", errors="replace"))
    return f"{kind}: '{text[:120]}'" if text else f"{kind}, empty body"


def retry_after_seconds(response: httpx.Response, now: dt.datetime) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def problem_detail(response: httpx.Response) -> str:
    """The server's RFC 9457 `detail` (and first field error) on one line."""
    payload = _json_object(response)
    detail = payload.get("detail") or payload.get("title")
    if isinstance(detail, str) and detail.strip():
        errors = payload.get("errors")
        if isinstance(errors, list) and errors:
            first = json.dumps(errors[0], ensure_ascii=False)[:200]
            detail = f"{detail} (first of {len(errors)} errors: {first})"
        return _one_line(detail)
    return _one_line(f"{response.reason_phrase} {response.text[:200]}")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the demo's calls ---------------------------------------------------------------------


async def trigger_sync(http: httpx.AsyncClient, base_url: str, api_key: str) -> dict[str, Any]:
    """Runs a full sync and waits for it, so the invoice list read next is settled."""
    return _json_object(
        await _call(
            http,
            "POST",
            f"{base_url.rstrip('/')}/v1/sync/trigger",
            api_key,
            params={"wait": "true"},
            json={"scope": "all"},
        )
    )


async def list_invoices(
    http: httpx.AsyncClient, base_url: str, api_key: str, *, page_size: int = 500
) -> list[dict[str, Any]]:
    invoices: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": page_size}
        if cursor:
            params["cursor"] = cursor
        url = f"{base_url.rstrip('/')}/v1/invoices"
        page = _json_object(await _call(http, "GET", url, api_key, params=params))
        items = page.get("items")
        invoices.extend(item for item in items or [] if isinstance(item, dict))
        next_cursor = page.get("next_cursor")
        if not isinstance(next_cursor, str) or next_cursor in ("", cursor) or not items:
            return invoices
        cursor = next_cursor


async def _call(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    api_key: str,
    *,
    params: dict[str, str | int],
    json: dict[str, Any] | None = None,
) -> httpx.Response:
    try:
        response = await http.request(
            method, url, params=params, json=json, headers={"authorization": f"Bearer {api_key}"}
        )
    except httpx.TransportError as exc:
        raise ServiceCallError(
            f"{method} {url}: cannot reach the service ({_why(exc)}); "
            f"point elsewhere with --url or {URL_ENV}"
        ) from None
    if not response.is_success:
        detail = problem_detail(response)
        raise ServiceCallError(f"{method} {url} answered HTTP {response.status_code}: {detail}")
    return response
