"""The console's pages: the templates (with their `url_for`, link filters and the CSRF field's
name), and the answers every page route gives, a page or a redirect, each with the console's
security headers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from service.console import links
from service.console.session import CSRF_FIELD
from service.middleware.security_headers import CONSOLE_HEADERS

if TYPE_CHECKING:
    from service.console.access import ConsoleUser

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["url_for"] = links.url_for
templates.env.globals["csrf_field"] = CSRF_FIELD
templates.env.filters["invoice_href"] = links.invoice_href
templates.env.filters["account_href"] = links.account_href
STATIC = HERE / "static"


def render(
    request: Request,
    template: str,
    status_code: int = 200,
    *,
    user: ConsoleUser | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """`template` as the page; with `user`, the page has the console's navigation."""
    context["user"] = user
    response = templates.TemplateResponse(
        request, template, context, status_code=status_code, headers=headers
    )
    response.headers.update(CONSOLE_HEADERS)
    return response


def redirect(url: str) -> RedirectResponse:
    """After a form (and to the sign-in page): 303, so the browser follows with a GET."""
    return RedirectResponse(url, status_code=303, headers=CONSOLE_HEADERS)
