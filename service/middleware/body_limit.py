"""A request body larger than LEDGERLINK_MAX_BODY_BYTES gets a 413 before it is all read: at
once when its Content-Length says so, else as soon as what arrived passes the limit. Only a
request whose route reads its body is refused (a GET with a body nobody reads is answered)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from service.middleware.refusal import Refusal, declared_length


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = Refusal()
        too_large = f"the body is larger than {limit} bytes (LEDGERLINK_MAX_BODY_BYTES)"
        started = body_done = False
        size = 0

        async def limited_receive() -> Message:
            nonlocal started, body_done, size
            if body_done:
                return await receive()
            if not started:
                started = True
                if declared_length(Headers(scope=scope)) > limit:
                    raise refusal.refuse(PayloadTooLarge(too_large), "too_large")
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise refusal.refuse(PayloadTooLarge(too_large), "too_large")
            return message

        await self.app(scope, limited_receive, refusal.answering(send))
