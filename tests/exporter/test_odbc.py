"""`push --dsn`: Sage's tables read over ODBC (unixODBC and the SQLite ODBC driver holding
tables with Sage's names, columns and types) give the very postings the CSV files give, reach
the real service with every invoice's figures right, and incremental reads by
RECORD_MODIFY_DATE send whole postings."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from ledgerlink_exporter.cli import app
from ledgerlink_exporter.client import Signer, WebhookClient
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.odbc_source import connect, connection_string, literal, read_odbc
from ledgerlink_exporter.push import content_hash, plan_push, run_push
from ledgerlink_exporter.sage import ExportFileError, SageExport
from ledgerlink_exporter.state import PushState, StateFile

from tests.exporter.ledger import (
    FIXTURE_BASE,
    FIXTURE_LEDGER,
    base_views,
    live_views,
    mismatched,
    sync_and_read,
)
from tests.exporter.odbc_company import connection_string as sqlite_dsn
from tests.exporter.odbc_company import create_company, insert_rows, odbc_or_skip
from tests.exporter.sage_files import FILES, save_complete_push
from tests.support.webhooks import TEST_SECRET


@pytest.fixture
def company(tmp_path: Path) -> Path:
    odbc_or_skip()
    return create_company(tmp_path / "sage.db")


def read(company: Path, since: dt.datetime | None = None, *, history: bool = False) -> SageExport:
    connection = connect(sqlite_dsn(company))
    try:
        return read_odbc(connection, since, history=history)
    finally:
        connection.close()


@pytest.mark.parametrize("history", [False, True])
def test_odbc_rows_give_the_same_postings_as_the_csv_files(company: Path, history: bool) -> None:
    odbc, csv = read(company, history=history), read_export(*FILES, history=history)
    assert odbc.postings == csv.postings
    assert odbc.from_history == csv.from_history == (4 if history else 0)
    assert odbc.revisions == csv.revisions
    assert (odbc.skipped_types, odbc.unlinked_allocations) == (
        csv.skipped_types,
        csv.unlinked_allocations,
    )


async def test_pushed_over_odbc_the_company_reconciles_to_its_ledger(
    company: Path, client: httpx.AsyncClient
) -> None:
    plan = plan_push(read(company, history=True), None, batch_size=500)
    sender = WebhookClient(client, str(client.base_url), Signer.from_secret(TEST_SECRET))
    report = await run_push(plan, sender.deliver)
    assert report.error is None
    invoices = await sync_and_read(client)
    assert live_views(invoices) == FIXTURE_LEDGER
    assert base_views(invoices) == FIXTURE_BASE
    assert mismatched(invoices) == []


def test_an_incremental_read_sends_changed_postings_whole(company: Path) -> None:
    since = dt.datetime(2025, 4, 1)
    assert read(company, since).postings == ()
    with sqlite3.connect(company) as db:
        # The receipt for FOXG06's two invoices: its second line's allocation is undone.
        db.execute(
            "UPDATE AUDIT_USAGE SET AMOUNT = 0, RECORD_MODIFY_DATE = '2025-04-02 09:00:00' "
            "WHERE SPLIT_NUMBER = 25 AND SPLIT_CROSSREF = 27"
        )
    changed = read(company, since)
    assert [p.tran_number for p in changed.postings] == [25, 26]
    receipt = changed.postings[1]
    assert [(a.invoice_tran_number, str(a.amount)) for a in receipt.allocations] == [(24, "200.00")]
    assert changed.revisions[26] == dt.datetime(2025, 4, 2, 9)


def test_an_incremental_read_finds_a_new_allocation_against_an_old_invoice(
    company: Path,
) -> None:
    with sqlite3.connect(company) as db:
        insert_rows(
            db,
            "AUDIT_USAGE",
            [
                {
                    "USAGE_NUMBER": "99",
                    "SPLIT_NUMBER": "22",
                    "SPLIT_CROSSREF": "11",
                    "AMOUNT": "0.37",
                    "DATE": "",
                    "DELETED_FLAG": "0",
                    "RECORD_MODIFY_DATE": "02/04/2025 10:00:00",
                }
            ],
        )
    changed = read(company, dt.datetime(2025, 4, 1))
    assert [p.tran_number for p in changed.postings] == [11, 22]
    payment = changed.postings[0]
    assert [(a.invoice_tran_number, str(a.amount)) for a in payment.allocations] == [
        (10, "240.00"),
        (12, "0.37"),
        (22, "0.37"),
    ], "the payment on account is sent with every allocation it has"


def test_push_dsn_through_the_command(company: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["push", "--url", "http://ledgerlink.test", "--dsn", sqlite_dsn(company), "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    assert "would send 33 postings in 1 batch" in result.stdout


def test_an_unknown_dsn_is_one_line_and_exit_2() -> None:
    odbc_or_skip()
    result = CliRunner().invoke(
        app, ["push", "--url", "http://ledgerlink.test", "--dsn", "NoSuchSage", "--dry-run"]
    )
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert "error: ODBC: cannot connect to 'NoSuchSage': " in line


def test_missing_tables_are_one_line(tmp_path: Path) -> None:
    odbc_or_skip()
    with sqlite3.connect(tmp_path / "empty.db") as db:
        db.execute("CREATE TABLE OTHER (X INTEGER)")
    with pytest.raises(ExportFileError, match=r"^AUDIT_HEADER: no such table"):
        read(tmp_path / "empty.db")


def test_a_dsn_name_or_a_connection_string() -> None:
    assert connection_string("SageLine50v30") == "DSN=SageLine50v30"
    assert connection_string("DSN=Sage;UID=manager;PWD=x") == "DSN=Sage;UID=manager;PWD=x"


@pytest.mark.parametrize(
    ("value", "sql"),
    [
        (42, "42"),
        ("BACS", "'BACS'"),
        ("O'Brien's", "'O''Brien''s'"),
        ("x'; DROP TABLE AUDIT_HEADER; --", "'x''; DROP TABLE AUDIT_HEADER; --'"),
        (dt.datetime(2025, 3, 20, 16, 45, 5), "{ts '2025-03-20 16:45:05'}"),
    ],
)
def test_literals_are_quoted_for_a_driver_without_parameters(
    value: int | str | dt.datetime, sql: str
) -> None:
    assert literal(value) == sql


def test_an_incremental_read_keeps_the_currency(company: Path) -> None:
    with sqlite3.connect(company) as db:
        db.execute(
            "UPDATE AUDIT_USAGE SET RECORD_MODIFY_DATE = '2025-04-02 09:00:00' "
            "WHERE USAGE_NUMBER = 22"
        )
    changed = read(company, dt.datetime(2025, 4, 1))
    assert [p.tran_number for p in changed.postings] == [30, 31]
    whole = {p.tran_number: p for p in read(company).postings}
    assert list(changed.postings) == [whole[30], whole[31]]
    assert changed.postings[1].allocations[0].foreign_amount == Decimal("500.00")


def test_a_company_without_history_tables_is_read_without_them(tmp_path: Path) -> None:
    odbc_or_skip()
    company = create_company(tmp_path / "sage.db", history=False)
    export = read(company, history=True)
    assert export.postings == read_export(*FILES).postings
    assert export.from_history == 0


def test_push_dsn_reads_history_on_a_first_load_or_when_asked(
    company: Path, tmp_path: Path
) -> None:
    live = read(company)
    state = tmp_path / "state.json"

    def dry_run(*args: str) -> str:
        result = CliRunner().invoke(
            app,
            [
                *("push", "--url", "http://ledgerlink.test", "--dsn", sqlite_dsn(company)),
                *("--dry-run", "--state", str(state), *args),
            ],
        )
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "would send 33 postings" in dry_run(), "a new state file: a first load"
    save_complete_push(state, live)
    assert "would send 0 postings" in dry_run()
    assert "would send 4 postings" in dry_run("--history")


def test_push_dsn_after_a_mark_in_the_future_reads_everything_again(
    company: Path, tmp_path: Path
) -> None:
    """A state file marked 2030 (a row once dated ahead) made every later ODBC read ask only
    for rows modified since 2030: the invoices entered since were never read. The mark is
    taken as now, and that push reads every posting."""
    state = tmp_path / "state.json"
    live = read(company)
    StateFile(state).save(
        PushState(
            high_water=dt.datetime(2030, 6, 1),
            acknowledged={p.tran_number: content_hash(p) for p in live.postings},
        )
    )
    with sqlite3.connect(company) as db:
        db.row_factory = sqlite3.Row
        header = db.execute("SELECT * FROM AUDIT_HEADER WHERE TRAN_NUMBER = 3").fetchone()
        new_invoice = {
            **dict(header),
            **{"HEADER_NUMBER": 100, "TRAN_NUMBER": 100, "INV_REF": "10100"},
            "RECORD_MODIFY_DATE": "2025-04-02 10:00:00",
        }
        columns = ", ".join(new_invoice)
        marks = ", ".join("?" for _ in new_invoice)
        db.execute(
            f"INSERT INTO AUDIT_HEADER ({columns}) VALUES ({marks})", [*new_invoice.values()]
        )
    result = CliRunner().invoke(
        app,
        [
            *("push", "--url", "http://ledgerlink.test", "--dsn", sqlite_dsn(company)),
            *("--dry-run", "--state", str(state)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "would send 1 posting in 1 batch" in result.stdout
    assert '"tran_number": 100,' in result.stdout
    assert "29 postings unchanged since the last push" in result.stdout
    assert "the state file's high-water mark 2030-06-01 00:00:00 is in the future" in result.stderr
