"""Reading Sage's three audit-trail CSV files into postings."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from service.exporter.commands import register
from service.exporter.sage_csv import (
    Allocation,
    ExportFileError,
    Posting,
    SageExport,
    money_text,
    read_export,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sage"
HEADER = FIXTURES / "AUDIT_HEADER.csv"
SPLIT = FIXTURES / "AUDIT_SPLIT.csv"
USAGE = FIXTURES / "AUDIT_USAGE.csv"


@pytest.fixture(scope="module")
def export() -> SageExport:
    return read_export(HEADER, SPLIT, USAGE)


def by_tran(export: SageExport) -> dict[int, Posting]:
    return {posting.tran_number: posting for posting in export.postings}


def test_sends_only_customer_types_and_counts_the_rest(export: SageExport) -> None:
    assert [p.tran_number for p in export.postings] == [*range(1, 15), 19, 20, 21]
    assert {p.type for p in export.postings} == {"SI", "SC", "SR", "SA", "SD", "SP"}
    assert export.skipped_types == {"BR": 1, "JD": 1, "PI": 1, "PP": 1}


def test_maps_an_invoice(export: SageExport) -> None:
    invoice = by_tran(export)[1]
    assert invoice.to_wire() == {
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
        (3, "SR", "BACS", "1200", "300.00"),
        (4, "SD", "DISC", "4009", "0.30"),
        (7, "SC", "10003", "8100", "600.00"),
        (9, "SA", "On account", "1200", "240.37"),
        (13, "SC", "CN10005", "4000", "60.00"),
        (14, "SP", "REFUND", "1200", "60.00"),
    ],
)
def test_maps_each_settling_type(
    export: SageExport, tran: int, kind: str, reference: str, nominal: str, gross: str
) -> None:
    wire = by_tran(export)[tran].to_wire()
    assert (wire["type"], wire["reference"], wire["nominal_code"], wire["gross_amount"]) == (
        kind,
        reference,
        nominal,
        gross,
    )
    assert "outstanding" not in wire, "Sage's OUTSTANDING is only sent for invoices"


def test_rounds_sage_doubles_from_their_text(export: SageExport) -> None:
    invoice = by_tran(export)[2]
    assert (invoice.net_amount, invoice.tax_amount, invoice.outstanding) == (
        Decimal("100.10"),
        Decimal("20.02"),
        Decimal("19.82"),
    )
    assert by_tran(export)[4].to_wire()["net_amount"] == "0.30"
    # 2.665 as a float is 2.66499999... and half-even rounding gives 2.66; Sage means 2.67.
    assert by_tran(export)[19].to_wire()["gross_amount"] == "2.67"


def test_removes_signs(export: SageExport) -> None:
    receipt, credit, refund = (by_tran(export)[n] for n in (3, 13, 14))
    assert (receipt.gross_amount, credit.net_amount, credit.tax_amount, refund.gross_amount) == (
        Decimal("300.00"),
        Decimal("50.00"),
        Decimal("10.00"),
        Decimal("60.00"),
    )


def test_takes_the_date_part_of_a_sage_datetime(export: SageExport) -> None:
    assert by_tran(export)[2].date == dt.date(2025, 2, 10)


def test_carries_the_write_off_si_through_unchanged(export: SageExport) -> None:
    write_off = by_tran(export)[10].to_wire()
    assert (write_off["type"], write_off["details"], write_off["nominal_code"]) == (
        "SI",
        "Bad Debt Write Off",
        "8100",
    )
    assert write_off["gross_amount"] == "0.37"


def test_deleted_flag(export: SageExport) -> None:
    assert by_tran(export)[19].deleted is True
    assert by_tran(export)[20].deleted is False


def test_resolves_allocations_through_splits(export: SageExport) -> None:
    postings = by_tran(export)
    cash = dt.date(2025, 3, 3)
    # The receipt paid both splits of invoice 1 (splits 1 and 2): two allocations to tran 1.
    assert postings[3].allocations == (
        Allocation(1, Decimal("120.00"), cash),
        Allocation(1, Decimal("180.00"), cash),
    )
    assert postings[4].allocations == (Allocation(2, Decimal("0.30"), dt.date(2025, 3, 4)),)
    assert postings[7].allocations == (Allocation(6, Decimal("600.00"), dt.date(2025, 3, 18)),)
    assert [(a.invoice_tran_number, a.amount) for a in postings[9].allocations] == [
        (8, Decimal("240.00")),
        (10, Decimal("0.37")),
    ]
    assert not any(postings[n].allocations for n in (1, 2, 6, 8, 10, 11))


def test_an_allocation_written_from_both_sides_counts_once(export: SageExport) -> None:
    assert by_tran(export)[12].allocations == (
        Allocation(11, Decimal("120.00"), dt.date(2025, 3, 1)),
    )


def test_invoice_side_found_whichever_column_it_is_in(export: SageExport) -> None:
    # The refund's usage row names the refund first and the invoice in SPLIT_CROSSREF.
    assert by_tran(export)[14].allocations == (
        Allocation(11, Decimal("60.00"), dt.date(2025, 3, 20)),
    )


def test_deleted_usage_rows_are_not_allocations(export: SageExport) -> None:
    assert by_tran(export)[21].allocations == ()


def test_counts_customer_allocations_it_cannot_attach(export: SageExport) -> None:
    # Usage 14 names split 999, which no transaction has; the supplier pair is not counted.
    assert export.unlinked_allocations == 1


def test_revision_is_the_latest_change_to_any_row_of_the_posting(export: SageExport) -> None:
    # Invoice 11's header changed at 16:45 on 20/03; its receipt only on 01/03.
    assert export.revisions[11] == dt.datetime(2025, 3, 20, 16, 45)
    assert export.revisions[12] == dt.datetime(2025, 3, 1, 8, 5)


def test_without_the_split_file(tmp_path: Path) -> None:
    header = tmp_path / "HEADER.csv"
    usage = tmp_path / "USAGE.csv"
    write_rows(
        header,
        [
            {**HEADER_ROW, "TRAN_NUMBER": "1", "NOMINAL_CODE": "4000"},
            {**HEADER_ROW, "TRAN_NUMBER": "2", "TYPE": "SR", "NOMINAL_CODE": "1200"},
        ],
    )
    write_rows(
        usage, [{"SPLIT_NUMBER": "1", "SPLIT_CROSSREF": "2", "AMOUNT": "5", "DATE": "1/2/2025"}]
    )
    postings = by_tran(read_export(header, None, usage))
    assert postings[1].nominal_code == "4000"
    assert postings[2].allocations == (Allocation(1, Decimal("5.00"), dt.date(2025, 2, 1)),)


def test_without_split_file_or_nominal_column_the_nominal_is_empty(tmp_path: Path) -> None:
    header, usage = tmp_path / "HEADER.csv", tmp_path / "USAGE.csv"
    write_rows(header, [HEADER_ROW])
    write_rows(usage, [], columns=["SPLIT_NUMBER", "SPLIT_CROSSREF", "AMOUNT", "DATE"])
    assert read_export(header, None, usage).postings[0].nominal_code == ""


def test_control_characters_in_text_become_spaces(tmp_path: Path) -> None:
    header, usage = tmp_path / "HEADER.csv", tmp_path / "USAGE.csv"
    write_rows(header, [{**HEADER_ROW, "DETAILS": "Goods\nand\tservices\x00"}])
    write_rows(usage, [], columns=["SPLIT_NUMBER", "SPLIT_CROSSREF", "AMOUNT", "DATE"])
    assert read_export(header, None, usage).postings[0].details == "Goods and services"


def test_money_text_has_two_places_and_no_negative_zero() -> None:
    assert [money_text(Decimal(v)) for v in ("1E+3", "-0.001", "7.5")] == [
        "1000.00",
        "0.00",
        "7.50",
    ]


# --- bad files ----------------------------------------------------------------------------

HEADER_ROW = {
    "TRAN_NUMBER": "1",
    "TYPE": "SI",
    "ACCOUNT_REF": "ACME01",
    "INV_REF": "10001",
    "DATE": "03/02/2025",
    "DETAILS": "Goods",
    "NET_AMOUNT": "100",
    "TAX_AMOUNT": "20",
    "GROSS_AMOUNT": "120",
    "DELETED_FLAG": "0",
}


def write_rows(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    fields = columns or list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def fixture_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def broken_copy(
    tmp_path: Path, source: Path, change: Callable[[list[dict[str, str]]], None]
) -> Path:
    rows = fixture_rows(source)
    change(rows)
    target = tmp_path / source.name
    write_rows(target, rows)
    return target


def drop_column(name: str) -> Callable[[list[dict[str, str]]], None]:
    def change(rows: list[dict[str, str]]) -> None:
        for row in rows:
            del row[name]

    return change


def set_cell(index: int, column: str, value: str) -> Callable[[list[dict[str, str]]], None]:
    def change(rows: list[dict[str, str]]) -> None:
        rows[index][column] = value

    return change


BAD_FILES = [
    pytest.param(HEADER, drop_column("DATE"), 1, "DATE", "missing column", id="missing-column"),
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
    pytest.param(HEADER, set_cell(1, "TRAN_NUMBER", "1"), 3, "TRAN_NUMBER", "already", id="dup"),
    pytest.param(
        SPLIT,
        set_cell(3, "HEADER_NUMBER", "three"),
        5,
        "HEADER_NUMBER",
        "bad number",
        id="bad-split-number",
    ),
    pytest.param(USAGE, set_cell(6, "AMOUNT", "NaN"), 8, "AMOUNT", "bad number", id="nan"),
    pytest.param(USAGE, set_cell(6, "AMOUNT", "1e15"), 8, "AMOUNT", "bad number", id="too-large"),
    pytest.param(USAGE, set_cell(0, "DATE", "2025/03/03"), 2, "DATE", "bad date", id="usage-date"),
    pytest.param(
        USAGE,
        drop_column("SPLIT_CROSSREF"),
        1,
        "SPLIT_CROSSREF",
        "missing column",
        id="usage-missing-column",
    ),
]


def paths_with(broken: Path) -> tuple[Path, Path, Path]:
    chosen = {HEADER.name: HEADER, SPLIT.name: SPLIT, USAGE.name: USAGE, broken.name: broken}
    return chosen[HEADER.name], chosen[SPLIT.name], chosen[USAGE.name]


@pytest.mark.parametrize(("source", "change", "row", "column", "message"), BAD_FILES)
def test_bad_file_names_file_row_and_column(
    tmp_path: Path,
    source: Path,
    change: Callable[[list[dict[str, str]]], None],
    row: int,
    column: str,
    message: str,
) -> None:
    broken = broken_copy(tmp_path, source, change)
    with pytest.raises(ExportFileError) as caught:
        read_export(*paths_with(broken))
    error = caught.value
    assert (error.file, error.row, error.column) == (str(broken), row, column)
    assert message in error.message
    assert str(error).startswith(f"{broken}, row {row}, column {column}: ")


def test_missing_file_is_an_export_file_error(tmp_path: Path) -> None:
    with pytest.raises(ExportFileError, match="cannot read the file"):
        read_export(tmp_path / "nope.csv", None, USAGE)


def test_empty_account_ref_on_a_customer_row(tmp_path: Path) -> None:
    broken = broken_copy(tmp_path, HEADER, set_cell(0, "ACCOUNT_REF", " "))
    with pytest.raises(ExportFileError) as caught:
        read_export(broken, SPLIT, USAGE)
    assert (caught.value.row, caught.value.column) == (2, "ACCOUNT_REF")


@pytest.mark.parametrize(("source", "change", "row", "column", "message"), BAD_FILES)
def test_cli_bad_file_is_one_line_and_exit_code_2(
    tmp_path: Path,
    source: Path,
    change: Callable[[list[dict[str, str]]], None],
    row: int,
    column: str,
    message: str,
) -> None:
    broken = broken_copy(tmp_path, source, change)
    app = typer.Typer()
    register(app)
    args = ["push", "--url", "http://ledgerlink.test", "--dry-run", *map(str, paths_with(broken))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {broken}, row {row}, column {column}: ")
    assert message in line
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
