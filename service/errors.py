"""The one error hierarchy: an error a client can act on, carrying its HTTP status.

Rendered as RFC 9457 problem+json by service/exception_handlers.py; this module imports nothing
from the web framework, so services raise these without knowing about HTTP.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error a client can act on. Subclasses fix the HTTP status and title."""

    status_code = 400
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.extra = extra or {}


class Unauthorized(ServiceError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    title = "Forbidden"


class NotFound(ServiceError):
    status_code = 404
    title = "Not found"


class Conflict(ServiceError):
    status_code = 409
    title = "Conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    title = "Payload too large"


class RequestTimeout(ServiceError):
    status_code = 408
    title = "Request timeout"


class Unprocessable(ServiceError):
    status_code = 422
    title = "Unprocessable content"


class ServiceUnavailable(ServiceError):
    status_code = 503
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
