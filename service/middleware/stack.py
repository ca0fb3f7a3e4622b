"""The HTTP middleware around the app, in their order."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import Scope

from service.middleware.access_log import AccessLog
from service.middleware.admission import RefuseBeforeInput
from service.middleware.body_deadline import BodyDeadline
from service.middleware.body_limit import BodyLimit
from service.middleware.head import HeadAsGet
from service.middleware.inflight import BodyBudget, InFlightBodies
from service.middleware.request_id import RequestId
from service.middleware.request_metrics import RequestMetrics
from service.middleware.security_headers import API_HEADERS, SecurityHeaders
from service.settings import Settings


def add_http_middleware(
    app: FastAPI, settings: Settings, check_before_input: Callable[[Scope], None]
) -> None:
    """Outermost first: the request id is bound before anything logs; the headers, the log
    line and the metrics cover every answer, refusals included; the key is checked before any
    input is read; the budget is taken before the size limit reads a byte, and the deadline
    is innermost, where the body arrives; HEAD runs its route as a GET, recorded as a HEAD.

    Starlette runs the middleware added last outermost, hence the order below."""
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyDeadline, seconds=settings.request_timeout_seconds)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        InFlightBodies,
        budget=BodyBudget(settings.max_inflight_body_bytes),
        max_body_bytes=settings.max_body_bytes,
    )
    app.add_middleware(RefuseBeforeInput, check=check_before_input)
    app.add_middleware(RequestMetrics)
    app.add_middleware(AccessLog)
    app.add_middleware(SecurityHeaders, headers=API_HEADERS)
    app.add_middleware(RequestId)
