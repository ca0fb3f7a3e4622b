"""A request body must arrive within LEDGERLINK_REQUEST_TIMEOUT_SECONDS, whole: a client that
trickles it (slowloris) gets a 408 instead of holding a request open. One deadline for the
whole body: a per-chunk timeout would let a client sending a byte every few seconds hold it
for ever. Once the body is in, waiting (for a disconnect) is free.

A client that hangs up before its body has arrived is noted here: the access log and the
metrics record the request as the client's doing (499), not as whatever was sent to nobody.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RequestTimeout
from service.middleware.refusal import Refusal

# The status recorded for a request whose client went away before it was answered (nginx's
# "client closed request"): the client's doing, neither a success nor our failure.
CLIENT_CLOSED = 499
_CLIENT_GONE = "ledgerlink.client_gone"


def client_gone(scope: Scope) -> bool:
    """Whether the client hung up before its request body had arrived."""
    return bool(scope.get(_CLIENT_GONE, False))


class BodyDeadline:
    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.seconds
        refusal = Refusal()
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                detail = f"the request body did not arrive within {self.seconds:g} s"
                raise refusal.refuse(RequestTimeout(detail), "timeout") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            if message["type"] == "http.disconnect":
                scope[_CLIENT_GONE] = True
            return message

        await self.app(scope, timed_receive, refusal.answering(send))
