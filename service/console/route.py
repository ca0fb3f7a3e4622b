"""The console's own error pages: every console route is a ConsoleRoute, which answers what
its request raised as a person expects a web page to (the API's handlers answer
problem+json).

- A ServiceError: the error page with its status (a 401: the sign-in page instead).
- A malformed address or form (a job id that is no UUID, an unknown status in a filter):
  the error page with a 422 naming each field.
- No live session: a GET is sent to the sign-in page and brought back after; a form gets a
  401 page (its data would be lost in the round trip).
- An answer a dependency gave before the route ran (the sign-in's back-off).
- A form FastAPI could not read (a body too large or too slow, too many fields, a file):
  the error page with its status.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from service.console.access import SignInRequired, claimed_user
from service.console.links import path_for
from service.console.pages import redirect, render
from service.errors import ServiceError, Unauthorized, Unprocessable
from service.exception_handlers import describe, validation_errors


class Answered(Exception):
    """A dependency that answered the request itself, before the route ran."""

    def __init__(self, response: Response) -> None:
        self.response = response


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_as_page(request: Request) -> Response:
            try:
                return await handle(request)
            except Answered as answered:
                return answered.response
            except SignInRequired:
                return sign_in_required(request)
            except ServiceError as exc:
                return error_page(request, exc)
            except RequestValidationError as exc:
                errors = validation_errors(exc)
                return error_page(request, Unprocessable(describe(errors), errors=errors))
            except HTTPException as exc:
                # Raised by FastAPI while it read the form: a refusal of the body itself (too
                # large, too slow) is the cause; else the form could not be parsed.
                cause = exc.__cause__
                return error_page(
                    request, cause if isinstance(cause, ServiceError) else _unreadable(exc)
                )

        return handle_as_page


def console_router() -> APIRouter:
    """A router of console pages: under /console/, out of the OpenAPI document, its errors
    answered as pages, reading forms of a few dozen fields and never a file."""
    return APIRouter(
        prefix="/console",
        include_in_schema=False,
        route_class=ConsoleRoute,
        form_limits={"max_fields": 500, "max_files": 0},
    )


def _unreadable(exc: HTTPException) -> ServiceError:
    return Unprocessable(f"the form could not be read: {exc.detail}")


def error_page(request: Request, error: ServiceError) -> Response:
    if isinstance(error, Unauthorized):
        return redirect(path_for(request, "console.sign_in"))
    return render(request, "error.html", error.status_code, user=claimed_user(request), error=error)


def sign_in_required(request: Request) -> Response:
    if request.method == "GET":
        wanted = _as_sent(request) + (f"?{request.url.query}" if request.url.query else "")
        return redirect(path_for(request, "console.sign_in") + "?" + urlencode({"next": wanted}))
    return render(
        request,
        "error.html",
        401,
        error=Unauthorized("your session has ended: sign in again, then repeat this"),
    )


def _as_sent(request: Request) -> str:
    """The path as the client encoded it: the decoded one would turn an invoice number's
    `%3F` into a query and its `%2F` into a separator."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes):
        # Some servers leave the query on raw_path; an unencoded `?` ends the path anyway.
        return raw.partition(b"?")[0].decode("latin-1")
    return quote(request.url.path)
