"""Rows of Sage 50's audit-trail tables (AUDIT_HEADER, AUDIT_SPLIT, AUDIT_USAGE) read as postings.

The one code path from rows to postings: the CSV reader (`csv_source`) and the ODBC reader
(`odbc_source`) both hand their rows to `build_export`. A cell may be text (CSV) or a typed
value (ODBC: int, float, Decimal, datetime, date, str, None); `Row` reads either.

The data model, and where it comes from:

- **Two numberings.** Every line (split) has its own number, AUDIT_SPLIT.TRAN_NUMBER (equal to
  its SPLIT_NUMBER). A header's TRAN_NUMBER is the number of its first line; headers are
  counted separately in AUDIT_HEADER.HEADER_NUMBER, which is what AUDIT_SPLIT.HEADER_NUMBER
  points at. The two drift apart after the first transaction with more than one line.
  Evidence: Zynk's published Sage 50 UK schema (zynksoftware/Zynk-Workflow,
  `_docs/Sage-50-UK-Connector/Schema/Sage-50-UK-AUDIT_HEADER-Columns.md` lists HEADER_NUMBER
  and ITEM_COUNT, "No of items for this header"; `...-AUDIT_SPLIT-Columns.md` lists
  TRAN_NUMBER, SPLIT_NUMBER and HEADER_NUMBER), and drummonds/pySage50 `pysage50/sage.py`,
  which joins lines to headers with `aj.HEADER_NUMBER = ah.HEADER_NUMBER`. Some public code
  joins AUDIT_USAGE straight to AUDIT_HEADER.TRAN_NUMBER (a Delphi receipts query matching
  `Audit_header.tran_number = Audit_usage.split_crossref`); that only holds for single-line
  transactions, so the weaker evidence is not followed.
- A posting is one AUDIT_HEADER row of a customer type (SI SC SR SA SD SP), keyed on the
  header's TRAN_NUMBER (the transaction number Sage shows). Every other known type is skipped
  and counted; an unknown type stops the export, because a silently ignored new kind of
  transaction could be money we never see.
- AUDIT_HEADER has no NOMINAL_CODE (Zynk's column list); the lines carry it. A posting's
  nominal code is the one of its first live line (lowest split number).
- An AUDIT_USAGE row joins two **splits** (SPLIT_NUMBER, SPLIT_CROSSREF). Each is resolved to
  its header through AUDIT_SPLIT. The side whose header is an SI is the invoice; the other is
  the settling posting, which carries the allocation. Zynk's example row has the settled item
  in SPLIT_NUMBER and the payment in SPLIT_CROSSREF, but an allocation may also be stored from
  the other side (a mirror row), so column order is not trusted: when both directions of a
  pair of splits exist, only the rows with the invoice in SPLIT_NUMBER count, so nothing counts
  twice. Rows with a zero amount (left by an un-allocation) and deleted rows count for nothing.
  A row that joins no SI (a refund against a payment on account, a supplier allocation)
  touches no invoice and is not sent.
- AUDIT_USAGE.DATE is reported unreliable on real data: it is optional, and when it is missing
  or not a plausible date the allocation takes the settling transaction's own date.
- DELETED_FLAG is 0/1 on most installs and N/Y on some; both are read (and RECORD_DELETED, when
  the export has it, deletes the row too).
- Dates come as Sage writes them (31/12/2016 00:00:00), as ISO text, as ODBC date values, or as
  an en-US PowerShell `Export-Csv` writes them (12/31/2016 12:00:00 AM): a value with AM/PM is
  month first; one without is day first unless only month first makes sense.
- Amounts are Sage doubles: parsed with Decimal from their shortest text form and rounded
  half-up to pennies, signs dropped (Sage signs them by transaction type; the type already says
  which way the money goes). OUTSTANDING is kept only on SI, sign and all.

- Currencies (Sage's Foreign Trader), per Zynk's schema pages for AUDIT_HEADER, AUDIT_SPLIT,
  AUDIT_USAGE and CURRENCY (zynksoftware/Zynk-Workflow,
  `_docs/Sage-50-UK-Connector/Schema/Sage-50-UK-{AUDIT_HEADER,AUDIT_USAGE,CURRENCY}-Columns.md`):
  only the header says which currency (CURRENCY, "Which foreign currency", a TINYINT whose
  example is 1) and at what rate (FOREIGN_RATE); CURRENCY is a number into the CURRENCY table
  (NUMBER, CODE, BASE_CURRENCY; its example row is 1, GBP, base). Beside each base amount the
  header has FOREIGN_NET_AMOUNT, FOREIGN_TAX_AMOUNT, FOREIGN_GROSS_AMOUNT and
  FOREIGN_OUTSTANDING, and AUDIT_USAGE has FOREIGN_AMOUNT ("Amount Paid (Foreign Currency)")
  beside AMOUNT ("Amount Paid (Base currency)"). A base-currency transaction sends no currency
  fields at all, so a company without foreign customers sends exactly what it sent before; so
  does an export without these columns. Without the CURRENCY table, number 1 (and 0, no
  currency chosen) is the base and any other number cannot be named, so it stops the export.
- Cleared years: Sage's Clear Audit Trail moves fully paid transactions, with everything
  allocated to them, to AUDIT_HISTORY_HEADER / _SPLIT / _USAGE (Zynk's schema pages of those
  names: the same numbering and columns, less OUTSTANDING). Their rows go through this same
  path as `history`. Where a transaction is in both, the live tables win: a live header's
  history header, lines and allocations are ignored, so nothing counts twice.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from ledgerlink_exporter.text import clean

CUSTOMER_TYPES = frozenset({"SI", "SC", "SR", "SA", "SD", "SP"})
SETTLING_TYPES = frozenset({"SC", "SR", "SA", "SD", "SP"})
# Supplier, bank, cash, credit-card and journal types: real Sage transactions, not ours.
OTHER_TYPES = frozenset(
    {"PI", "PC", "PR", "PA", "PP", "PD", "BP", "BR", "CP", "CR", "VP", "VR", "JD", "JC"}
)

HEADER_COLUMNS = (
    "HEADER_NUMBER",
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
USAGE_COLUMNS = ("SPLIT_NUMBER", "SPLIT_CROSSREF", "AMOUNT")
# Read when present; everything still works without them.
HEADER_OPTIONAL = (
    "OUTSTANDING",
    "RECORD_MODIFY_DATE",
    "RECORD_DELETED",
    "CURRENCY",
    "FOREIGN_RATE",
    "FOREIGN_NET_AMOUNT",
    "FOREIGN_TAX_AMOUNT",
    "FOREIGN_GROSS_AMOUNT",
    "FOREIGN_OUTSTANDING",
)
SPLIT_OPTIONAL = ("DELETED_FLAG", "RECORD_MODIFY_DATE", "RECORD_DELETED")
USAGE_OPTIONAL = ("DATE", "DELETED_FLAG", "RECORD_MODIFY_DATE", "RECORD_DELETED", "FOREIGN_AMOUNT")
CURRENCY_COLUMNS = ("NUMBER", "CODE")
CURRENCY_OPTIONAL = ("BASE_CURRENCY",)
MODIFIED_COLUMN = "RECORD_MODIFY_DATE"

_CENT = Decimal("0.01")
# The service stores a rate as numeric(20,10).
_RATE_PLACES = Decimal("0.0000000001")
_MAX_RATE = Decimal("9999999999")
_ISO_CODE = re.compile(r"^[A-Z]{3}$")
# What the service's numeric(14,2) columns hold; a larger figure is a corrupt export.
MAX_AMOUNT = Decimal("999999999999.99")
_SLASHED = re.compile(
    r"^(\d{1,2})/(\d{1,2})/(\d{4})"
    r"(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?\s*([AaPp][Mm])?)?$"
)
_TRUE_FLAGS = frozenset({"1", "-1", "Y", "YES", "T", "TRUE"})
_FALSE_FLAGS = frozenset({"", "0", "N", "NO", "F", "FALSE"})
# An allocation date outside these years is one of the garbage values reported on real data.
_PLAUSIBLE_YEARS = range(1980, 2100)


class ExportFileError(Exception):
    """Data the exporter cannot use; `str()` is one line naming table, row and column."""

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
    # In the settling posting's currency; None when that posting is in the base currency.
    foreign_amount: Decimal | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "invoice_tran_number": self.invoice_tran_number,
            "amount": money_text(self.amount),
            "date": self.date.isoformat(),
        }
        if self.foreign_amount is not None:
            wire["foreign_amount"] = money_text(self.foreign_amount)
        return wire


@dataclass(frozen=True)
class ForeignFigures:
    """A posting's currency and its amounts in it, beside the base amounts."""

    currency: str
    exchange_rate: Decimal | None
    net_amount: Decimal | None
    tax_amount: Decimal | None
    gross_amount: Decimal
    outstanding: Decimal | None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"currency": self.currency}
        if self.exchange_rate is not None:
            wire["exchange_rate"] = f"{self.exchange_rate.normalize():f}"
        for name in ("net_amount", "tax_amount", "gross_amount", "outstanding"):
            value = getattr(self, name)
            if value is not None:
                wire[f"foreign_{name}"] = money_text(value)
        return wire


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
    # None: the base currency, and nothing about currencies goes on the wire.
    foreign: ForeignFigures | None = None

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
        if self.foreign is not None:
            wire.update(self.foreign.to_wire())
        return wire


@dataclass(frozen=True)
class SageExport:
    """Everything one read of the three tables says, ready to be sent."""

    postings: tuple[Posting, ...]
    # Latest RECORD_MODIFY_DATE among the rows that shape each posting (its header, its
    # lines, and usage rows on either side); None when the rows have no such column.
    revisions: Mapping[int, dt.datetime | None]
    skipped_types: Mapping[str, int]
    unlinked_allocations: int
    # Postings read only from the AUDIT_HISTORY_* tables (a cleared year).
    from_history: int = 0


def money_text(value: Decimal) -> str:
    rounded = value.quantize(_CENT, rounding=ROUND_HALF_UP)
    return f"{abs(rounded) if rounded.is_zero() else rounded:f}"


# --- one row and its typed cells ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One table row: `source` names the file or table, `line` the row for error messages."""

    source: str
    line: int
    cells: Mapping[str, object]

    def error(self, column: str, message: str) -> ExportFileError:
        return ExportFileError(self.source, message, row=self.line, column=column)

    def raw(self, column: str) -> str:
        value = self.cells.get(column)
        return "" if value is None else str(value).strip()

    def text(self, column: str, *, max_length: int, required: bool = False) -> str:
        # What the service refuses becomes a space (ledgerlink_exporter.text says why).
        value = clean(self.raw(column))
        if required and not value:
            raise self.error(column, "empty, a value is required")
        if len(value) > max_length:
            raise self.error(column, f"'{value}' is longer than {max_length} characters")
        return value

    def integer(self, column: str) -> int:
        value = self.cells.get(column)
        text = self.raw(column)
        try:
            number = int(value) if isinstance(value, int | float | Decimal) else int(text)
            if isinstance(value, float | Decimal) and number != value:
                raise ValueError
        except (ValueError, OverflowError):
            raise self.error(column, f"bad number '{text}', expected a whole number") from None
        if number <= 0:
            raise self.error(column, f"bad number '{text}', expected a number above 0")
        return number

    def money(self, column: str) -> Decimal:
        value = self.cells.get(column)
        # repr() of a float is its shortest round-trip text: 100.10000000000001, as Sage's CSV
        # writes it, so both sources round the same digits.
        text = repr(value) if isinstance(value, float) else self.raw(column)
        try:
            amount = Decimal(text)
            if amount.is_finite() and abs(amount) <= MAX_AMOUNT:
                return amount.quantize(_CENT, rounding=ROUND_HALF_UP)
        except InvalidOperation:
            pass
        raise self.error(column, f"bad number '{text}', expected an amount like 120.50")

    def optional_money(self, column: str) -> Decimal | None:
        return self.money(column) if self.raw(column) else None

    def required_money(self, column: str, why: str) -> Decimal:
        if not self.raw(column):
            raise self.error(column, f"empty or missing, {why}")
        return self.money(column)

    def rate(self, column: str) -> Decimal | None:
        """An exchange rate; None when missing or 0 (Sage writes 0 where none applies)."""
        value = self.cells.get(column)
        text = repr(value) if isinstance(value, float) else self.raw(column)
        if not text:
            return None
        try:
            rate = abs(Decimal(text))
            if rate.is_finite() and rate <= _MAX_RATE:
                rate = rate.quantize(_RATE_PLACES, rounding=ROUND_HALF_UP)
                return None if rate.is_zero() else rate
        except InvalidOperation:
            pass
        raise self.error(column, f"bad exchange rate '{text}', expected a number like 1.25")

    def count(self, column: str) -> int:
        """A whole number that may be 0; empty reads as 0."""
        text = self.raw(column)
        if not text:
            return 0
        value = self.cells.get(column)
        try:
            number = int(value) if isinstance(value, int) else int(Decimal(text))
            if number < 0 or (not isinstance(value, int) and Decimal(text) != number):
                raise ValueError
        except (ValueError, InvalidOperation):
            raise self.error(column, f"bad number '{text}', expected a whole number") from None
        return number

    def date(self, column: str) -> dt.date:
        stamp = self.stamp(column)
        if stamp is None:
            raise self.error(column, "empty, expected a date like 31/12/2024")
        return stamp.date()

    def stamp(self, column: str) -> dt.datetime | None:
        value = self.cells.get(column)
        if isinstance(value, dt.datetime):
            return value.replace(tzinfo=None)
        if isinstance(value, dt.date):
            return dt.datetime.combine(value, dt.time())
        text = self.raw(column)
        if not text:
            return None
        stamp = parse_stamp(text)
        if stamp is None:
            raise self.error(column, f"bad date '{text}', expected dd/mm/yyyy")
        return stamp

    def lenient_date(self, column: str) -> dt.date | None:
        """A date that may be missing or garbage: None instead of an error."""
        try:
            stamp = self.stamp(column)
        except ExportFileError:
            return None
        return stamp.date() if stamp is not None and stamp.year in _PLAUSIBLE_YEARS else None

    def flag(self, column: str) -> bool:
        value = self.raw(column).upper()
        if value in _TRUE_FLAGS:
            return True
        if value in _FALSE_FLAGS:
            return False
        raise self.error(column, f"bad flag '{value}', expected 0 or 1 (or N or Y)")

    def deleted(self) -> bool:
        return self.flag("DELETED_FLAG") or self.flag("RECORD_DELETED")


def parse_stamp(text: str) -> dt.datetime | None:
    """Sage's day-first dates, en-US month-first ones (with AM/PM), or ISO; None if neither."""
    match = _SLASHED.match(text)
    if match is None:
        try:
            return dt.datetime.fromisoformat(text).replace(tzinfo=None)
        except ValueError:
            return None
    first, second, year, hour, minute, second_of_minute, meridiem = match.groups()
    hours = int(hour or 0)
    if meridiem:
        if not 1 <= hours <= 12:
            return None
        hours = hours % 12 + (12 if meridiem.upper() == "PM" else 0)
    orders = ((second, first),) if meridiem else ((first, second), (second, first))
    for day, month in orders:
        try:
            return dt.datetime(
                int(year), int(month), int(day), hours, int(minute or 0), int(second_of_minute or 0)
            )
        except ValueError:
            continue
    return None


def check_columns(source: str, columns: Iterable[str], required: Sequence[str]) -> None:
    present = set(columns)
    for column in required:
        if column not in present:
            raise ExportFileError(source, "missing column", row=1, column=column)


# --- the three tables ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    row: Row
    header_number: int
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
    row: Row
    split_number: int
    crossref: int
    amount: Decimal
    foreign_amount: Decimal | None
    date: dt.date | None
    deleted: bool
    modified: dt.datetime | None


def _read_headers(rows: Iterable[Row]) -> dict[int, _Header]:
    headers: dict[int, _Header] = {}
    tran_numbers: dict[int, int] = {}
    for row in rows:
        number = row.integer("HEADER_NUMBER")
        if number in headers:
            first = headers[number].row.line
            raise row.error("HEADER_NUMBER", f"header {number} already on row {first}")
        tran_number = row.integer("TRAN_NUMBER")
        if tran_number in tran_numbers:
            first = headers[tran_numbers[tran_number]].row.line
            raise row.error("TRAN_NUMBER", f"transaction {tran_number} already on row {first}")
        kind = row.raw("TYPE").upper()
        if kind not in CUSTOMER_TYPES | OTHER_TYPES:
            raise row.error("TYPE", f"unknown transaction type '{kind}'")
        headers[number] = _Header(row, number, tran_number, kind, row.stamp(MODIFIED_COLUMN))
        tran_numbers[tran_number] = number
    return headers


def _read_splits(rows: Iterable[Row]) -> dict[int, _Split]:
    splits: dict[int, _Split] = {}
    for row in rows:
        split = _Split(
            split_number=row.integer("TRAN_NUMBER"),
            header_number=row.integer("HEADER_NUMBER"),
            nominal_code=row.text("NOMINAL_CODE", max_length=8),
            deleted=row.deleted(),
            modified=row.stamp(MODIFIED_COLUMN),
        )
        splits[split.split_number] = split
    return splits


def _read_usages(rows: Iterable[Row]) -> list[_Usage]:
    return [
        _Usage(
            row=row,
            split_number=row.integer("SPLIT_NUMBER"),
            crossref=row.integer("SPLIT_CROSSREF"),
            amount=abs(row.money("AMOUNT")),
            foreign_amount=_unsigned(row.optional_money("FOREIGN_AMOUNT")),
            date=row.lenient_date("DATE"),
            deleted=row.deleted(),
            modified=row.stamp(MODIFIED_COLUMN),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class Currency:
    code: str
    base: bool


def read_currencies(rows: Iterable[Row]) -> dict[int, Currency]:
    """The CURRENCY table by NUMBER. BASE_CURRENCY marks the base; without that column, as in
    Zynk's example row, number 1 is the base."""
    currencies: dict[int, Currency] = {}
    for row in rows:
        number = row.count("NUMBER")
        code = row.raw("CODE").upper()
        base = row.flag("BASE_CURRENCY") if "BASE_CURRENCY" in row.cells else number == 1
        if not base and not _ISO_CODE.match(code):
            raise row.error("CODE", f"bad currency code '{code}', expected three letters like USD")
        currencies[number] = Currency(code, base)
    return currencies


def _currency_code(row: Row, currencies: Mapping[int, Currency] | None) -> str | None:
    """The header's currency code, or None for the base currency."""
    number = row.count("CURRENCY")
    currency = (currencies or {}).get(number)
    if currency is not None:
        return None if currency.base else currency.code
    if number == 0 or (number == 1 and not currencies):
        return None
    if currencies:
        raise row.error("CURRENCY", f"currency {number} is not in the CURRENCY table")
    raise row.error(
        "CURRENCY",
        f"currency {number} needs the CURRENCY table to name it: "
        "export it as CURRENCY.csv beside AUDIT_HEADER.csv",
    )


def _unsigned(amount: Decimal | None) -> Decimal | None:
    return None if amount is None else abs(amount)


# --- allocations --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    """A usage row seen from the invoice: which invoice split it settles, and with what."""

    invoice_split: int
    settling_split: int
    invoice: _Header
    settling: _Header
    invoice_first: bool


@dataclass(frozen=True)
class _Resolved:
    usage: _Usage
    link: _Link | None
    # Whether a side is, or may be, a customer transaction: only those are worth reporting
    # when they cannot be attached to an invoice; supplier-only allocations are not ours.
    customer: bool
    # The headers each side resolved to, for the revisions of both.
    headers: tuple[int, ...]


def _resolve(
    usage: _Usage, splits: Mapping[int, _Split], headers: Mapping[int, _Header]
) -> _Resolved:
    def header(split_number: int) -> _Header | None:
        split = splits.get(split_number)
        return headers.get(split.header_number) if split is not None else None

    first, second = header(usage.split_number), header(usage.crossref)
    first_type = first.type if first is not None else None
    second_type = second.type if second is not None else None
    customer = not all(kind in OTHER_TYPES for kind in (first_type, second_type))
    link = None
    if first is not None and second is not None:
        if first_type == "SI" and second_type in SETTLING_TYPES:
            link = _Link(usage.split_number, usage.crossref, first, second, invoice_first=True)
        elif second_type == "SI" and first_type in SETTLING_TYPES:
            link = _Link(usage.crossref, usage.split_number, second, first, invoice_first=False)
    touched = tuple(h.header_number for h in (first, second) if h is not None)
    return _Resolved(usage, link, customer, touched)


def _allocations(
    resolved: Sequence[_Resolved], currencies: Mapping[int, str | None]
) -> tuple[dict[int, tuple[Allocation, ...]], int]:
    """Allocations by settling header number, and how many rows joined no invoice.
    `currencies` is each customer header's currency code (None: the base currency)."""
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
        on = usage.date or link.settling.row.date("DATE")
        foreign = _foreign_amount(usage, currencies.get(link.settling.header_number))
        found[link.settling.header_number].append(
            Allocation(link.invoice.tran_number, usage.amount, on, foreign)
        )
    ordered = {
        settling: tuple(sorted(items, key=lambda a: (a.invoice_tran_number, a.date, a.amount)))
        for settling, items in found.items()
    }
    return ordered, unlinked


def _foreign_amount(usage: _Usage, currency: str | None) -> Decimal | None:
    if currency is None:
        return None
    if usage.foreign_amount is None:
        raise usage.row.error(
            "FOREIGN_AMOUNT", f"empty or missing, needed for an allocation in {currency}"
        )
    return usage.foreign_amount


# --- postings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    """Rows of the three audit-trail tables (live, or their AUDIT_HISTORY_* copies)."""

    header: Iterable[Row]
    split: Iterable[Row]
    usage: Iterable[Row]


def build_export(
    header_rows: Iterable[Row],
    split_rows: Iterable[Row],
    usage_rows: Iterable[Row],
    *,
    only_headers: frozenset[int] | None = None,
    history: Tables | None = None,
    currency_rows: Iterable[Row] | None = None,
) -> SageExport:
    """Postings for every customer header (or only those in `only_headers`: a partial read
    passes the headers whose lines and usage rows it read completely; the other headers it
    holds only resolve the far side of an allocation). `history` adds the cleared
    transactions; `currency_rows` is the CURRENCY table, when there is one."""
    headers = _read_headers(header_rows)
    splits = _read_splits(split_rows)
    usages = _read_usages(usage_rows)
    cleared: frozenset[int] = frozenset()
    if history is not None:
        cleared = _add_history(history, headers, splits, usages)
    resolved = [_resolve(usage, splits, headers) for usage in usages]
    currencies = read_currencies(currency_rows) if currency_rows is not None else None
    codes = {
        number: _currency_code(header.row, currencies)
        for number, header in headers.items()
        if header.type in CUSTOMER_TYPES
    }
    allocations, unlinked = _allocations(resolved, codes)
    nominals = _first_nominals(splits.values())
    chosen = [
        header
        for number, header in sorted(headers.items(), key=lambda item: item[1].tran_number)
        if only_headers is None or number in only_headers
    ]
    postings = tuple(
        _posting(header, nominals.get(header.header_number, ""), allocations, codes)
        for header in chosen
        if header.type in CUSTOMER_TYPES
    )
    skipped = Counter(h.type for h in chosen if h.type not in CUSTOMER_TYPES)
    return SageExport(
        postings=postings,
        revisions=_revisions(chosen, headers, splits.values(), resolved),
        skipped_types=dict(sorted(skipped.items())),
        unlinked_allocations=unlinked,
        from_history=sum(
            1 for h in chosen if h.type in CUSTOMER_TYPES and h.header_number in cleared
        ),
    )


def _add_history(
    history: Tables,
    headers: dict[int, _Header],
    splits: dict[int, _Split],
    usages: list[_Usage],
) -> frozenset[int]:
    """Adds the cleared transactions the live tables do not hold; returns their header
    numbers. A live transaction wins whole: its history header, lines and usage rows are
    ignored (a header is the same transaction when its HEADER_NUMBER or TRAN_NUMBER is)."""
    live_trans = {header.tran_number for header in headers.values()}
    added = {
        number: header
        for number, header in _read_headers(history.header).items()
        if number not in headers and header.tran_number not in live_trans
    }
    headers.update(added)
    old_splits = {
        number: split
        for number, split in _read_splits(history.split).items()
        if number not in splits and split.header_number in added
    }
    splits.update(old_splits)
    usages.extend(
        usage
        for usage in _read_usages(history.usage)
        if usage.split_number in old_splits or usage.crossref in old_splits
        if not _touches_live(usage, splits, old_splits)
    )
    return frozenset(added)


def _touches_live(usage: _Usage, splits: Mapping[int, _Split], old: Mapping[int, _Split]) -> bool:
    return any(
        number in splits and number not in old for number in (usage.split_number, usage.crossref)
    )


def _first_nominals(splits: Iterable[_Split]) -> dict[int, str]:
    first: dict[int, _Split] = {}
    for split in sorted(splits, key=lambda s: (s.deleted, s.split_number)):
        first.setdefault(split.header_number, split)
    return {number: split.nominal_code for number, split in first.items()}


def _posting(
    header: _Header,
    nominal_code: str,
    allocations: Mapping[int, tuple[Allocation, ...]],
    currencies: Mapping[int, str | None],
) -> Posting:
    row = header.row
    outstanding = row.optional_money("OUTSTANDING") if header.type == "SI" else None
    currency = currencies.get(header.header_number)
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
        outstanding=outstanding,
        deleted=row.deleted(),
        allocations=allocations.get(header.header_number, ()),
        foreign=_foreign(row, currency, with_outstanding=outstanding is not None)
        if currency is not None
        else None,
    )


def _foreign(row: Row, currency: str, *, with_outstanding: bool) -> ForeignFigures:
    """The header's FOREIGN_* figures, unsigned like the base ones; Sage's outstanding keeps
    its sign, and the service needs it in both currencies or neither."""
    why = f"needed for a transaction in {currency}"
    return ForeignFigures(
        currency=currency,
        exchange_rate=row.rate("FOREIGN_RATE"),
        net_amount=_unsigned(row.optional_money("FOREIGN_NET_AMOUNT")),
        tax_amount=_unsigned(row.optional_money("FOREIGN_TAX_AMOUNT")),
        gross_amount=abs(row.required_money("FOREIGN_GROSS_AMOUNT", why)),
        outstanding=row.required_money("FOREIGN_OUTSTANDING", why) if with_outstanding else None,
    )


def _revisions(
    chosen: Sequence[_Header],
    headers: Mapping[int, _Header],
    splits: Iterable[_Split],
    resolved: Sequence[_Resolved],
) -> dict[int, dt.datetime | None]:
    latest: dict[int, dt.datetime | None] = {
        h.header_number: h.modified for h in chosen if h.type in CUSTOMER_TYPES
    }

    def touch(number: int, stamp: dt.datetime | None) -> None:
        if number in latest and stamp is not None:
            current = latest[number]
            latest[number] = stamp if current is None else max(current, stamp)

    for split in splits:
        touch(split.header_number, split.modified)
    for item in resolved:
        for number in item.headers:
            touch(number, item.usage.modified)
    return {headers[number].tran_number: stamp for number, stamp in latest.items()}
