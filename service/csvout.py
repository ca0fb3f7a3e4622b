"""CSV downloads shared by the reports, the invoice list and the bad-debt list."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from fastapi import Request, Response

from service.schemas import money

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


def wants_csv(accept: str | None, format_param: str | None) -> bool:
    """`?format=csv` (a link a person can click) or `Accept: text/csv` (a client)."""
    if format_param is not None:
        return format_param == "csv"
    return accept is not None and "text/csv" in accept.lower()


def render(header: Sequence[str], rows: Iterable[Iterable[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(cell(value) for value in row)
    return out.getvalue()


def response(
    header: Sequence[str],
    rows: Iterable[Iterable[object]],
    *,
    filename: str,
    next_url: str | None = None,
) -> Response:
    """A download; the next page's URL, if any, in the `Link` header."""
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if next_url is not None:
        headers["Link"] = f'<{next_url}>; rel="next"'
    return Response(render(header, rows), media_type=CSV_MEDIA_TYPE, headers=headers)


def page_response(
    request: Request,
    header: Sequence[str],
    rows: Iterable[Iterable[object]],
    *,
    filename: str,
    next_cursor: str | None,
) -> Response:
    """One page of a keyset-paged list as CSV; the next page is the same URL with `cursor`."""
    next_url = None
    if next_cursor is not None:
        next_url = str(request.url.include_query_params(cursor=next_cursor))
    return response(header, rows, filename=filename, next_url=next_url)


def cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    text = str(value)
    # A cell a spreadsheet would run as a formula is defused (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True
