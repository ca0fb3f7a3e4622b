"""One log line per request (`http.request`: method, route template, status, duration), or
`http.client_disconnected` for a client that went away before it was answered. The probes and
the metrics scrape are logged only when they fail: they come every few seconds."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import get_logger
from service.middleware.body_deadline import client_gone
from service.middleware.request_metrics import method_label, route_template

log = get_logger("service.http")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # What is logged when the app fails without answering.
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            _log(scope, status, time.perf_counter() - started)


def _log(scope: Scope, status: int, elapsed: float) -> None:
    route, method = route_template(scope), method_label(scope["method"])
    if client_gone(scope):
        log.info(
            "http.client_disconnected",
            method=method,
            route=route,
            detail="the client closed the connection before its request was answered",
        )
    elif scope["path"] not in QUIET_PATHS or status >= 400:
        log.info(
            "http.request",
            method=method,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )
