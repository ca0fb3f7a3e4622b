"""Reading the console's query strings and forms into the API's own request models.

A browser sends every field of a form, empty ones as "": those mean "not given". Whatever
fails validation becomes the same 422 the API answers, naming the field."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode

from pydantic import BaseModel, ValidationError

from service.errors import Unprocessable
from service.invoices.schemas import InvoiceFilter

M = TypeVar("M", bound=BaseModel)
Fields = dict[str, list[str]]

LIST_FIELDS = frozenset({"status", "derived_state", "current_status_in"})


MAX_FIELDS = 500


def parse(raw: str) -> Fields:
    try:
        return parse_qs(raw, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise Unprocessable(f"more than {MAX_FIELDS} fields in one request") from None


def values(fields: Fields, model: type[BaseModel]) -> dict[str, Any]:
    """The fields `model` knows, without empty ones; lists where the model takes lists."""
    out: dict[str, Any] = {}
    for name in model.model_fields:
        given = [v for v in fields.get(name, []) if v.strip() != ""]
        if not given:
            continue
        out[name] = given if name in LIST_FIELDS else given[-1]
    return out


def validated(model: type[M], data: dict[str, Any], *, loc: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {
                "loc": [loc, *(str(p) for p in err["loc"])],
                "field": ".".join([loc, *(str(p) for p in err["loc"])]),
                "msg": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:3])
        raise Unprocessable(detail, errors=errors) from None


def invoice_filter(fields: Fields) -> InvoiceFilter:
    return validated(InvoiceFilter, values(fields, InvoiceFilter), loc="query")


def filter_query(f: InvoiceFilter, **extra: str | int | None) -> str:
    """The filter as a query string (what the list's links and the CSV link carry)."""
    pairs: list[tuple[str, str]] = []
    for name, value in f.model_dump(exclude_none=True).items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, _text(item)))
    pairs.extend((k, str(v)) for k, v in extra.items() if v is not None)
    return urlencode(pairs)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def one(fields: Fields, name: str) -> str | None:
    given = [v for v in fields.get(name, []) if v.strip() != ""]
    return given[-1] if given else None
