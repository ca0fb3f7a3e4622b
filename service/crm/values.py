"""Values read from a CRM, whichever: whether one can be stored, and amounts as people type
them. Anything a CRM answers may be anything, so nothing read from one is stored unchecked."""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from service.crm.models import CRM_ID_LENGTH, INVOICE_NUMBER_LENGTH

# An amount as a person types one: optional sign and currency symbol, digits with or without
# thousands separators, optional decimals. No exponent ("1e400" is not 1400), no words.
_AMOUNT = re.compile(r"([-+]?)[£$€]?([-+]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
_CENT = Decimal("0.01")
# The largest amount numeric(14,2) holds.
LARGEST_AMOUNT = Decimal("999999999999.99")


def parse_amount(value: Any) -> Decimal | None:
    """An amount as the CRM gives it: a JSON number, or text like "1,200.50", "£12.00", "12";
    rounded to pence. None when unreadable: anything else (an object, a list, a boolean,
    "1e400", "n/a"), or too large for an amount ledgerlink stores."""
    number: Decimal
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        number = Decimal(repr(value))
    elif isinstance(value, str):
        match = _AMOUNT.fullmatch(value.strip())
        if match is None or (match[1] and match[2]):
            return None
        sign, digits, decimals = match[1] or match[2], match[3], match[4] or ""
        number = Decimal(sign + digits.replace(",", "") + decimals)
    else:
        return None
    if abs(number) > LARGEST_AMOUNT + _CENT:
        return None
    try:
        rounded = number.quantize(_CENT)
    except InvalidOperation:
        return None
    return rounded if abs(rounded) <= LARGEST_AMOUNT else None


# Characters text read from the CRM must not hold: controls (NUL among them, which PostgreSQL
# text cannot store) and lone surrogates (which no UTF-8 can encode).
_UNSTORABLE = ("Cc", "Cs")


def text_problem(value: Any, *, limit: int) -> str | None:
    """Why a field read from the CRM cannot be stored as text of at most `limit` characters;
    None when it can (or is absent). Safe to log: the value itself is not quoted."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"is a JSON {type(value).__name__}, not text"
    text = str(value).strip()
    if len(text) > limit:
        return f"has {len(text)} characters, more than {limit}"
    bad = next((ch for ch in text if unicodedata.category(ch) in _UNSTORABLE), None)
    if bad is not None:
        return f"holds the character {bad!a}"
    return None


def storable_id(invoice_number: str, crm_id: str) -> bool:
    """Whether an invoice number and its CRM record id can be cached (read from the CRM, either
    may be anything)."""
    return (
        text_problem(invoice_number, limit=INVOICE_NUMBER_LENGTH) is None
        and text_problem(crm_id, limit=CRM_ID_LENGTH) is None
    )
