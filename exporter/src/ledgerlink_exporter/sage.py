"""Rows of Sage 50's audit-trail tables (AUDIT_HEADER, AUDIT_SPLIT, AUDIT_USAGE) read as postings.

The one code path from rows to postings: the CSV reader (`csv_source`) and the ODBC reader
(`odbc_source`) both hand their rows to `build_export`. A cell may be text (CSV) or a typed
value (ODBC: int, float, Decimal, datetime, date, str, None); `Row` reads either. The rows
stream by: each is checked and reduced as it is read, and what the postings need from it is
kept in `ledgerlink_exporter.store`, never the table itself (a big company's tables do not
fit in a 32-bit Python).

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
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from ledgerlink_exporter.model import Allocation as Allocation
from ledgerlink_exporter.model import ForeignFigures as ForeignFigures
from ledgerlink_exporter.model import Posting as Posting
from ledgerlink_exporter.model import money_text as money_text
from ledgerlink_exporter.store import RESOLVE, Store, pack, pence, stamp_number
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
class SageExport:
    """Everything one read of the three tables says, ready to be sent."""

    # In TRAN_NUMBER order; as read, made a chunk at a time from where the read is kept
    # (ledgerlink_exporter.store), so iterate it rather than hold it.
    postings: Sequence[Posting]
    # Latest RECORD_MODIFY_DATE among the rows that shape each posting (its header, its
    # lines, and usage rows on either side); None when the rows have no such column.
    revisions: Mapping[int, dt.datetime | None]
    skipped_types: Mapping[str, int]
    unlinked_allocations: int
    # Postings read only from the AUDIT_HISTORY_* tables (a cleared year).
    from_history: int = 0


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


# --- the three tables, read as they stream by ----------------------------------------------

_ADD_HEADER = """
INSERT INTO headers (header_number, tran_number, type, line, history, modified, currency,
                     settle_date, posting)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_LIVE_HEADER = "SELECT 1 FROM headers WHERE header_number = ? OR tran_number = ?"
_ADD_HISTORY_NUMBER = (
    "INSERT INTO history_numbers (header_number, tran_number, line) VALUES (?, ?, ?)"
)
_ADD_SPLIT = """
INSERT OR REPLACE INTO splits (split_number, header_number, nominal, deleted, modified, live)
VALUES (?, ?, ?, ?, ?, 1)
"""
_ADD_HISTORY_SPLIT = """
INSERT OR REPLACE INTO history_splits (split_number, header_number, nominal, deleted, modified)
VALUES (?, ?, ?, ?, ?)
"""
_USAGE_VALUES = """
(split_number, crossref, amount, foreign_amount, date, deleted, modified, history, line)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_ADD_PAIR = "INSERT INTO pairs (invoice_split, settling_split) VALUES (?, ?)"
_ADD_TOUCH = "INSERT INTO touches (header_number, modified) VALUES (?, ?)"
_ADD_ALLOCATION = """
INSERT INTO allocs (seq, settling_header, invoice_split, settling_split, invoice_first,
                    invoice_tran, amount, foreign_amount, date, history, line)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@dataclass(frozen=True)
class Tables:
    """Rows of the three audit-trail tables (live, or their AUDIT_HISTORY_* copies)."""

    header: Iterable[Row]
    split: Iterable[Row]
    usage: Iterable[Row]


class _Reading:
    """One read of the tables on its way into the store: each row checked and reduced as it
    streams by, so no table is ever held whole (ledgerlink_exporter.store says how)."""

    def __init__(
        self, only_headers: frozenset[int] | None, currencies: Mapping[int, Currency] | None
    ) -> None:
        self.store = Store()
        self.only_headers = only_headers
        self.currencies = currencies
        self.skipped: Counter[str] = Counter()
        self.from_history = 0
        # A settling header's DATE is the date of an allocation without one; when that DATE
        # cannot be read, the error waits here until such an allocation needs it.
        self.date_errors: dict[int, ExportFileError] = {}
        self.usage_sources = ["", ""]

    def headers(self, rows: Iterable[Row], *, history: bool) -> None:
        store = self.store
        for row in rows:
            number = row.integer("HEADER_NUMBER")
            tran_number = row.integer("TRAN_NUMBER")
            kind = row.raw("TYPE").upper()
            if kind not in CUSTOMER_TYPES | OTHER_TYPES:
                raise row.error("TYPE", f"unknown transaction type '{kind}'")
            modified = row.stamp(MODIFIED_COLUMN)
            if history:
                self._claim(row, "history_numbers", _ADD_HISTORY_NUMBER, number, tran_number)
                # A transaction in the live tables too (an export taken while Sage was
                # clearing): the live one wins, header, lines and allocations.
                if store.one(_LIVE_HEADER, number, tran_number):
                    continue
            chosen = self.only_headers is None or number in self.only_headers
            currency = settle_date = posting = None
            if kind in CUSTOMER_TYPES:
                currency = _currency_code(row, self.currencies)
                if kind in SETTLING_TYPES:
                    settle_date = self._settle_date(row, number)
                if chosen:
                    posting = pack(_posting(row, kind, tran_number, currency))
                    self.from_history += history
            elif chosen:
                self.skipped[kind] += 1
            values = (
                *(number, tran_number, kind, row.line, history, stamp_number(modified)),
                *(currency, settle_date, posting),
            )
            self._claim(row, "headers", _ADD_HEADER, number, tran_number, values)

    def _claim(
        self,
        row: Row,
        table: str,
        statement: str,
        number: int,
        tran_number: int,
        values: tuple[Any, ...] | None = None,
    ) -> None:
        """Adds a header to `table`, refusing a header or transaction number that table
        already holds from an earlier row."""
        try:
            self.store.db.execute(statement, values or (number, tran_number, row.line))
        except sqlite3.IntegrityError:
            pass
        else:
            return
        first = self.store.one(f"SELECT line FROM {table} WHERE header_number = ?", number)
        if first is not None:
            raise row.error("HEADER_NUMBER", f"header {number} already on row {first[0]}")
        first = self.store.one(f"SELECT line FROM {table} WHERE tran_number = ?", tran_number)
        raise row.error(
            "TRAN_NUMBER", f"transaction {tran_number} already on row {first[0] if first else '?'}"
        )

    def _settle_date(self, row: Row, number: int) -> int | None:
        try:
            return row.date("DATE").toordinal()
        except ExportFileError as exc:
            self.date_errors[number] = exc
            return None

    def splits(self, rows: Iterable[Row], *, history: bool) -> None:
        statement = _ADD_HISTORY_SPLIT if history else _ADD_SPLIT
        for row in rows:
            self.store.add(
                statement,
                (
                    row.integer("TRAN_NUMBER"),
                    row.integer("HEADER_NUMBER"),
                    row.text("NOMINAL_CODE", max_length=8),
                    row.deleted(),
                    stamp_number(row.stamp(MODIFIED_COLUMN)),
                ),
            )

    def usages(self, rows: Iterable[Row], *, history: bool) -> None:
        statement = ("INSERT INTO history_usages " if history else "INSERT INTO usages ") + (
            _USAGE_VALUES
        )
        for row in rows:
            self.usage_sources[history] = row.source
            foreign = _unsigned(row.optional_money("FOREIGN_AMOUNT"))
            on = row.lenient_date("DATE")
            self.store.add(
                statement,
                (
                    row.integer("SPLIT_NUMBER"),
                    row.integer("SPLIT_CROSSREF"),
                    pence(abs(row.money("AMOUNT"))),
                    None if foreign is None else pence(foreign),
                    None if on is None else on.toordinal(),
                    row.deleted(),
                    stamp_number(row.stamp(MODIFIED_COLUMN)),
                    history,
                    row.line,
                ),
            )

    def allocations(self) -> int:
        """Resolves every usage row to the headers at its ends and keeps the allocations
        that count; returns how many customer rows joined no invoice."""
        store = self.store
        unlinked = 0
        for (
            split_number,
            crossref,
            amount,
            foreign,
            on,
            deleted,
            modified,
            history,
            line,
            first,
            first_type,
            first_tran,
            first_posting,
            second,
            second_type,
            second_tran,
            second_posting,
            seq,
        ) in store.rows(RESOLVE):
            if modified is not None:
                for number, posting in ((first, first_posting), (second, second_posting)):
                    if posting:
                        store.add(_ADD_TOUCH, (number, modified))
            # Whether a side is, or may be, a customer transaction: only those are worth
            # reporting when they cannot be attached to an invoice.
            customer = not (first_type in OTHER_TYPES and second_type in OTHER_TYPES)
            link = None
            if first is not None and second is not None:
                if first_type == "SI" and second_type in SETTLING_TYPES:
                    link = (split_number, crossref, first_tran, second, True)
                    store.add(_ADD_PAIR, (split_number, crossref))
                elif second_type == "SI" and first_type in SETTLING_TYPES:
                    link = (crossref, split_number, second_tran, first, False)
            if deleted or amount == 0:
                continue
            if link is None:
                unlinked += customer
                continue
            invoice_split, settling_split, invoice_tran, settling, invoice_first = link
            store.add(
                _ADD_ALLOCATION,
                (
                    seq,
                    settling,
                    invoice_split,
                    settling_split,
                    invoice_first,
                    invoice_tran,
                    amount,
                    foreign,
                    on,
                    history,
                    line,
                ),
            )
        # Sage may store an allocation from both sides: when the pair has a row with the
        # invoice in SPLIT_NUMBER, the mirror row counts for nothing.
        store.drop_mirrors()
        unsendable = store.unsendable()
        if unsendable is not None:
            settling, no_date, currency, history, line = unsendable
            if no_date:
                raise self.date_errors[settling]
            raise ExportFileError(
                self.usage_sources[history],
                f"empty or missing, needed for an allocation in {currency}",
                row=line,
                column="FOREIGN_AMOUNT",
            )
        return unlinked


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
    transactions; `currency_rows` is the CURRENCY table, when there is one.

    Each table is read once, as a stream, in this order: CURRENCY, the live tables, then the
    cleared years' (whose transactions count only where the live tables do not have them).
    Nothing fails once this returns: every row was checked on the way in."""
    currencies = read_currencies(currency_rows) if currency_rows is not None else None
    reading = _Reading(only_headers, currencies)
    reading.headers(header_rows, history=False)
    reading.splits(split_rows, history=False)
    reading.usages(usage_rows, history=False)
    if history is not None:
        reading.headers(history.header, history=True)
        reading.splits(history.split, history=True)
        reading.usages(history.usage, history=True)
        reading.store.add_history()
    unlinked = reading.allocations()
    postings, revisions = reading.store.finish()
    return SageExport(
        postings=postings,
        revisions=revisions,
        skipped_types=dict(sorted(reading.skipped.items())),
        unlinked_allocations=unlinked,
        from_history=reading.from_history,
    )


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


def _posting(row: Row, kind: str, tran_number: int, currency: str | None) -> Posting:
    """The header's posting, without its nominal code and allocations (the lines and usage
    rows come later; `ledgerlink_exporter.store` adds them)."""
    outstanding = row.optional_money("OUTSTANDING") if kind == "SI" else None
    return Posting(
        tran_number=tran_number,
        type=kind,
        account_ref=row.text("ACCOUNT_REF", max_length=32, required=True),
        reference=row.text("INV_REF", max_length=30),
        date=row.date("DATE"),
        details=row.text("DETAILS", max_length=60),
        nominal_code="",
        net_amount=abs(row.money("NET_AMOUNT")),
        tax_amount=abs(row.money("TAX_AMOUNT")),
        gross_amount=abs(row.money("GROSS_AMOUNT")),
        outstanding=outstanding,
        deleted=row.deleted(),
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
