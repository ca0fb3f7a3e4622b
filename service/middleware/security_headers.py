"""The security headers: one policy, defined here, for the API and the console.

Every response gets them; what a response sets itself is kept (the console's pages send the
console's policy). The console's is stricter: its pages run no inline script (console.js is
a file) and its forms post only to the console, while the API's docs page (Swagger UI) needs
inline script and style. The console keeps the Referer within the site; the API sends none.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_EVERY_RESPONSE = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
API_HEADERS: Mapping[str, str] = {
    **_EVERY_RESPONSE,
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'",
}
CONSOLE_HEADERS: Mapping[str, str] = {
    **_EVERY_RESPONSE,
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class SecurityHeaders:
    """Adds each header of `headers` that the response does not set itself."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str] = API_HEADERS) -> None:
        self.app = app
        self.headers = tuple(headers.items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_secured)
