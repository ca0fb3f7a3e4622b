"""Every answered request counted and timed by route template, method and status
(ledgerlink_http_requests_total, ledgerlink_http_request_duration_seconds)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import HTTP_LATENCY, HTTP_REQUESTS
from service.middleware.body_deadline import CLIENT_CLOSED, client_gone

# Labels come from fixed sets only: a client choosing the method (any token is a valid HTTP
# method) or the path must not be able to add series, each of which costs memory and scrape
# time.
_METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
UNMATCHED = "<unmatched>"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # What is recorded when the app fails without answering.
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route, method = route_template(scope), method_label(scope["method"])
            HTTP_REQUESTS.labels(route, method, str(answered_status(scope, status))).inc()
            HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)


def answered_status(scope: Scope, status: int) -> int:
    """The status a request is recorded with: a client that went away before it was answered
    gets 499, whatever was sent to nobody."""
    return CLIENT_CLOSED if client_gone(scope) else status


def method_label(method: str) -> str:
    return method if method in _METHOD_LABELS else OTHER_METHOD


def route_template(scope: Scope) -> str:
    """The matched route's path template; every unmatched path is one label, so a scanner
    cannot blow up the metrics' cardinality."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED
