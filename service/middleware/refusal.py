"""A request body refused while it streams in (too large, too slow, no room), answered with
the refusal's own status.

The layers that refuse raise the ServiceError from `receive`, inside the app: a route that
reads its body itself (the webhook) lets it reach the error handlers, but FastAPI answers any
error raised while it parses a body with a 400, and that answer is replaced here by the
refusal's.
"""

from __future__ import annotations

from typing import Literal

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import Message, Send

from service.errors import ServiceError
from service.exception_handlers import problem

# The `reason` of a refused body, in the problem body and (for the webhook) its metric label.
BodyRefusal = Literal["too_large", "busy", "timeout"]


def refusal_response(error: ServiceError) -> JSONResponse:
    return problem(
        error.status_code, error.title, error.detail, headers=error.headers, extra=error.extra
    )


def declared_length(headers: Headers) -> int:
    """The request's Content-Length, 0 when absent or not a number."""
    value = headers.get("content-length")
    return int(value) if value is not None and value.isascii() and value.isdigit() else 0


class Refusal:
    """What one layer refused of one request's body, and the answer sent in its place."""

    __slots__ = ("_replacing", "error")

    def __init__(self) -> None:
        self.error: ServiceError | None = None
        self._replacing = False

    def refuse(self, error: ServiceError, reason: BodyRefusal) -> ServiceError:
        """The error to raise from `receive`, remembered for the answer."""
        error.extra["reason"] = reason
        self.error = error
        return error

    def answering(self, send: Send) -> Send:
        async def send_refusal(message: Message) -> None:
            refused = self.error
            if refused is None:
                await send(message)
                return
            if message["type"] == "http.response.start":
                if message["status"] != refused.status_code:
                    self._replacing = True
                    message = {
                        "type": "http.response.start",
                        "status": refused.status_code,
                        "headers": refusal_response(refused).raw_headers,
                    }
                # The rest of the body is still on its way: the connection cannot be reused.
                MutableHeaders(scope=message).append("connection", "close")
            elif self._replacing:
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": refusal_response(refused).body}
            await send(message)

        return send_refusal
