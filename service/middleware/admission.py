"""A check that runs before a request's input is read (service.auth.check_before_input: a
request to the API must show a valid key before its body or query string is looked at). A
refused request is answered at once, its body left unread."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError
from service.middleware.refusal import declared_length, refusal_response


class RefuseBeforeInput:
    def __init__(self, app: ASGIApp, check: Callable[[Scope], None]) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.check(scope)
        except ServiceError as exc:
            response = refusal_response(exc)
            headers = Headers(scope=scope)
            if declared_length(headers) or "transfer-encoding" in headers:
                # The unread body is still on its way: the connection cannot be reused.
                response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
