"""Opaque keyset cursors for every paged list: base64url JSON, checked on the way back in.

A page ends with the key of its last row; the next request sends the cursor back and gets the
rows after it. A cursor may carry what its query was (`q`), so that one from another query is
refused instead of paging the wrong list. A token that is not one we issued is a 422 naming
the query parameter, never a 500: its values must be of the type the caller reads, and text
the database can hold.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service.errors import Unprocessable


def encode(values: dict[str, Any]) -> str:
    raw = json.dumps(values, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, *, param: str, fields: dict[str, type]) -> dict[str, Any]:
    """The cursor's values (each of `fields`, of its type), or 422 naming `param`."""
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        values = None
    if not isinstance(values, dict) or not all(
        _holds(values.get(name), kind) for name, kind in fields.items()
    ):
        raise not_issued(param)
    return values


def decode_after(token: str | None, *, param: str) -> str | None:
    """The key a page in invoice-number order ended with (a cursor of encode_after)."""
    if token is None:
        return None
    return str(decode(token, param=param, fields={"after": str})["after"])


def encode_after(invoice_number: str) -> str:
    return encode({"after": invoice_number})


def decode_id(token: str, *, param: str, maximum: int) -> int:
    """The CRM outbox's cursor: the last id of the page, a bare number, because its query
    parameter is published with a maximum length of 20 (too short for base64url JSON)."""
    if not (token.isascii() and token.isdigit()) or int(token) > maximum:
        raise not_issued(param)
    return int(token)


def not_issued(param: str) -> Unprocessable:
    return _bad(param, "is not a cursor this service issued; start again without it")


def mismatch(param: str) -> Unprocessable:
    return _bad(param, "belongs to a different query; start again without it")


def _holds(value: Any, kind: type) -> bool:
    if kind is int:
        # bool is an int to Python; a key is never a bool.
        return type(value) is int
    if kind is str:
        # The database refuses NUL and text that is not UTF-8 (a lone surrogate from JSON).
        return isinstance(value, str) and bool(value) and "\x00" not in value and _utf8(value)
    return isinstance(value, kind)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad(param: str, msg: str) -> Unprocessable:
    return Unprocessable(
        f"{param} {msg}",
        errors=[{"loc": ["query", param], "field": f"query.{param}", "msg": msg, "type": "cursor"}],
    )
