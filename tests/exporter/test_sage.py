"""Sage's three audit-trail tables read into postings, on Sage's real numbering: lines and
headers numbered apart, usage rows between lines, mirrored and zeroed rows, both deleted-flag
forms, en-GB and en-US dates, and CSV files as PowerShell writes them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.sage import ExportFileError, Posting, SageExport, money_text, parse_stamp

from tests.exporter.sage_files import (
    CURRENCY,
    FILES,
    HEADER,
    HISTORY_FILES,
    SPLIT,
    USAGE,
    Rows,
    altered,
    read_rows,
)

# Header TRAN_NUMBERs of the customer transactions: each is its first line's number, so they
# skip the numbers of second lines (2, 8, 27) and never equal HEADER_NUMBER after the first.
CUSTOMER_TRANS = [
    *(1, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 21, 22, 23, 24, 25, 26, 28, 29),
    *(30, 31, 32, 33, 34, 35, 36),
]
# The cleared year's, in AUDIT_HISTORY_* only (40 is the second line of 39).
HISTORY_TRANS = [39, 41, 42, 43]
# What a first load sends: both.
PUSHED_TRANS = sorted(CUSTOMER_TRANS + HISTORY_TRANS)


@pytest.fixture(scope="module")
def export() -> SageExport:
    return read_export(*FILES)


def by_tran(export: SageExport) -> dict[int, Posting]:
    return {posting.tran_number: posting for posting in export.postings}


def allocations(posting: Posting) -> list[tuple[int, str, str]]:
    return [
        (a.invoice_tran_number, money_text(a.amount), a.date.isoformat())
        for a in posting.allocations
    ]


def test_the_fixture_is_shaped_like_powershell_export_csv() -> None:
    for path in FILES:
        data = path.read_bytes()
        assert data.startswith(b'\xef\xbb\xbf"'), "BOM, then a quoted first column name"
        assert b"\r\n" in data
        assert b"\n" not in data.replace(b"\r\n", b"")
    header_numbers = [int(row["HEADER_NUMBER"]) for row in read_rows(HEADER)]
    tran_numbers = [int(row["TRAN_NUMBER"]) for row in read_rows(HEADER)]
    assert header_numbers[0] == tran_numbers[0] == 1
    assert all(h < t for h, t in zip(header_numbers[1:], tran_numbers[1:], strict=True)), (
        "the numberings drift apart from the first multi-line invoice on"
    )


def test_postings_are_keyed_on_the_header_tran_number(export: SageExport) -> None:
    assert [p.tran_number for p in export.postings] == CUSTOMER_TRANS
    assert export.skipped_types == {"BR": 1, "JD": 1, "PI": 2, "PP": 2}


def test_maps_a_multi_line_invoice(export: SageExport) -> None:
    assert by_tran(export)[1].to_wire() == {
        "tran_number": 1,
        "type": "SI",
        "account_ref": "ACME01",
        "reference": "10001",
        "date": "2025-02-03",
        "details": "Goods, services",
        "nominal_code": "4000",
        "net_amount": "250.00",
        "tax_amount": "50.00",
        "gross_amount": "300.00",
        "outstanding": "0.00",
        "deleted": False,
        "allocations": [],
    }


@pytest.mark.parametrize(
    ("tran", "kind", "reference", "nominal", "gross"),
    [
        (4, "SR", "BACS", "1200", "300.00"),
        (5, "SD", "DISC", "4009", "0.30"),
        (9, "SC", "10003", "8100", "600.00"),
        (11, "SA", "On account", "1200", "240.37"),
        (15, "SC", "CN10005", "4000", "60.00"),
        (16, "SP", "REFUND", "1200", "60.00"),
        (29, "SC", "BADDBT", "8105", "120.00"),
    ],
)
def test_nominal_codes_come_from_the_lines(
    export: SageExport, tran: int, kind: str, reference: str, nominal: str, gross: str
) -> None:
    wire = by_tran(export)[tran].to_wire()
    assert (wire["type"], wire["reference"], wire["nominal_code"], wire["gross_amount"]) == (
        kind,
        reference,
        nominal,
        gross,
    )


def test_a_usage_row_on_an_invoices_second_line_settles_that_invoice(export: SageExport) -> None:
    # Split 8 is the second line of invoice 10003 (header 6, TRAN_NUMBER 7); header 8 is
    # CRAN03's invoice: reading the split number as a header number pays the wrong customer.
    assert allocations(by_tran(export)[9]) == [
        (7, "300.00", "2025-03-18"),
        (7, "300.00", "2025-03-18"),
    ]


def test_a_multi_line_receipt_settles_an_invoice_per_line(export: SageExport) -> None:
    assert allocations(by_tran(export)[26]) == [
        (24, "200.00", "2025-03-14"),
        (25, "150.00", "2025-03-14"),
    ]


def test_an_allocation_written_from_both_sides_counts_once(export: SageExport) -> None:
    assert allocations(by_tran(export)[4]) == [
        (1, "120.00", "2025-03-03"),
        (1, "180.00", "2025-03-03"),
    ]
    assert allocations(by_tran(export)[14]) == [(13, "120.00", "2025-03-01")]


def test_the_invoice_side_is_found_whichever_column_it_is_in(export: SageExport) -> None:
    # The refund's usage row has the refund in SPLIT_NUMBER and the invoice in SPLIT_CROSSREF.
    assert allocations(by_tran(export)[16]) == [(13, "60.00", "2025-03-20")]


def test_deleted_and_zeroed_usage_rows_are_not_allocations(export: SageExport) -> None:
    assert by_tran(export)[23].allocations == ()


def test_a_missing_or_garbage_usage_date_falls_back_to_the_settling_date(
    export: SageExport,
) -> None:
    assert allocations(by_tran(export)[15]) == [(13, "60.00", "2025-03-10")]  # DATE empty
    assert allocations(by_tran(export)[29]) == [(28, "120.00", "2025-03-19")]  # 30/12/1899


def test_the_small_overpayment_write_off_si_travels_as_an_si(export: SageExport) -> None:
    write_off = by_tran(export)[12]
    assert (write_off.type, write_off.details, write_off.nominal_code) == (
        "SI",
        "Bad Debt Write Off",
        "8100",
    )
    assert allocations(by_tran(export)[11]) == [
        (10, "240.00", "2025-03-06"),
        (12, "0.37", "2025-03-06"),
    ]


def test_rounds_sage_doubles_from_their_text_and_drops_signs(export: SageExport) -> None:
    postings = by_tran(export)
    assert (postings[3].gross_amount, postings[3].outstanding) == (
        Decimal("120.12"),
        Decimal("19.82"),
    )
    assert postings[21].gross_amount == Decimal("2.67")  # 2.665, half up
    assert postings[4].gross_amount == Decimal("300.00")  # written -300


def test_counts_customer_allocations_it_cannot_attach(export: SageExport) -> None:
    assert export.unlinked_allocations == 1  # split 999 is on no line


def test_revision_is_the_latest_change_to_any_row_of_the_posting(export: SageExport) -> None:
    # Invoice 10005's header changed on 20/03; the refund's usage row touches it that day too.
    assert export.revisions[13] == dt.datetime(2025, 3, 20, 16, 45)
    assert export.revisions[14] == dt.datetime(2025, 3, 1, 8, 5)


def test_the_deleted_flag_in_both_forms(tmp_path: Path) -> None:
    def yes_no(table: str, rows: Rows) -> None:
        for row in rows:
            row["DELETED_FLAG"] = {"0": "N", "1": "Y"}[row["DELETED_FLAG"]]

    postings = by_tran(read_export(*altered(tmp_path, yes_no)))
    assert postings[21].deleted
    assert not postings[22].deleted
    assert postings[23].allocations == ()
    assert postings == by_tran(read_export(*FILES))


def test_en_us_dates_read_the_same(tmp_path: Path) -> None:
    """PowerShell's Export-Csv on an en-US PC: M/d/yyyy h:mm:ss tt."""

    def en_us(table: str, rows: Rows) -> None:
        for row in rows:
            for column in ("DATE", "RECORD_MODIFY_DATE"):
                if row.get(column):
                    stamp = dt.datetime.strptime(row[column], "%d/%m/%Y %H:%M:%S")
                    row[column] = f"{stamp.month}/{stamp.day}/{stamp:%Y} {stamp:%I:%M:%S %p}"

    us = read_export(*altered(tmp_path, en_us))
    gb = read_export(*FILES)
    assert us.postings == gb.postings
    assert us.revisions == gb.revisions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("31/12/2016 00:00:00", dt.datetime(2016, 12, 31)),
        ("03/04/2025", dt.datetime(2025, 4, 3)),
        ("4/3/2025 2:05:09 PM", dt.datetime(2025, 4, 3, 14, 5, 9)),
        ("12/31/2016 12:00:00 AM", dt.datetime(2016, 12, 31)),
        ("12/31/2016", dt.datetime(2016, 12, 31)),
        ("2025-03-20 16:45:00", dt.datetime(2025, 3, 20, 16, 45)),
        ("2025-03-20T16:45:00.123", dt.datetime(2025, 3, 20, 16, 45, 0, 123000)),
        ("31/13/2025", None),
        ("13/31/2016 1:00:00 PM", None),
        ("yesterday", None),
    ],
)
def test_parse_stamp(text: str, expected: dt.datetime | None) -> None:
    assert parse_stamp(text) == expected


def test_lf_unquoted_utf8_without_bom_reads_the_same(tmp_path: Path) -> None:
    assert read_export(*altered(tmp_path)).postings == read_export(*FILES).postings


def test_control_characters_in_text_become_spaces(tmp_path: Path) -> None:
    def noisy(table: str, rows: Rows) -> None:
        if table == "AUDIT_HEADER":
            rows[0]["DETAILS"] = "Goods\nand\tservices\x00"

    assert read_export(*altered(tmp_path, noisy)).postings[0].details == "Goods and services"


def test_money_text_has_two_places_and_no_negative_zero() -> None:
    assert [money_text(Decimal(v)) for v in ("1E+3", "-0.001", "7.5")] == [
        "1000.00",
        "0.00",
        "7.50",
    ]


# --- bad files ----------------------------------------------------------------------------


def drop_column(name: str) -> Callable[[Rows], None]:
    def change(rows: Rows) -> None:
        for row in rows:
            del row[name]

    return change


def set_cell(index: int, column: str, value: str) -> Callable[[Rows], None]:
    def change(rows: Rows) -> None:
        rows[index][column] = value

    return change


BAD_FILES = [
    pytest.param(HEADER, drop_column("DATE"), 1, "DATE", "missing column", id="missing-column"),
    pytest.param(
        HEADER,
        drop_column("HEADER_NUMBER"),
        1,
        "HEADER_NUMBER",
        "missing column",
        id="no-header-number",
    ),
    pytest.param(HEADER, set_cell(2, "DATE", "31/13/2025"), 4, "DATE", "bad date", id="bad-date"),
    pytest.param(HEADER, set_cell(4, "TYPE", "XX"), 6, "TYPE", "unknown", id="unknown-type"),
    pytest.param(
        HEADER,
        set_cell(0, "GROSS_AMOUNT", "1,200.00"),
        2,
        "GROSS_AMOUNT",
        "bad number",
        id="bad-amount",
    ),
    pytest.param(
        HEADER, set_cell(1, "TRAN_NUMBER", "1"), 3, "TRAN_NUMBER", "already", id="dup-tran"
    ),
    pytest.param(
        HEADER, set_cell(1, "HEADER_NUMBER", "1"), 3, "HEADER_NUMBER", "already", id="dup-header"
    ),
    pytest.param(
        SPLIT,
        set_cell(3, "HEADER_NUMBER", "three"),
        5,
        "HEADER_NUMBER",
        "bad number",
        id="bad-split",
    ),
    pytest.param(
        SPLIT, drop_column("NOMINAL_CODE"), 1, "NOMINAL_CODE", "missing column", id="no-nominal"
    ),
    pytest.param(USAGE, set_cell(6, "AMOUNT", "NaN"), 8, "AMOUNT", "bad number", id="nan"),
    pytest.param(USAGE, set_cell(6, "AMOUNT", "1e15"), 8, "AMOUNT", "bad number", id="too-large"),
    pytest.param(
        USAGE, set_cell(6, "DELETED_FLAG", "maybe"), 8, "DELETED_FLAG", "bad flag", id="flag"
    ),
    pytest.param(
        USAGE,
        drop_column("SPLIT_CROSSREF"),
        1,
        "SPLIT_CROSSREF",
        "missing column",
        id="usage-column",
    ),
]


def broken_files(
    tmp_path: Path, source: Path, change: Callable[[Rows], None]
) -> tuple[Path, Path, Path]:
    return altered(tmp_path, lambda table, rows: change(rows) if table == source.stem else None)


@pytest.mark.parametrize(("source", "change", "row", "column", "message"), BAD_FILES)
def test_a_bad_file_names_file_row_and_column(
    tmp_path: Path,
    source: Path,
    change: Callable[[Rows], None],
    row: int,
    column: str,
    message: str,
) -> None:
    files = broken_files(tmp_path, source, change)
    broken = tmp_path / source.name
    with pytest.raises(ExportFileError) as caught:
        read_export(*files)
    error = caught.value
    assert (error.file, error.row, error.column) == (str(broken), row, column)
    assert message in error.message
    assert str(error).startswith(f"{broken}, row {row}, column {column}: ")


def test_a_missing_file_is_an_export_file_error(tmp_path: Path) -> None:
    with pytest.raises(ExportFileError, match="cannot read the file"):
        read_export(tmp_path / "nope.csv", SPLIT, USAGE)


def test_an_empty_account_ref_on_a_customer_row(tmp_path: Path) -> None:
    files = broken_files(tmp_path, HEADER, set_cell(0, "ACCOUNT_REF", " "))
    with pytest.raises(ExportFileError) as caught:
        read_export(*files)
    assert (caught.value.row, caught.value.column) == (2, "ACCOUNT_REF")


def test_utf16_as_windows_powershell_writes_it(tmp_path: Path) -> None:
    """Windows PowerShell 5's `Export-Csv -Encoding Unicode`: UTF-16 with a byte-order mark."""
    copies = []
    for path in (*FILES, CURRENCY, *HISTORY_FILES):
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes().decode("utf-8-sig").encode("utf-16"))
        copies.append(copy)
    header, split, usage = copies[:3]
    utf16 = read_export(header, split, usage, history=True)
    assert utf16.postings == read_export(*FILES, history=True).postings
