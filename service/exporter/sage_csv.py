"""Sage 50 audit-trail CSV exports (AUDIT_HEADER, AUDIT_SPLIT, AUDIT_USAGE) read as postings.

Decisions a reader of the data needs to know:

- One posting per AUDIT_HEADER row of a customer type (SI SC SR SA SD SP). Every other known
  type is skipped and counted; an unknown type stops the export, because a silently ignored
  new kind of transaction could be money we never see.
- The nominal code of a posting is the one of its first split (lowest split TRAN_NUMBER,
  live splits first). Without AUDIT_SPLIT, the header's own NOMINAL_CODE column is used when
  the export has one.
- An AUDIT_USAGE row joins two splits. Both are resolved to their transactions through
  AUDIT_SPLIT (TRAN_NUMBER -> HEADER_NUMBER); the side whose transaction is an SI is the
  invoice, the other side is the settling posting, which carries the allocation. Sage's column
  order is not trusted for this, so a row written either way round means the same thing; when
  an allocation is exported from both sides (a row and its mirror), only the rows with the
  invoice in SPLIT_NUMBER are kept, so nothing counts twice. A row that joins no SI (a refund
  against a payment on account, a supplier allocation) touches no invoice and is not sent.
  Without AUDIT_SPLIT, split numbers are taken to be transaction numbers.
- Amounts are Sage doubles written as text: parsed with Decimal straight from the text and
  rounded half-up to pennies, signs dropped (Sage signs them by transaction type; the type
  already says which way the money goes). OUTSTANDING is kept only on SI, sign and all.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

CUSTOMER_TYPES = frozenset({"SI", "SC", "SR", "SA", "SD", "SP"})
SETTLING_TYPES = frozenset({"SC", "SR", "SA", "SD", "SP"})
# Supplier, bank, cash, credit-card and journal types: real Sage transactions, not ours.
OTHER_TYPES = frozenset(
    {"PI", "PC", "PR", "PA", "PP", "PD", "BP", "BR", "CP", "CR", "VP", "VR", "JD", "JC"}
)

HEADER_COLUMNS = (
    "TRAN_NUMBER",
    "TYPE",
    "ACCOUNT_REF",
    "INV_REF",
    "DATE",
    "DETAILS",
    "NET_AMOUNT",
    "TAX_AMOUNT",
    "GROSS_AMOUNT",
    "DELETED_FLAG",
)
SPLIT_COLUMNS = ("TRAN_NUMBER", "HEADER_NUMBER", "NOMINAL_CODE")
USAGE_COLUMNS = ("SPLIT_NUMBER", "SPLIT_CROSSREF", "AMOUNT", "DATE")
MODIFIED_COLUMN = "RECORD_MODIFY_DATE"

_CENT = Decimal("0.01")
# What the service's numeric(14,2) columns hold; a larger figure is a corrupt export.
MAX_AMOUNT = Decimal("999999999999.99")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_DATE_FORMATS = (
    "%d/%m/%Y",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
)
_TRUE_FLAGS = frozenset({"1", "-1", "Y", "YES", "T", "TRUE"})
_FALSE_FLAGS = frozenset({"", "0", "N", "NO", "F", "FALSE"})


class ExportFileError(Exception):
    """A file the exporter cannot use; `str()` is one line naming file, row and column."""

    def __init__(
        self, file: str, message: str, *, row: int | None = None, column: str | None = None
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}"


@dataclass(frozen=True)
class Allocation:
    invoice_tran_number: int
    amount: Decimal
    date: dt.date

    def to_wire(self) -> dict[str, Any]:
        return {
            "invoice_tran_number": self.invoice_tran_number,
            "amount": money_text(self.amount),
            "date": self.date.isoformat(),
        }


@dataclass(frozen=True)
class Posting:
    tran_number: int
    type: str
    account_ref: str
    reference: str
    date: dt.date
    details: str
    nominal_code: str
    net_amount: Decimal
    tax_amount: Decimal
    gross_amount: Decimal
    outstanding: Decimal | None
    deleted: bool
    allocations: tuple[Allocation, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "tran_number": self.tran_number,
            "type": self.type,
            "account_ref": self.account_ref,
            "reference": self.reference,
            "date": self.date.isoformat(),
            "details": self.details,
            "nominal_code": self.nominal_code,
            "net_amount": money_text(self.net_amount),
            "tax_amount": money_text(self.tax_amount),
            "gross_amount": money_text(self.gross_amount),
            "deleted": self.deleted,
            "allocations": [allocation.to_wire() for allocation in self.allocations],
        }
        if self.outstanding is not None:
            wire["outstanding"] = money_text(self.outstanding)
        return wire


@dataclass(frozen=True)
class SageExport:
    """Everything one set of CSV files says, ready to be sent."""

    postings: tuple[Posting, ...]
    # Latest RECORD_MODIFY_DATE among the rows that shape each posting (its header, its
    # splits, and usage rows on either side); None when the export has no such column.
    revisions: Mapping[int, dt.datetime | None]
    skipped_types: Mapping[str, int]
    unlinked_allocations: int


def money_text(value: Decimal) -> str:
    rounded = value.quantize(_CENT, rounding=ROUND_HALF_UP)
    return f"{abs(rounded) if rounded.is_zero() else rounded:f}"


def read_export(header_path: Path, split_path: Path | None, usage_path: Path) -> SageExport:
    headers = _read_headers(header_path)
    splits = _read_splits(split_path) if split_path is not None else None
    usages = _read_usages(usage_path)
    split_headers = (
        {split.split_number: split.header_number for split in splits} if splits else None
    )
    types = {number: header.type for number, header in headers.items()}
    resolved = [_resolve(usage, types, split_headers) for usage in usages]
    allocations, unlinked = _allocations(resolved)
    first_nominals = _first_nominals(splits or [])
    postings = tuple(
        _posting(header, _nominal(header, first_nominals, splits is not None), allocations)
        for number, header in sorted(headers.items())
        if header.type in CUSTOMER_TYPES
    )
    skipped = Counter(h.type for h in headers.values() if h.type not in CUSTOMER_TYPES)
    return SageExport(
        postings=postings,
        revisions=_revisions(postings, headers, splits or [], resolved),
        skipped_types=dict(sorted(skipped.items())),
        unlinked_allocations=unlinked,
    )


# --- one CSV row and its typed cells ------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    file: str
    line: int
    cells: Mapping[str, str]

    def error(self, column: str, message: str) -> ExportFileError:
        return ExportFileError(self.file, message, row=self.line, column=column)

    def has(self, column: str) -> bool:
        return column in self.cells

    def text(self, column: str, *, max_length: int, required: bool = False) -> str:
        # The service refuses control characters; in a 60-character Sage field they can only be
        # a stray line break or tab, so they become spaces instead of blocking the push.
        value = _CONTROL_CHARACTERS.sub(" ", self.cells.get(column, "")).strip()
        if required and not value:
            raise self.error(column, "empty, a value is required")
        if len(value) > max_length:
            raise self.error(column, f"'{value}' is longer than {max_length} characters")
        return value

    def integer(self, column: str) -> int:
        value = self.cells.get(column, "").strip()
        try:
            number = int(value)
        except ValueError:
            raise self.error(column, f"bad number '{value}', expected a whole number") from None
        if number <= 0:
            raise self.error(column, f"bad number '{value}', expected a number above 0")
        return number

    def money(self, column: str) -> Decimal:
        value = self.cells.get(column, "").strip()
        try:
            amount = Decimal(value)
            if amount.is_finite() and abs(amount) <= MAX_AMOUNT:
                return amount.quantize(_CENT, rounding=ROUND_HALF_UP)
        except InvalidOperation:
            pass
        raise self.error(column, f"bad number '{value}', expected an amount like 120.50")

    def optional_money(self, column: str) -> Decimal | None:
        return self.money(column) if self.cells.get(column, "").strip() else None

    def date(self, column: str) -> dt.date:
        stamp = self.stamp(column)
        if stamp is None:
            raise self.error(column, "empty, expected a date like 31/12/2024")
        return stamp.date()

    def stamp(self, column: str) -> dt.datetime | None:
        value = self.cells.get(column, "").strip()
        if not value:
            return None
        for fmt in _DATE_FORMATS:
            try:
                return dt.datetime.strptime(value, fmt)
            except ValueError:
                continue
        raise self.error(column, f"bad date '{value}', expected dd/mm/yyyy")

    def flag(self, column: str) -> bool:
        value = self.cells.get(column, "").strip().upper()
        if value in _TRUE_FLAGS:
            return True
        if value in _FALSE_FLAGS:
            return False
        raise self.error(column, f"bad flag '{value}', expected 0 or 1")


def _read_table(path: Path, required: Sequence[str]) -> Iterator[_Row]:
    name = str(path)
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    try:
        columns = [cell.strip().upper() for cell in next(reader, [])]
        if not any(columns):
            raise ExportFileError(name, "empty file, expected a header row of column names")
        for column in required:
            if column not in columns:
                raise ExportFileError(name, "missing column", row=1, column=column)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(columns):
                raise ExportFileError(
                    name,
                    f"{len(cells)} values but the header row has {len(columns)} columns",
                    row=reader.line_num,
                )
            yield _Row(name, reader.line_num, dict(zip(columns, cells, strict=True)))
    except csv.Error as exc:
        raise ExportFileError(
            name, f"not a readable CSV file ({exc})", row=reader.line_num
        ) from None


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportFileError(str(path), f"cannot read the file ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Sage on Windows writes the ANSI code page when it is not told otherwise.
        return data.decode("cp1252", errors="replace")


# --- the three tables ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    row: _Row
    tran_number: int
    type: str
    modified: dt.datetime | None


@dataclass(frozen=True)
class _Split:
    split_number: int
    header_number: int
    nominal_code: str
    deleted: bool
    modified: dt.datetime | None


@dataclass(frozen=True)
class _Usage:
    row: _Row
    split_number: int
    crossref: int
    amount: Decimal
    date: dt.date
    deleted: bool
    modified: dt.datetime | None


def _read_headers(path: Path) -> dict[int, _Header]:
    headers: dict[int, _Header] = {}
    for row in _read_table(path, HEADER_COLUMNS):
        number = row.integer("TRAN_NUMBER")
        if number in headers:
            first = headers[number].row.line
            raise row.error("TRAN_NUMBER", f"transaction {number} already on row {first}")
        kind = row.cells["TYPE"].strip().upper()
        if kind not in CUSTOMER_TYPES | OTHER_TYPES:
            raise row.error("TYPE", f"unknown transaction type '{kind}'")
        headers[number] = _Header(row, number, kind, row.stamp(MODIFIED_COLUMN))
    return headers


def _read_splits(path: Path) -> list[_Split]:
    return [
        _Split(
            split_number=row.integer("TRAN_NUMBER"),
            header_number=row.integer("HEADER_NUMBER"),
            nominal_code=row.text("NOMINAL_CODE", max_length=8),
            deleted=row.flag("DELETED_FLAG"),
            modified=row.stamp(MODIFIED_COLUMN),
        )
        for row in _read_table(path, SPLIT_COLUMNS)
    ]


def _read_usages(path: Path) -> list[_Usage]:
    return [
        _Usage(
            row=row,
            split_number=row.integer("SPLIT_NUMBER"),
            crossref=row.integer("SPLIT_CROSSREF"),
            amount=abs(row.money("AMOUNT")),
            date=row.date("DATE"),
            deleted=row.flag("DELETED_FLAG"),
            modified=row.stamp(MODIFIED_COLUMN),
        )
        for row in _read_table(path, USAGE_COLUMNS)
    ]


# --- allocations --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    """A usage row seen from the invoice: which invoice split it settles, and with what."""

    invoice_split: int
    settling_split: int
    invoice: int
    settling: int
    invoice_first: bool


@dataclass(frozen=True)
class _Resolved:
    usage: _Usage
    link: _Link | None
    # Whether a side is, or may be, a customer transaction: only those are worth reporting
    # when they cannot be attached to an invoice; supplier-only allocations are not ours.
    customer: bool


def _resolve(
    usage: _Usage, types: Mapping[int, str], split_headers: Mapping[int, int] | None
) -> _Resolved:
    def transaction(split_number: int) -> int | None:
        return split_number if split_headers is None else split_headers.get(split_number)

    first, second = transaction(usage.split_number), transaction(usage.crossref)
    first_type = types.get(first) if first is not None else None
    second_type = types.get(second) if second is not None else None
    customer = not all(kind in OTHER_TYPES for kind in (first_type, second_type))
    link = None
    if first is not None and second is not None:
        if first_type == "SI" and second_type in SETTLING_TYPES:
            link = _Link(usage.split_number, usage.crossref, first, second, invoice_first=True)
        elif second_type == "SI" and first_type in SETTLING_TYPES:
            link = _Link(usage.crossref, usage.split_number, second, first, invoice_first=False)
    return _Resolved(usage, link, customer)


def _allocations(resolved: Sequence[_Resolved]) -> tuple[dict[int, tuple[Allocation, ...]], int]:
    invoice_first = {
        (r.link.invoice_split, r.link.settling_split)
        for r in resolved
        if r.link is not None and r.link.invoice_first
    }
    found: defaultdict[int, list[Allocation]] = defaultdict(list)
    unlinked = 0
    for usage, link, customer in ((r.usage, r.link, r.customer) for r in resolved):
        if usage.deleted or usage.amount.is_zero():
            continue
        if link is None:
            unlinked += customer
            continue
        if not link.invoice_first and (link.invoice_split, link.settling_split) in invoice_first:
            continue
        found[link.settling].append(Allocation(link.invoice, usage.amount, usage.date))
    ordered = {
        settling: tuple(sorted(items, key=lambda a: (a.invoice_tran_number, a.date, a.amount)))
        for settling, items in found.items()
    }
    return ordered, unlinked


# --- postings -----------------------------------------------------------------------------


def _first_nominals(splits: Sequence[_Split]) -> dict[int, str]:
    first: dict[int, _Split] = {}
    for split in sorted(splits, key=lambda s: (s.deleted, s.split_number)):
        first.setdefault(split.header_number, split)
    return {number: split.nominal_code for number, split in first.items()}


def _nominal(header: _Header, first_nominals: Mapping[int, str], have_splits: bool) -> str:
    if have_splits and header.tran_number in first_nominals:
        return first_nominals[header.tran_number]
    return header.row.text("NOMINAL_CODE", max_length=8)


def _posting(
    header: _Header, nominal_code: str, allocations: Mapping[int, tuple[Allocation, ...]]
) -> Posting:
    row = header.row
    return Posting(
        tran_number=header.tran_number,
        type=header.type,
        account_ref=row.text("ACCOUNT_REF", max_length=32, required=True),
        reference=row.text("INV_REF", max_length=30),
        date=row.date("DATE"),
        details=row.text("DETAILS", max_length=60),
        nominal_code=nominal_code,
        net_amount=abs(row.money("NET_AMOUNT")),
        tax_amount=abs(row.money("TAX_AMOUNT")),
        gross_amount=abs(row.money("GROSS_AMOUNT")),
        outstanding=row.optional_money("OUTSTANDING") if header.type == "SI" else None,
        deleted=row.flag("DELETED_FLAG"),
        allocations=allocations.get(header.tran_number, ()),
    )


def _revisions(
    postings: Sequence[Posting],
    headers: Mapping[int, _Header],
    splits: Sequence[_Split],
    resolved: Sequence[_Resolved],
) -> dict[int, dt.datetime | None]:
    latest: dict[int, dt.datetime | None] = {
        p.tran_number: headers[p.tran_number].modified for p in postings
    }

    def touch(number: int, stamp: dt.datetime | None) -> None:
        if number in latest and stamp is not None:
            current = latest[number]
            latest[number] = stamp if current is None else max(current, stamp)

    for split in splits:
        touch(split.header_number, split.modified)
    for item in resolved:
        if item.link is not None:
            touch(item.link.invoice, item.usage.modified)
            touch(item.link.settling, item.usage.modified)
    return latest
