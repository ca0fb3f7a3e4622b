"""Opaque keyset cursors: base64url JSON, checked on the way back in."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service.errors import Unprocessable


def encode(values: dict[str, Any]) -> str:
    raw = json.dumps(values, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, *, param: str, required: tuple[str, ...]) -> dict[str, Any]:
    """The cursor's values, or 422 naming the query parameter when it is not one we issued."""
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        values = None
    if not isinstance(values, dict) or any(key not in values for key in required):
        raise _bad(param, "is not a cursor this service issued; start again without it")
    return values


def mismatch(param: str) -> Unprocessable:
    return _bad(param, "belongs to a different query; start again without it")


def _bad(param: str, msg: str) -> Unprocessable:
    return Unprocessable(
        f"{param} {msg}",
        errors=[{"loc": ["query", param], "field": f"query.{param}", "msg": msg, "type": "cursor"}],
    )
