"""HEAD on every GET route (see HeadAsGet)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """HEAD answered as GET without the body, on every GET route (RFC 9110 section 9.3.2;
    load balancers probe with it). FastAPI's routes take only the methods they declare, unlike
    Starlette's plain routes, so a HEAD was a 405 on every one of them.

    Inside the access log and the metrics, which record the request as the HEAD it was. The
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
