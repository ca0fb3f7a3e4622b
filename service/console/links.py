"""Links to the console's pages, by route name (`path_for`; `url_for` in the templates).

Each path parameter is encoded as one path segment, so that nothing in a value (`/`, `?`, `#`,
`%`) can change which page the link opens; a value that is a dot segment is refused (see
DOT_SEGMENTS). Links are paths, not absolute URLs: they stay on the scheme and host the
browser used, whatever proxy is in front.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request
from jinja2 import pass_context

# Browsers (the WHATWG URL standard) resolve a path segment that is `.` or `..` before sending,
# and so do `%2E` and `%2E%2E` (and `.%2E`, `%2E.`): no encoding lets a path segment carry these
# values, so their links carry the number in the query instead (`invoice_path`).
DOT_SEGMENTS = frozenset({".", ".."})


def path_for(request: Request, name: str, /, **path_params: object) -> str:
    """The path of the route named `name`, each parameter one encoded segment."""
    encoded: dict[str, Any] = {}
    for key, value in path_params.items():
        text = str(value)
        if text in DOT_SEGMENTS:
            raise ValueError(
                f"{key}={text!r} cannot be a path segment (browsers resolve it); link to it "
                "by query instead"
            )
        encoded[key] = quote(text, safe="")
    return str(request.app.url_path_for(name, **encoded))


def invoice_path(request: Request, number: str) -> str:
    """The console page of invoice `number`."""
    if number in DOT_SEGMENTS:
        return path_for(request, "console.invoice_by_query") + "?" + urlencode({"number": number})
    return path_for(request, "console.invoice", invoice_number=number)


def account_path(request: Request, account_ref: str) -> str:
    """The invoice list of one account."""
    return path_for(request, "console.invoices") + "?" + urlencode({"account_ref": account_ref})


# The templates' versions, which find the request in the page's context (as Starlette's own
# url_for does, which gives absolute URLs).
@pass_context
def url_for(context: Any, name: str, /, **path_params: object) -> str:
    return path_for(context["request"], name, **path_params)


@pass_context
def invoice_href(context: Any, number: str) -> str:
    return invoice_path(context["request"], number)


@pass_context
def account_href(context: Any, account_ref: str) -> str:
    return account_path(context["request"], account_ref)
