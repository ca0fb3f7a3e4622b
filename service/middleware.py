"""Pure ASGI middleware: request id, access log, metrics by route template, security headers."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import re
import time
import uuid
from collections.abc import Callable
from typing import Literal

import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, RequestTimeout, ServiceError, ServiceUnavailable
from service.exception_handlers import problem
from service.logging import get_logger
from service.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = get_logger("service.http")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    ),
]
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Metric labels come from fixed sets only: a client choosing the method (any token is a valid
# HTTP method) must not be able to add series, each of which costs memory and scrape time.
_METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
# The `reason` of a request body refused here (in the problem body, and the webhook's metric
# label when it is the webhook's body).
BodyRefusal = Literal["too_large", "busy", "timeout"]


# The status recorded for a request whose client went away before it was answered (nginx's
# "client closed request"): the client's doing, neither a success nor our failure.
CLIENT_CLOSED = 499


class BodyBudget:
    """The bytes of request bodies being received by this process, all requests together.

    A request reserves its declared Content-Length before the first byte is read (or each
    chunk as it comes, without one) and gives it back when it is answered; past the budget it
    is refused with a 503 instead of taking more memory. Once no body is in flight after
    large ones, the C allocator is asked to return its free pages to the system: bodies come
    in chunks of up to 64 KiB, which it otherwise keeps for good.
    """

    TRIM_AFTER = 16 * 1024 * 1024

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._released = 0
        self._trim = _malloc_trim()

    def reserve(self, size: int) -> bool:
        if self.in_flight + size > self.limit:
            return False
        self.in_flight += size
        return True

    def release(self, size: int) -> None:
        self.in_flight -= size
        self._released += size
        if self.in_flight == 0 and self._released >= self.TRIM_AFTER:
            self._released = 0
            self._trim()


def _malloc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to ask
        trim = None
    if trim is None:
        return lambda: None
    return lambda: trim(0)


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        receive_timeout: float = 30.0,
        max_body_bytes: int | None = None,
        body_budget: BodyBudget | None = None,
        check_before_input: Callable[[Scope], None] | None = None,
    ) -> None:
        self.app = app
        self.receive_timeout = receive_timeout
        self.max_body_bytes = max_body_bytes
        self.body_budget = body_budget
        self.check_before_input = check_before_input

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status_holder = {"status": 500}
        # A body refused while it streams in (413, 408). FastAPI answers any error raised while
        # it reads a body with a 400: that answer is replaced by this one.
        refused: ServiceError | None = None
        replacing = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replacing
            if message["type"] == "http.response.start":
                if refused is not None and message["status"] != refused.status_code:
                    replacing = True
                    message = {
                        "type": "http.response.start",
                        "status": refused.status_code,
                        "headers": _refusal(refused).raw_headers,
                    }
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if refused is not None:
                    # The rest of the body is still on its way: the connection cannot be reused.
                    headers.append((b"connection", b"close"))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message["headers"] = headers
            elif replacing and refused is not None:
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": _refusal(refused).body}
            await send(message)

        body_done = False
        body_size = 0
        reserved = 0
        client_gone = False
        # One deadline for the whole body: a per-chunk timeout would let a client that sends a
        # byte every few seconds hold the request open for ever.
        body_deadline = time.monotonic() + self.receive_timeout

        async def timed_receive() -> Message:
            # A client that trickles its body (slowloris) gets a 408 instead of holding a
            # request open forever; one sending more than the limit gets a 413 before it is all
            # read. Once the body is in, waiting (for a disconnect) is free.
            nonlocal body_done, body_size, refused, reserved, client_gone
            if body_done:
                return await receive()
            limit = self.max_body_bytes
            if limit is not None and body_size == 0 and _declared_length(scope) > limit:
                refused = _too_large(limit)
                raise refused
            if body_size == 0 and not reserved:
                _reserve(_declared_length(scope))
            try:
                message = await asyncio.wait_for(
                    receive(), max(body_deadline - time.monotonic(), 0.0)
                )
            except TimeoutError:
                refused = _timed_out(self.receive_timeout)
                raise refused from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            if message["type"] == "http.disconnect":
                client_gone = True
            if message["type"] == "http.request":
                body_size += len(message.get("body", b""))
                if limit is not None and body_size > limit:
                    refused = _too_large(limit)
                    raise refused
                if body_size > reserved:
                    _reserve(body_size - reserved)
            return message

        def _reserve(size: int) -> None:
            nonlocal reserved, refused
            if self.body_budget is None or size <= 0:
                return
            if not self.body_budget.reserve(size):
                refused = _busy()
                raise refused
            reserved += size

        try:
            if self.check_before_input is not None and not await self._admitted(
                scope, receive, send_wrapper
            ):
                return
            await self.app(scope, timed_receive, send_wrapper)
        finally:
            if self.body_budget is not None:
                self.body_budget.release(reserved)
            self._record(scope, status_holder["status"], started, client_gone=client_gone)

    async def _admitted(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Whether the request may go on to read its input; when not, it has been answered."""
        assert self.check_before_input is not None
        try:
            self.check_before_input(scope)
        except ServiceError as exc:
            response = _refusal(exc)
            if _declared_length(scope) or _header(scope, b"transfer-encoding") is not None:
                # The unread body is still on its way: the connection cannot be reused. (send,
                # the wrapper, adds Connection: close only for refused bodies it knows of.)
                response.headers["connection"] = "close"
            await response(scope, receive, send)
            return False
        return True

    def _record(self, scope: Scope, status: int, started: float, *, client_gone: bool) -> None:
        elapsed = time.perf_counter() - started
        route = _route_template(scope)
        method = method_label(scope["method"])
        if client_gone:
            status = CLIENT_CLOSED
        HTTP_REQUESTS.labels(route, method, str(status)).inc()
        HTTP_LATENCY.labels(route, method).observe(elapsed)
        if client_gone:
            log.info(
                "http.client_disconnected",
                method=method,
                route=route,
                detail="the client closed the connection before its request was answered",
            )
        elif scope["path"] not in _QUIET_PATHS or status >= 400:
            log.info(
                "http.request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
        structlog.contextvars.clear_contextvars()


def method_label(method: str) -> str:
    return method if method in _METHOD_LABELS else OTHER_METHOD


def _declared_length(scope: Scope) -> int:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else 0


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return bytes(value)
    return None


def _refusal(error: ServiceError) -> JSONResponse:
    return problem(
        error.status_code, error.title, error.detail, headers=error.headers, extra=error.extra
    )


def _refused_body(error: ServiceError, reason: BodyRefusal) -> ServiceError:
    error.extra["reason"] = reason
    return error


def _busy() -> ServiceError:
    refused = ServiceUnavailable(
        "the service is receiving as many request bodies as it holds at once "
        "(LEDGERLINK_MAX_INFLIGHT_BODY_BYTES); nothing of this one was stored, retry shortly",
        retry_after=2,
    )
    return _refused_body(refused, "busy")


def _too_large(limit: int) -> ServiceError:
    refused = PayloadTooLarge(f"the body is larger than {limit} bytes (LEDGERLINK_MAX_BODY_BYTES)")
    return _refused_body(refused, "too_large")


def _timed_out(seconds: float) -> ServiceError:
    refused = RequestTimeout(f"the request body did not arrive within {seconds:g} s")
    return _refused_body(refused, "timeout")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            # A client's id is echoed into logs and headers: accept only a safe shape.
            return candidate if _REQUEST_ID_OK.match(candidate) else None
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths are one label, so a scanner cannot blow up metric cardinality.
    return path if isinstance(path, str) else "<unmatched>"


class HeadAsGet:
    """HEAD answered as GET without the body, on every GET route (RFC 9110 section 9.3.2;
    load balancers probe with it). FastAPI's routes take only the methods they declare, unlike
    Starlette's plain routes, so a HEAD was a 405 on every one of them.

    Inside RequestContextMiddleware, which logs and counts the request as the HEAD it was. The
    route runs as for a GET (the same checks, status and headers, Content-Length of the body a
    GET gets) and its body is dropped here, whatever server runs the app. No route of this app
    declares HEAD itself (one that did would never be reached)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        # A copy: the server reads the method from its own scope to leave out the body.
        as_get = {**scope, "method": "GET"}

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        try:
            await self.app(as_get, receive, headers_only)
        finally:
            # The route matched, for the access log and the metrics' route label.
            if "route" in as_get:
                scope["route"] = as_get["route"]
