"""What the console's pages read from their query strings and forms: FastAPI query and form
models (`Annotated[Model, Query()]`, `Annotated[Model, Form()]`), checked by the API's own
request models.

A browser sends every field of a GET form, empty ones as "": those mean "not given" (FastAPI
reads an empty form field so already; the query models drop them). A page's query string is
the page's own: what it does not read (a tracking parameter a mail client added) is ignored,
and a page size or position it cannot use falls back to the first page, as a link would.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from service.errors import Unprocessable
from service.ingest.schemas import SageDate
from service.invoices.schemas import (
    AccountRef,
    BulkStatusRequest,
    InvoiceFilter,
    InvoiceListQuery,
)

M = TypeVar("M", bound=BaseModel)

PAGE_SIZES = (25, 50, 100, 200, 500)
DEFAULT_PAGE_SIZE = 50
FILTER_FIELDS = set(InvoiceFilter.model_fields)
# An outbox id with more digits than a bigint holds is no position in it.
MAX_ID_DIGITS = 18


def _blank(value: object) -> bool:
    return isinstance(value, str) and value.strip() == ""


class PageQuery(BaseModel):
    """A query model whose blank values mean "not given"."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given: dict[str, Any] = {}
        for name, value in data.items():
            if isinstance(value, list):
                value = [item for item in value if not _blank(item)] or None
            if value is not None and not _blank(value):
                given[name] = value
        return given


def _digits(value: object) -> int | None:
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


class Paging(PageQuery):
    """A list's page: its size (one of PAGE_SIZES) and where it starts (an API cursor)."""

    limit: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None

    @field_validator("limit", mode="before")
    @classmethod
    def _page_size(cls, value: object) -> int:
        size = _digits(value)
        return size if size in PAGE_SIZES else DEFAULT_PAGE_SIZE


class InvoiceQuery(PageQuery, InvoiceListQuery):
    """The invoice list's filter, as GET /v1/invoices reads it."""


class BadDebtQuery(PageQuery):
    """The bad-debt page's filters (those of GET /v1/reports/bad-debts) and its position."""

    as_of: SageDate | None = None
    account_ref: AccountRef | None = None
    qualifying: bool | None = None
    cursor: str | None = None

    def filters(self) -> dict[str, Any]:
        return self.model_dump(exclude={"cursor"})


class OutboxQuery(PageQuery):
    """The outbox page: dead letters or pending messages, from a message id on."""

    state: Literal["dead", "pending"] = "dead"
    after: int = 0
    # How many messages the last retry sent again, to say so.
    retried: str | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _dead_unless_pending(cls, value: object) -> str:
        return "pending" if value == "pending" else "dead"

    @field_validator("after", mode="before")
    @classmethod
    def _message_id(cls, value: object) -> int:
        after = _digits(value)
        return after if after is not None and len(str(value)) <= MAX_ID_DIGITS else 0


class JobQuery(PageQuery):
    """A job's results: those with one outcome, from a cursor on."""

    outcome: str | None = None
    results_cursor: str | None = None


class UpdateForm(InvoiceListQuery):
    """The Global Update's form: the filter's fields, and the change. The change is read by
    the API's BulkStatusRequest, whose errors name `form.<field>`."""

    # The filter's own `status` field is the current status: the new one is `to_status`.
    to_status: str | None = None
    current_status_in: list[str] | None = None
    only_settled: str | None = None

    def dry_run(self) -> BulkStatusRequest:
        """The Global Update this form asks for, as a dry run (a job that changes nothing)."""
        data = {
            "status": self.to_status,
            "current_status_in": self.current_status_in,
            "only_settled": self.only_settled or False,
            "filter": self.model_dump(include=FILTER_FIELDS, exclude_none=True),
            "dry_run": True,
        }
        return validated(BulkStatusRequest, data, loc="form")


class ApplyForm(BaseModel):
    """Applying a previewed Global Update: the reason, and the key that makes a resent form
    apply it once."""

    reason: str | None = None
    idempotency_key: str | None = None


def validated(model: type[M], data: dict[str, Any], *, loc: str) -> M:
    """`data` read by `model`, its errors as the 422 the API answers, located under `loc`."""
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


def filter_query(f: InvoiceFilter, **extra: str | int | None) -> str:
    """The filter as a query string (what the list's links and the CSV link carry)."""
    pairs: list[tuple[str, str]] = []
    for name, value in f.model_dump(exclude_none=True).items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, query_text(item)))
    pairs.extend((k, str(v)) for k, v in extra.items() if v is not None)
    return urlencode(pairs)


def query_text(value: object) -> str:
    """A filter's value as a query string carries it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)
