"""Reading a webhook body into a PostingBatch (`parse_batch`), and what the store takes from the
raw body instead of the validated models (`received_postings`).

The batch is validated by pydantic-core in strict JSON mode; what it cannot see is checked on
the raw body here: amounts sent as JSON numbers are read again as written (they reached
pydantic-core as binary floats), a key repeated in one object is refused, and so is a
transaction repeated in one batch. Each of those checks has a fast path for the batches the
exporter sends, and falls back to reading the body again only when it cannot be sure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from service.errors import ServiceError, Unprocessable
from service.ingest.amounts import CENT, AmountsRead, amount_fields, without_plain_path
from service.ingest.rejections import InvalidBody, rejected
from service.ingest.schemas import AllocationIn, PostingBatch, PostingIn, loc_text

# Errors listed in one problem response; a batch of 5000 bad postings does not need 5000.
MAX_ERRORS = 50


def parse_batch(body: bytes, *, base_currency: str) -> PostingBatch:
    amounts = AmountsRead()
    try:
        batch = PostingBatch.model_validate_json(body, strict=True, context=amounts)
    except ValidationError as exc:
        errors = without_plain_path(exc.errors(include_url=False, include_input=False))
        if errors and errors[0]["type"] == "json_invalid":
            raise rejected(
                InvalidBody, "invalid_json", f"the body is not valid JSON: {errors[0]['msg']}"
            ) from None
        raise _invalid_batch([_field_error(e) for e in errors]) from None
    refused = (
        (inexact_numbers(body) if amounts.as_numbers else [])
        or _duplicate_keys(body, batch)
        or _duplicate_tran_numbers(batch)
    )
    if refused:
        raise _invalid_batch(refused)
    in_base = _base_currency_errors(batch, base_currency)
    if in_base:
        raise _invalid_batch(in_base)
    return batch


# A JSON string token: a quote, then characters other than quote and backslash or escapes, then
# a quote. Matched from a token boundary, it finds exactly where the string ends.
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
# The top-level object up to its postings array, with the source before it or not.
_UP_TO_POSTINGS = re.compile(
    rf'\s*\{{\s*(?:"source"\s*:\s*(?:null|{_JSON_STRING})\s*,\s*)?"postings"\s*:\s*(?=\[)',
    re.DOTALL,
)
# The end of the postings array when the source follows it, up to the end of the body.
_SOURCE_LAST = re.compile(rf'\]\s*,\s*"source"\s*:\s*(?:null|{_JSON_STRING})\s*\}}\s*\Z', re.DOTALL)
# How far from the end the source member is looked for: its value is at most 100 characters,
# each at most 12 when escaped; a body that spreads it wider takes the serialised path.
_SOURCE_LAST_WITHIN = 2048


def received_postings(body: bytes, batch: PostingBatch) -> str | None:
    """The text of the body's postings array, for PostgreSQL to read instead of the postings
    serialised again (docs/BENCHMARKS.md), or None where it could read something else from it
    than the validated postings hold.

    Every field of a posting is read by PostgreSQL as pydantic read it: the same integers,
    strings (escapes included), dates as YYYY-MM-DD and amounts as ASCII digits or exact JSON
    numbers, cast to the same numeric(14, 2); absent fields take the defaults the SQL gives
    them; unknown and repeated keys were refused. The exchange rate is the exception: pydantic
    reads "1_000", digits of other scripts and JSON numbers through a binary float, PostgreSQL
    does not, so a batch that carries one is serialised.

    `body` passed validation, so it is a JSON object holding the postings and perhaps the
    source, once each. The array is cut out where its ends are certain: from the start of the
    body tokenised up to it, and at its end either the closing brace or the source member: a
    `"source":` after a comma can only be that member (inside a string every quote follows a
    backslash, and no posting holds a "source" key). Any other layout returns None.
    """
    if any(posting.exchange_rate is not None for posting in batch.postings):
        return None
    text = body.decode()
    head = _UP_TO_POSTINGS.match(text)
    if head is None:
        return None
    inner = text.rstrip()[:-1].rstrip()  # without the object's closing brace
    if inner.endswith("]"):
        return text[head.end() : len(inner)]
    tail = _SOURCE_LAST.search(text, max(head.end(), len(text) - _SOURCE_LAST_WITHIN))
    if tail is None:
        return None
    return text[head.end() : tail.start() + 1]


class _NumberText(str):
    """A JSON number as written in the body (json.loads' parse_float hook)."""


# A number token with more than two decimals or an exponent, anywhere in the body (inside a
# string too: a false alarm there costs only the exact look below). One scan in C; a batch
# of plain amounts never takes the slow path.
_SUSPECT_NUMBER = re.compile(rb"[0-9]\.[0-9]{3}|[0-9][eE]")
_AMOUNT_FIELDS = amount_fields(PostingIn)
_ALLOCATION_AMOUNT_FIELDS = amount_fields(AllocationIn)


def inexact_numbers(body: bytes) -> list[dict[str, Any]]:
    """Amounts sent as JSON numbers that are not exactly a whole number of cents.

    pydantic-core reads JSON numbers as binary floats, so 1.00999999999999999999 would be
    1.01 and 1e-400 would be 0: the body is read again, numbers as their text, when it may
    hold such a number.
    """
    if _SUSPECT_NUMBER.search(body) is None:
        return []
    try:
        document = json.loads(body, parse_float=_NumberText)
    except ValueError:  # pydantic-core took it; a stricter parser here is no reason to store it
        return [{"loc": [], "field": "body", "msg": "not plain JSON", "type": "json_invalid"}]
    return [
        {
            "loc": loc,
            "field": loc_text(tuple(loc)),
            "msg": "must have at most 2 decimal places (JSON numbers are read as written, "
            "not rounded)",
            "type": "multiple_of",
            "posting_index": loc[1],
        }
        for loc, value in _amounts(document)
        if isinstance(value, _NumberText) and not _whole_cents(value)
    ]


def _amounts(document: Any) -> Iterator[tuple[list[Any], Any]]:
    for i, posting in enumerate(document["postings"]):
        for name in _AMOUNT_FIELDS:
            yield ["postings", i, name], posting.get(name)
        for j, allocation in enumerate(posting.get("allocations") or ()):
            for name in _ALLOCATION_AMOUNT_FIELDS:
                yield ["postings", i, "allocations", j, name], allocation.get(name)


def _whole_cents(text: str) -> bool:
    try:
        amount = Decimal(text)
        return amount == amount.quantize(CENT)
    except InvalidOperation:  # more digits than any amount has
        return False


def _invalid_batch(errors: list[dict[str, Any]]) -> ServiceError:
    shown = errors[:MAX_ERRORS]
    first = "; ".join(f"{e['field']}: {e['msg']}" for e in shown[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return rejected(
        Unprocessable,
        "invalid_batch",
        f"the batch was not stored, because {first}{more}",
        errors=shown,
        error_count=len(errors),
    )


_FRIENDLIER = {
    "string_pattern_mismatch": "must not contain control characters or line separators",
    "multiple_of": "must have at most 2 decimal places",
}


def _field_error(error: Any) -> dict[str, Any]:
    loc = list(error["loc"])
    msg = _FRIENDLIER.get(error["type"], error["msg"])
    if error["type"] == "string_pattern_mismatch" and loc[-1:] == ["currency"]:
        msg = "must be an ISO 4217 code of 3 capital letters, like USD"
    if error["type"] == "currency":
        # Raised for the whole posting; it names the field at fault within it.
        loc += list(error["ctx"]["loc"])
        msg = msg.split(": ", 1)[1]
    return _error_at(loc, msg, error["type"])


def _error_at(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    field = loc_text(tuple(loc)) or "body"
    out: dict[str, Any] = {"loc": loc, "field": field, "msg": msg, "type": type_}
    if len(loc) >= 2 and loc[0] == "postings" and isinstance(loc[1], int):
        out["posting_index"] = loc[1]
    return out


_BASE_PAIRS = (
    ("foreign_net_amount", "net_amount"),
    ("foreign_tax_amount", "tax_amount"),
    ("foreign_gross_amount", "gross_amount"),
    ("foreign_outstanding", "outstanding"),
)


def _base_currency_errors(batch: PostingBatch, base_currency: str) -> list[dict[str, Any]]:
    """A posting in the base currency must say the same thing twice: Sage repeats the base
    amounts in the FOREIGN_* columns of such rows, at rate 1. Anything else is two different
    amounts for one figure, and no way to tell which one is right."""
    errors = []
    for index, posting in enumerate(batch.postings):
        if posting.currency != base_currency:
            continue
        where: list[str | int] = ["postings", index]
        why = f"{base_currency} is the base currency (LEDGERLINK_BASE_CURRENCY), so it"
        if posting.exchange_rate is not None and posting.exchange_rate != 1:
            errors.append(_error_at([*where, "exchange_rate"], f"{why} must be 1", "base_rate"))
        for foreign, base in _BASE_PAIRS:
            value, expected = getattr(posting, foreign), getattr(posting, base)
            if value is not None and value != expected:
                errors.append(
                    _error_at([*where, foreign], f"{why} must equal {base}", "base_amount")
                )
        for i, allocation in enumerate(posting.allocations):
            value = allocation.foreign_amount
            if value is not None and value != allocation.amount:
                errors.append(
                    _error_at(
                        [*where, "allocations", i, "foreign_amount"],
                        f"{why} must equal amount",
                        "base_amount",
                    )
                )
    return errors


def _duplicate_keys(body: bytes, batch: PostingBatch) -> list[dict[str, Any]]:
    """A key twice in one JSON object means what each parser decides (the last one for ours):
    a signed body must mean one thing, so it is refused.

    Fast path: every ':' of the body is either a key's (one per field present, which pydantic
    records in model_fields_set) or inside a text value. Only when the count does not add up,
    or a colon may hide as an escape, is the body parsed again to look. The text values are
    counted only when the body has more colons than keys: most batches have none in them.
    """
    if b"\\u003a" not in body and b"\\u003A" not in body:
        colons = body.count(b":")
        keys = len(batch.__pydantic_fields_set__)
        for p in batch.postings:
            keys += len(p.__pydantic_fields_set__)
            for allocation in p.allocations:
                keys += len(allocation.__pydantic_fields_set__)
        if colons == keys or colons == keys + _text_colons(batch):
            return []
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        repeated.extend(sorted({key for key in keys if keys.count(key) > 1}))
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except ValueError:  # pydantic-core took it; a stricter parser here is no reason to store it
        return [{"loc": [], "field": "body", "msg": "not plain JSON", "type": "json_invalid"}]
    return [
        {
            "loc": [key],
            "field": key,
            "msg": f"the key {key!r} appears twice in one JSON object; send each key once",
            "type": "duplicate_key",
        }
        for key in dict.fromkeys(repeated)
    ]


def _text_colons(batch: PostingBatch) -> int:
    """The colons inside the batch's text values: only these fields can hold one."""
    return (batch.source or "").count(":") + sum(
        p.account_ref.count(":")
        + p.reference.count(":")
        + p.details.count(":")
        + p.nominal_code.count(":")
        for p in batch.postings
    )


def _duplicate_tran_numbers(batch: PostingBatch) -> list[dict[str, Any]]:
    first_at: dict[int, int] = {}
    errors = []
    for index, posting in enumerate(batch.postings):
        earlier = first_at.setdefault(posting.tran_number, index)
        if earlier != index:
            errors.append(
                {
                    "loc": ["postings", index, "tran_number"],
                    "field": f"postings[{index}].tran_number",
                    "msg": f"{posting.tran_number} is already postings[{earlier}]; "
                    "send each transaction once per batch",
                    "type": "duplicate",
                    "posting_index": index,
                }
            )
    return errors
