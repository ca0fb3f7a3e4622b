"""Every error answered as RFC 9457 problem+json: the ServiceError hierarchy, validation
failures, and the storage layer's failures (classified by service/db_errors.py). Also declares
those answers in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import db_errors, query_parameters
from service.errors import ServiceError

PROBLEM_JSON = "application/problem+json"


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

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up mid-upload: nobody to answer, nothing broken (the request log
        # line records it as 499).
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        return problem(422, "Validation failed", describe(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return problem(exc.status_code, detail, detail, headers=getattr(exc, "headers", None))

    async def _storage(request: Request, exc: Exception) -> JSONResponse:
        return _answer_failure(request, exc)

    # The storage layer's failures: a database restarting (503) or text it cannot hold (422)
    # is answered here. Only what the generic handler below catches is re-raised to the server
    # as a crash; these are not crashes.
    for storage_error in db_errors.STORAGE_ERRORS:
        app.add_exception_handler(storage_error, _storage)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _answer_failure(request, exc)


def _answer_failure(request: Request, exc: Exception) -> JSONResponse:
    from service.logging import get_logger

    log = get_logger("service.errors")
    if db_errors.is_unstorable_text(exc):
        # Text PostgreSQL cannot hold (NUL, a lone surrogate) that got past a schema: it is
        # the client's input, refused whole like any other invalid value.
        log.warning("request.unstorable_text", path=request.url.path)
        return problem(
            422,
            "Validation failed",
            "a text value contains a character that cannot be stored (NUL or an unpaired "
            "surrogate); nothing was stored",
        )
    if db_errors.is_resource_exhausted(exc):
        log.warning("request.database_exhausted", error=f"{type(exc).__name__}: {exc}")
        return _retry_later(
            "the database is short of a resource right now (memory, lock table space or "
            "connections) and could not take this request, so nothing of it was stored; retry "
            "later, or with fewer requests at once"
        )
    if db_errors.is_transient(exc):
        log.warning("request.database_unavailable", error=f"{type(exc).__name__}: {exc}")
        return _retry_later(
            "the database is not reachable right now; retry later. Had the connection dropped "
            "while this request was being committed it may be stored already: a retry with the "
            "same webhook-id or Idempotency-Key is applied at most once"
        )
    log.exception("request.failed", error=type(exc).__name__)
    return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


def _retry_later(detail: str) -> JSONResponse:
    return problem(503, "Service unavailable", detail, headers={"Retry-After": "5"})


# What every error looks like on the wire, for the OpenAPI document.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {"type": "object"},
            "description": "For validation: each failing field (loc, field, msg, type)",
        },
    },
    "additionalProperties": True,
}
_PROBLEM_DESCRIPTIONS = {
    "400": "Malformed request (a body that is not JSON, a malformed header); nothing stored",
    "401": "Missing or unknown API key (send 'Authorization: Bearer <key>')",
    "403": "The API key lacks the scope this operation needs",
    "404": "Not found",
    "408": "The request body did not arrive within LEDGERLINK_REQUEST_TIMEOUT_SECONDS",
    "413": "The body is larger than LEDGERLINK_MAX_BODY_BYTES",
    "422": "Validation failed: `errors` names each failing field, and each unknown query "
    "parameter or body key; nothing was stored",
    "503": "The database is unavailable or short of resources, or the service holds as many "
    "request bodies as it may at once: retry after Retry-After seconds (with the same "
    "webhook-id or Idempotency-Key, so that a change stored just as the connection dropped "
    "is not applied twice)",
}
_HTTP_METHODS = frozenset({"get", "put", "post", "patch", "delete", "head", "options"})


def document_problems(spec: dict[str, Any]) -> dict[str, Any]:
    """Declare, on every operation, the problem+json errors it can answer. The handlers above
    and the middleware produce them for every route, so the routes do not list them all."""
    spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status in _possible_problems(path, method, operation):
                response = responses.setdefault(
                    status, {"description": _PROBLEM_DESCRIPTIONS[status]}
                )
                if status == "422":
                    # FastAPI documents its own 422 body (application/json); ours differs.
                    response.pop("content", None)
                    if response.get("description") == "Validation Error":
                        response["description"] = _PROBLEM_DESCRIPTIONS[status]
                if status == "503":
                    response.setdefault("headers", {})["Retry-After"] = {
                        "description": "Seconds to wait before retrying",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    }
            for code, response in responses.items():
                if code[:1] in ("4", "5") and not response.get("content"):
                    response["content"] = {PROBLEM_JSON: {}}
                declared = response.get("content", {}).get(PROBLEM_JSON)
                if declared is not None:
                    # A new dict each time: shared ones become YAML anchors in openapi.yaml.
                    declared.setdefault("schema", {"$ref": "#/components/schemas/Problem"})
            operation["responses"] = dict(sorted(responses.items()))
    for unused in ("HTTPValidationError", "ValidationError"):
        spec["components"]["schemas"].pop(unused, None)
    return spec


def _possible_problems(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    has_body = "requestBody" in operation
    statuses: list[str] = []
    if operation.get("security"):
        statuses += ["401", "403"]
    if "{" in path:
        statuses.append("404")
    if has_body:
        statuses += ["400", "408", "413"]
    if has_body or operation.get("parameters") or query_parameters.checked(method.upper(), path):
        # The last: an unknown query parameter (service/query_parameters.py).
        statuses.append("422")
    if path.startswith("/v1/"):
        statuses.append("503")
    return statuses


def install_openapi_problems(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
