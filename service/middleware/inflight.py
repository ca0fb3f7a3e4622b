"""A budget for the request bodies this process receives, all requests together
(LEDGERLINK_MAX_INFLIGHT_BODY_BYTES): past it a request is refused with a 503 instead of taking
more memory."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceUnavailable
from service.middleware.refusal import Refusal, declared_length

BUSY = (
    "the service is receiving as many request bodies as it holds at once "
    "(LEDGERLINK_MAX_INFLIGHT_BODY_BYTES); nothing of this one was stored, retry shortly"
)


class BodyBudget:
    """The bytes of request bodies being received by this process.

    Once no body is in flight after large ones, the C allocator is asked to return its free
    pages to the system: bodies come in chunks of up to 64 KiB, which it otherwise keeps for
    good.
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


class InFlightBodies:
    """A request reserves its declared Content-Length before the first byte is read (or each
    chunk as it comes, without one), and gives it back when it is answered.

    A body declared larger than `max_body_bytes` is not reserved: BodyLimit, inside, refuses
    it with a 413 before a byte is read, which a full budget must not turn into a 503.
    """

    def __init__(self, app: ASGIApp, budget: BodyBudget, max_body_bytes: int) -> None:
        self.app = app
        self.budget = budget
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget, limit = self.budget, self.max_body_bytes
        refusal = Refusal()
        started = body_done = False
        size = reserved = 0

        def reserve(more: int) -> None:
            nonlocal reserved
            if more <= 0:
                return
            if not budget.reserve(more):
                raise refusal.refuse(ServiceUnavailable(BUSY, retry_after=2), "busy")
            reserved += more

        async def budgeted_receive() -> Message:
            nonlocal started, body_done, size
            if body_done:
                return await receive()
            if not started:
                started = True
                declared = declared_length(Headers(scope=scope))
                if declared <= limit:
                    reserve(declared)
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                reserve(size - reserved)
            return message

        try:
            await self.app(scope, budgeted_receive, refusal.answering(send))
        finally:
            budget.release(reserved)
