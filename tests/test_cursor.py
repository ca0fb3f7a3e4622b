"""Keyset cursors (service.cursor), the one codec every paged list uses: what we issue comes
back as it went, and anything else is a 422 naming the query parameter, never a 500."""

from __future__ import annotations

import base64

import httpx
import pytest

from service import cursor
from service.errors import Unprocessable
from tests.support.keys import READ_KEY, auth


def _forge(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_what_is_issued_comes_back() -> None:
    token = cursor.encode({"after": "INV-é/1", "q": "abc"})
    assert cursor.decode(token, param="cursor", fields={"after": str, "q": str}) == {
        "after": "INV-é/1",
        "q": "abc",
    }
    assert cursor.decode_after(cursor.encode_after("SI 7"), param="cursor") == "SI 7"
    assert cursor.decode_after(None, param="cursor") is None
    assert cursor.decode_id("42", param="cursor", maximum=100) == 42


@pytest.mark.parametrize(
    ("token", "fields"),
    [
        ("!!!", {"after": str}),
        ("%FF", {"after": str}),
        (_forge(b"[1]"), {"after": str}),
        (_forge(b'{"q":"x"}'), {"after": str}),
        (_forge(b'{"after":1}'), {"after": str}),
        (_forge(b'{"after":""}'), {"after": str}),
        # Text PostgreSQL cannot hold: NUL, and a lone surrogate (valid JSON, not UTF-8).
        (_forge(b'{"after":"A\\u0000"}'), {"after": str}),
        (_forge(b'{"after":"\\ud800"}'), {"after": str}),
        (_forge(b'{"seq":true}'), {"seq": int}),
        (_forge(b'{"seq":"1"}'), {"seq": int}),
    ],
)
def test_anything_else_is_a_422_naming_the_parameter(token: str, fields: dict[str, type]) -> None:
    with pytest.raises(Unprocessable) as refused:
        cursor.decode(token, param="changes_cursor", fields=fields)
    assert refused.value.errors is not None
    assert refused.value.errors[0]["loc"] == ["query", "changes_cursor"]
    assert "changes_cursor is not a cursor this service issued" in refused.value.detail


@pytest.mark.parametrize("token", ["abc", "-1", "١٢", "101"])
def test_an_id_cursor_is_ascii_digits_within_range(token: str) -> None:
    with pytest.raises(Unprocessable):
        cursor.decode_id(token, param="cursor", maximum=100)


@pytest.mark.parametrize(
    "path",
    ["/v1/reports/bad-debts", "/v1/reconciliation/report", "/v1/invoices", "/v1/crm/outbox"],
)
async def test_a_forged_cursor_is_422_on_every_list(client: httpx.AsyncClient, path: str) -> None:
    forged = _forge(b'{"after":"A\\u0000","q":"x"}')
    response = await client.get(path, params={"cursor": forged}, headers=auth(READ_KEY))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "cursor"]
