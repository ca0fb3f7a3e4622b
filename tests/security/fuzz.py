"""Hostile webhook bodies for the fuzz tests: each one is invalid by construction.

A valid batch with one thing broken (a field of the wrong type or out of range, an unknown
key, a structural change), raw text a JSON parser must refuse (NaN, deep nesting, bad UTF-8,
truncation), and random JSON that is not a batch at all.
"""

from __future__ import annotations

import json
import string
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

TYPES = ("SI", "SC", "SR", "SA", "SD", "SP")
MAX_AMOUNT = Decimal("999999999999.99")

# JSON values of every kind, unicode included (surrogates excluded: json.dumps would escape
# them into text that is invalid JSON, which the raw strategies cover anyway).
UNICODE = st.characters(codec="utf-8")
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(UNICODE, max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(UNICODE, max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
NOT_A_STRING = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(JSON_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2),
)
# What the webhook refuses in text: C0, DEL, C1 and the Unicode line/paragraph separators.
REFUSED = [chr(c) for c in [*range(32), *range(127, 160)]] + ["\u2028", "\u2029"]
CONTROL = st.sampled_from(REFUSED)


def with_control_character(max_size: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda before, control, after: (before + control + after)[: max_size or None],
        st.text(UNICODE, max_size=max(0, max_size // 2 - 1)),
        CONTROL,
        st.text(UNICODE, max_size=max(0, max_size // 2 - 1)),
    ).filter(lambda text: any(ch in REFUSED for ch in text))


def too_long(limit: int) -> st.SearchStrategy[str]:
    return st.text(UNICODE, min_size=limit + 1, max_size=limit + 40)


def bad_text(limit: int, *, required: bool) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [
        too_long(limit),
        with_control_character(limit),
        NOT_A_STRING,
    ]
    if required:
        options.append(st.none())
    return st.one_of(*options)


HUGE = st.integers(min_value=10**13, max_value=10**1000)
BAD_AMOUNT = st.one_of(
    # Out of range.
    st.decimals(max_value=Decimal("-0.01"), places=2, allow_nan=False, allow_infinity=False).map(
        str
    ),
    HUGE,
    HUGE.map(lambda n: -n),
    st.decimals(
        min_value=MAX_AMOUNT + Decimal("0.01"), places=2, allow_nan=False, allow_infinity=False
    ).map(str),
    # More than two decimals.
    st.decimals(min_value=0, max_value=1000, places=3, allow_nan=False)
    .filter(lambda d: d != d.quantize(Decimal("0.01")))
    .map(str),
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "inf", "1e999", "", "1,000.00"]),
    st.text(string.ascii_letters, min_size=1, max_size=12),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
BAD_SIGNED_AMOUNT = st.one_of(
    HUGE,
    HUGE.map(lambda n: -n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "12.345", "abc", ""]),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
BAD_TRAN_NUMBER = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=2**63, max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.none(),
    st.booleans(),
    st.lists(st.integers(min_value=1), max_size=2),
)
BAD_DATE = st.one_of(
    st.sampled_from(
        ["2026-02-30", "2026-13-01", "2026-1-5", "20260105", "2026-01-05T00:00:00", "0000-01-01"]
    ),
    st.text(string.ascii_letters + string.punctuation, max_size=12),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
)
BAD_BOOL = st.one_of(
    st.integers(), st.sampled_from(["true", "false", "1", "yes"]), st.lists(st.booleans())
)
BAD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "tran_number": BAD_TRAN_NUMBER,
    "type": st.one_of(st.text(max_size=4).filter(lambda t: t not in TYPES), NOT_A_STRING),
    "account_ref": st.one_of(st.just(""), bad_text(32, required=True)),
    "reference": bad_text(30, required=True),
    "date": BAD_DATE,
    "details": bad_text(60, required=True),
    "nominal_code": bad_text(8, required=True),
    "net_amount": BAD_AMOUNT,
    "tax_amount": BAD_AMOUNT,
    "gross_amount": BAD_AMOUNT,
    "outstanding": BAD_SIGNED_AMOUNT,
    "deleted": BAD_BOOL,
    "allocations": st.one_of(
        NOT_A_STRING.filter(lambda v: not isinstance(v, list) or v),
        st.text(max_size=5),
        st.none(),
    ),
}
REQUIRED = ("tran_number", "type", "account_ref", "date", "net_amount", "tax_amount")
BAD_ALLOCATION_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "invoice_tran_number": BAD_TRAN_NUMBER,
    "amount": st.one_of(BAD_AMOUNT, st.just("0.00"), st.just(0)),
    "date": BAD_DATE.filter(lambda v: v is not None),
    "deleted": BAD_BOOL,
}

SAFE_TEXT = st.text(UNICODE.filter(lambda ch: ch not in REFUSED), max_size=30)


@st.composite
def valid_posting(draw: st.DrawFn, tran_number: int) -> dict[str, Any]:
    amount = draw(st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False))
    posting: dict[str, Any] = {
        "tran_number": tran_number,
        "type": draw(st.sampled_from(TYPES)),
        "account_ref": draw(SAFE_TEXT.filter(bool).map(lambda t: t[:32])),
        "reference": draw(SAFE_TEXT),
        "date": "2026-03-01",
        "details": draw(SAFE_TEXT),
        "net_amount": str(amount),
        "tax_amount": "0.00",
        "gross_amount": str(amount),
    }
    if posting["type"] != "SI":
        posting["allocations"] = [
            {"invoice_tran_number": draw(st.integers(1, 10**6)), "amount": str(amount or 1)}
        ]
    return posting


@st.composite
def valid_batch(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 4))
    first = draw(st.integers(1, 10**9))
    return {
        "source": "fuzz",
        "postings": [draw(valid_posting(first + i)) for i in range(count)],
    }


@st.composite
def broken_field(draw: st.DrawFn) -> bytes:
    batch = draw(valid_batch())
    posting = draw(st.sampled_from(batch["postings"]))
    field = draw(st.sampled_from(sorted(BAD_FIELDS)))
    if field in REQUIRED and draw(st.booleans()):
        posting.pop(field)
    else:
        posting[field] = draw(BAD_FIELDS[field])
    return json.dumps(batch).encode()


@st.composite
def broken_allocation(draw: st.DrawFn) -> bytes:
    batch = draw(valid_batch())
    posting = batch["postings"][0]
    allocation = {"invoice_tran_number": 1, "amount": "1.00"}
    choice = draw(st.sampled_from([*sorted(BAD_ALLOCATION_FIELDS), "missing", "extra"]))
    if choice == "missing":
        allocation.pop(draw(st.sampled_from(["invoice_tran_number", "amount"])))
    elif choice == "extra":
        allocation[draw(st.sampled_from(["note", "id", "Amount"]))] = draw(JSON_SCALARS)
    else:
        allocation[choice] = draw(BAD_ALLOCATION_FIELDS[choice])
    posting["allocations"] = [allocation]
    return json.dumps(batch).encode()


@st.composite
def broken_structure(draw: st.DrawFn) -> bytes:
    batch = draw(valid_batch())
    how = draw(
        st.sampled_from(
            [
                "no postings",
                "empty",
                "not a list",
                "extra key",
                "posting extra key",
                "source",
                "duplicate tran_number",
                "posting not an object",
            ]
        )
    )
    if how == "no postings":
        batch.pop("postings")
    elif how == "empty":
        batch["postings"] = []
    elif how == "not a list":
        batch["postings"] = draw(st.one_of(JSON_SCALARS, st.dictionaries(st.text(), JSON_SCALARS)))
    elif how == "extra key":
        batch[draw(st.text(min_size=1).filter(lambda k: k not in ("source", "postings")))] = draw(
            JSON_VALUES
        )
    elif how == "posting extra key":
        key = draw(st.text(min_size=1).filter(lambda k: k not in BAD_FIELDS))
        batch["postings"][0][key] = draw(JSON_VALUES)
    elif how == "source":
        batch["source"] = draw(st.one_of(too_long(100), NOT_A_STRING))
    elif how == "duplicate tran_number":
        batch["postings"].append(dict(batch["postings"][0]))
    else:
        batch["postings"].append(draw(st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS))))
    return json.dumps(batch).encode()


@st.composite
def broken_text(draw: st.DrawFn) -> bytes:
    """What json.dumps would never write: the parser itself must refuse it."""
    body = json.dumps(draw(valid_batch())).encode()
    how = draw(
        st.sampled_from(
            ["literal", "nesting", "utf-8", "truncated", "trailing", "bom", "raw control", "empty"]
        )
    )
    if how == "literal":
        token = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]))
        return body.replace(b'"tax_amount": "0.00"', b'"tax_amount": ' + token, 1)
    if how == "nesting":
        depth = draw(st.sampled_from([64, 256, 1024, 100_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return body.replace(
            b'"tax_amount": "0.00"', b'"tax_amount": ' + opener * depth + b"1" + closer * depth, 1
        )
    if how == "utf-8":
        junk = draw(st.binary(min_size=1, max_size=4).filter(_not_utf8))
        return body.replace(b'"source": "fuzz"', b'"source": "fu' + junk + b'zz"', 1)
    if how == "truncated":
        return body[: draw(st.integers(0, len(body) - 1))]
    if how == "trailing":
        return body + draw(st.sampled_from([b"}", b"]", b",", b"x", b" {}", b"\x00"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    if how == "raw control":
        control = draw(st.sampled_from([b"\n", b"\t", b"\x00", b"\x1f"]))
        return body.replace(b'"source": "fuzz"', b'"source": "fu' + control + b'zz"', 1)
    return b""


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def not_a_batch() -> st.SearchStrategy[bytes]:
    return JSON_VALUES.filter(lambda v: not (isinstance(v, dict) and "postings" in v)).map(
        lambda v: json.dumps(v).encode()
    )


def hostile_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        broken_field(), broken_allocation(), broken_structure(), broken_text(), not_a_batch()
    )
