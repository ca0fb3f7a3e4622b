"""Sage's currency columns and the cleared years' AUDIT_HISTORY_* tables, read from the
fixture company's CSV exports: what goes on the wire, what stops an export, and how the
history tables merge with the live ones."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from ledgerlink_exporter.cli import app
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import canonical_json, content_hash, plan_push
from ledgerlink_exporter.sage import ExportFileError, Posting, SageExport
from ledgerlink_exporter.state import PushState

from tests.exporter.sage_files import (
    FILES,
    HISTORY_FILES,
    Rows,
    altered,
    read_rows,
    save_complete_push,
    write_rows,
)
from tests.exporter.test_sage import CUSTOMER_TRANS, HISTORY_TRANS

CURRENCY_KEYS = {
    "currency",
    "exchange_rate",
    "foreign_net_amount",
    "foreign_tax_amount",
    "foreign_gross_amount",
    "foreign_outstanding",
}
FOREIGN_TRANS = {30, 31, 32, 33, 34}


@pytest.fixture(scope="module")
def export() -> SageExport:
    return read_export(*FILES, history=True)


def by_tran(export: SageExport) -> dict[int, Posting]:
    return {posting.tran_number: posting for posting in export.postings}


def test_a_dollar_invoice_and_its_receipt_travel_in_both_currencies(export: SageExport) -> None:
    postings = by_tran(export)
    invoice = postings[30].to_wire()
    assert {k: invoice[k] for k in ("gross_amount", "outstanding", *CURRENCY_KEYS)} == {
        "gross_amount": "1600.00",
        "outstanding": "1200.00",
        "currency": "USD",
        "exchange_rate": "1.25",
        "foreign_net_amount": "2000.00",
        "foreign_tax_amount": "0.00",
        "foreign_gross_amount": "2000.00",
        "foreign_outstanding": "1500.00",
    }
    receipt = postings[31].to_wire()
    assert (receipt["currency"], receipt["foreign_gross_amount"]) == ("USD", "500.00")
    assert "foreign_outstanding" not in receipt, "Sage's outstanding is sent for invoices only"
    assert receipt["allocations"] == [
        {
            "invoice_tran_number": 30,
            "amount": "400.00",
            "date": "2025-03-24",
            "foreign_amount": "500.00",
        }
    ]


def test_a_revaluation_moves_pounds_only(export: SageExport) -> None:
    reval = by_tran(export)[34].to_wire()
    assert (reval["type"], reval["reference"], reval["nominal_code"]) == ("SC", "REVAL", "7906")
    assert (reval["gross_amount"], reval["foreign_gross_amount"]) == ("30.00", "0.00")
    assert reval["exchange_rate"] == "1.28"
    assert [(a["amount"], a["foreign_amount"]) for a in reval["allocations"]] == [("30.00", "0.00")]


def test_base_currency_rows_send_no_currency_fields(export: SageExport) -> None:
    for posting in export.postings:
        wire = posting.to_wire()
        foreign = posting.tran_number in FOREIGN_TRANS | {42, 43}
        assert bool(CURRENCY_KEYS & set(wire)) == foreign, posting.tran_number
        for allocation in wire["allocations"]:
            assert ("foreign_amount" in allocation) == foreign


def drop_currency_columns(table: str, rows: Rows) -> None:
    for row in rows:
        for column in [c for c in row if c.startswith("FOREIGN_") or c == "CURRENCY"]:
            del row[column]


def test_an_export_without_currency_columns_reads_as_base_currency(tmp_path: Path) -> None:
    """An older export: base-currency postings are the same bytes, and the dollar ones go in
    pounds as before."""
    paths = altered(tmp_path, drop_currency_columns)
    (tmp_path / "CURRENCY.csv").unlink()
    old = by_tran(read_export(*paths))
    new = by_tran(read_export(*FILES))
    assert sorted(old) == CUSTOMER_TRANS
    for number, posting in new.items():
        if number not in FOREIGN_TRANS:
            assert canonical_json(old[number].to_wire()) == canonical_json(posting.to_wire())
            assert content_hash(old[number]) == content_hash(posting)
        assert old[number].foreign is None
    assert old[30].gross_amount == new[30].gross_amount


def test_a_foreign_currency_needs_the_currency_table(tmp_path: Path) -> None:
    paths = altered(tmp_path)
    (tmp_path / "CURRENCY.csv").unlink()
    with pytest.raises(ExportFileError) as caught:
        read_export(*paths)
    assert (caught.value.row, caught.value.column) == (28, "CURRENCY")
    assert "currency 2 needs the CURRENCY table" in str(caught.value)
    assert "CURRENCY.csv" in str(caught.value)


def test_a_currency_number_the_table_lacks_is_named(tmp_path: Path) -> None:
    paths = altered(tmp_path)
    table = tmp_path / "CURRENCY.csv"
    write_rows(table, [row for row in read_rows(table) if row["CODE"] != "USD"])
    with pytest.raises(ExportFileError, match=r"currency 2 is not in the CURRENCY table"):
        read_export(*paths)


def test_without_a_base_flag_currency_1_is_the_base(tmp_path: Path) -> None:
    paths = altered(tmp_path)
    table = tmp_path / "CURRENCY.csv"
    rows = read_rows(table)
    for row in rows:
        del row["BASE_CURRENCY"]
    write_rows(table, rows)
    assert read_export(*paths).postings == read_export(*FILES).postings


def test_a_foreign_allocation_needs_its_foreign_amount(tmp_path: Path) -> None:
    def blank(table: str, rows: Rows) -> None:
        if table == "AUDIT_USAGE":
            for row in rows:
                if row["USAGE_NUMBER"] in ("22", "23"):
                    row["FOREIGN_AMOUNT"] = ""

    with pytest.raises(ExportFileError) as caught:
        read_export(*altered(tmp_path, blank))
    assert caught.value.column == "FOREIGN_AMOUNT"
    assert "needed for an allocation in USD" in str(caught.value)


def test_a_foreign_invoice_needs_its_foreign_outstanding(tmp_path: Path) -> None:
    def blank(table: str, rows: Rows) -> None:
        if table == "AUDIT_HEADER":
            rows[26]["FOREIGN_OUTSTANDING"] = ""

    with pytest.raises(ExportFileError) as caught:
        read_export(*altered(tmp_path, blank))
    assert (caught.value.row, caught.value.column) == (28, "FOREIGN_OUTSTANDING")


# --- the cleared years --------------------------------------------------------------------


def test_history_is_read_only_when_asked(export: SageExport) -> None:
    live = read_export(*FILES)
    assert [p.tran_number for p in live.postings] == CUSTOMER_TRANS
    assert live.from_history == 0
    assert [p.tran_number for p in export.postings] == sorted(CUSTOMER_TRANS + HISTORY_TRANS)
    assert export.from_history == len(HISTORY_TRANS)
    cleared = by_tran(export)[41]
    assert [(a.invoice_tran_number, str(a.amount)) for a in cleared.allocations] == [
        (39, "120.00"),
        (39, "120.00"),
    ], "one allocation per line of the cleared two-line invoice, the mirror rows counted once"


def copy_into_history(headers: set[str]) -> Callable[[Path], None]:
    """Stale copies of live transactions also in the history files (as if exported while
    Sage was clearing), their allocation amounts different, so a double count would show."""

    def change(folder: Path) -> None:
        live = {
            name: read_rows(folder / name)
            for name in ("AUDIT_HEADER.csv", "AUDIT_SPLIT.csv", "AUDIT_USAGE.csv")
        }
        splits = {
            r["TRAN_NUMBER"] for r in live["AUDIT_SPLIT.csv"] if r["HEADER_NUMBER"] in headers
        }
        picked = {
            "AUDIT_HISTORY_HEADER.csv": [
                r for r in live["AUDIT_HEADER.csv"] if r["HEADER_NUMBER"] in headers
            ],
            "AUDIT_HISTORY_SPLIT.csv": [
                r for r in live["AUDIT_SPLIT.csv"] if r["TRAN_NUMBER"] in splits
            ],
            "AUDIT_HISTORY_USAGE.csv": [
                {**r, "AMOUNT": "450", "FOREIGN_AMOUNT": "562.5"}
                for r in live["AUDIT_USAGE.csv"]
                if r["SPLIT_NUMBER"] in splits
            ],
        }
        for name, extra in picked.items():
            rows = read_rows(folder / name)
            columns = list(rows[0])
            write_rows(
                folder / name, rows + [{c: r.get(c, "") for c in columns} for r in extra], columns
            )

    return change


def test_a_transaction_in_both_live_and_history_counts_once(
    tmp_path: Path, export: SageExport
) -> None:
    paths = altered(tmp_path)
    copy_into_history({"27", "28"})(tmp_path)
    assert len(read_rows(tmp_path / "AUDIT_HISTORY_HEADER.csv")) == 6
    both = read_export(*paths, history=True)
    assert both.postings == export.postings, "the live rows win, nothing is counted twice"
    assert both.from_history == len(HISTORY_TRANS)


def test_the_history_files_come_as_three(tmp_path: Path) -> None:
    paths = altered(tmp_path)
    (tmp_path / HISTORY_FILES[2].name).unlink()
    with pytest.raises(ExportFileError, match=r"AUDIT_HISTORY_USAGE\.csv: missing"):
        read_export(*paths, history=True)
    assert read_export(*paths).postings, "without history the live files are enough"


def test_a_folder_without_history_files_reads_the_live_tables(tmp_path: Path) -> None:
    for source in FILES:
        shutil.copy(source, tmp_path / source.name)
    shutil.copy(FILES[0].parent / "CURRENCY.csv", tmp_path)
    header, split, usage = (tmp_path / source.name for source in FILES)
    assert read_export(header, split, usage, history=True).postings == read_export(*FILES).postings


def dry_run(*args: str) -> str:
    result = CliRunner().invoke(
        app, ["push", "--url", "http://ledgerlink.test", "--dry-run", *args, *map(str, FILES)]
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_after_a_complete_push_history_is_read_only_with_the_history_option(
    tmp_path: Path,
) -> None:
    live = read_export(*FILES)
    state = tmp_path / "state.json"
    save_complete_push(state, live)
    assert "would send 0 postings" in dry_run("--state", str(state))
    out = dry_run("--state", str(state), "--history")
    assert "would send 4 postings in 1 batch" in out
    assert "Cleared years: 4 postings read from AUDIT_HISTORY_*" in out
    assert "would send 33 postings" in dry_run(), "without a state file every push is a first load"


@pytest.mark.parametrize(
    ("rate", "sent"),
    [("1.28", "1.28"), ("1.2345678901234", "1.2345678901"), ("0", None), ("", None)],
)
def test_the_rate_is_sent_as_the_service_stores_it(
    tmp_path: Path, rate: str, sent: str | None
) -> None:
    def set_rate(table: str, rows: Rows) -> None:
        if table == "AUDIT_HEADER":
            rows[26]["FOREIGN_RATE"] = rate

    wire = by_tran(read_export(*altered(tmp_path, set_rate)))[30].to_wire()
    assert wire.get("exchange_rate") == sent


@pytest.mark.parametrize("rate", ["NaN", "Infinity", "fast", "1e12"])
def test_a_rate_that_is_no_rate_is_named(tmp_path: Path, rate: str) -> None:
    def set_rate(table: str, rows: Rows) -> None:
        if table == "AUDIT_HEADER":
            rows[26]["FOREIGN_RATE"] = rate

    with pytest.raises(ExportFileError) as caught:
        read_export(*altered(tmp_path, set_rate))
    assert (caught.value.row, caught.value.column) == (28, "FOREIGN_RATE")


def test_what_an_older_exporter_sent_in_pounds_is_sent_again(export: SageExport) -> None:
    """State left by an exporter that ignored the currency columns: the dollar postings'
    hashes differ, so they are sent again, however long ago they were modified; the
    base-currency postings stay unchanged."""
    live = read_export(*FILES)
    old = {p.tran_number: content_hash(dataclasses.replace(p, foreign=None)) for p in live.postings}
    state = PushState(high_water=dt.datetime(2025, 6, 1), acknowledged=old)
    upgrade = plan_push(live, state, batch_size=500)
    assert {t for b in upgrade.batches for t in b.tran_numbers} == FOREIGN_TRANS
