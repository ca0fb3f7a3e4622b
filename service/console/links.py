"""Links the console builds from data (invoice numbers, account refs): each value is encoded so
that nothing in it (`/`, `?`, `#`, `%`, a dot segment) can change which page the link opens."""

from __future__ import annotations

from urllib.parse import quote, urlencode

# Browsers (the WHATWG URL standard) resolve a path segment that is `.` or `..` before sending,
# and so do `%2E` and `%2E%2E` (and `.%2E`, `%2E.`): no encoding lets a path segment carry these
# values, so their links carry the number in the query instead.
DOT_SEGMENTS = frozenset({".", ".."})


def path_segment(value: str) -> str:
    """`value` as one path segment: every character but unreserved ones percent-encoded."""
    return quote(value, safe="")


def invoice_href(number: str) -> str:
    """The console page of invoice `number`."""
    if number in DOT_SEGMENTS:
        return "/console/invoice?" + urlencode({"number": number})
    return "/console/invoices/" + path_segment(number)


def account_href(account_ref: str) -> str:
    """The invoice list of one account."""
    return "/console/invoices?" + urlencode({"account_ref": account_ref})
