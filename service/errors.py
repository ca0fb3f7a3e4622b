"""One error hierarchy, rendered as RFC 9457 problem+json by one handler."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


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


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors, trimmed to what a client needs: where, what, and never our internals."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append(
            {
                "loc": loc,
                "field": ".".join(loc),
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
        )
    return out


def describe(errors: list[dict[str, Any]], limit: int = 3) -> str:
    parts = [f"{e['field']}: {e['msg']}" for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return problem(
            exc.status_code,
            exc.title,
            exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        return problem(422, "Validation failed", describe(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return problem(exc.status_code, detail, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        from service.logging import get_logger

        get_logger("service.errors").exception("request.failed", error=type(exc).__name__)
        if _is_database_unavailable(exc):
            return problem(
                503,
                "Service unavailable",
                "the database is not reachable right now; nothing was stored, retry later",
                headers={"Retry-After": "5"},
            )
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


def _is_database_unavailable(exc: BaseException) -> bool:
    """Connection-level failures (server restarting, pool broken) are retryable 503s."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(
            current,
            OSError
            | ConnectionError
            | asyncpg.exceptions.ConnectionDoesNotExistError
            | asyncpg.exceptions.CannotConnectNowError
            | asyncpg.exceptions.AdminShutdownError
            | asyncpg.exceptions.InterfaceError,
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
