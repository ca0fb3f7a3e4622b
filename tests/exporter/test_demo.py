"""The demo company: deterministic, covering every status, and true to the default rules."""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from ledgerlink_demo.company import STATUSES, DemoCompany, Figures, generate_company, write_export
from ledgerlink_exporter.cli import app
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.sage import Posting, SageExport

# The defaults of LEDGERLINK_WRITE_OFF_NOMINALS and LEDGERLINK_WRITE_OFF_PATTERN.
WRITE_OFF_PATTERN = re.compile(r"bad\s*debt|write[\s-]*off|baddbt", re.IGNORECASE)


@pytest.fixture(scope="module")
def company() -> DemoCompany:
    return generate_company(customers=50, seed=1)


def read_back(company: DemoCompany, index: int, directory: Path) -> SageExport:
    paths = write_export(company.exports[index], directory / f"export-{index}")
    return read_export(*paths, history=True)


def is_revaluation(posting: Posting) -> bool:
    """The defaults of LEDGERLINK_EXCHANGE_VARIANCE_NOMINALS, REVAL, "Currency Reval"."""
    return posting.nominal_code == "7906" or posting.reference == "REVAL"


def is_write_off(posting: Posting) -> bool:
    nominal = posting.nominal_code
    on_bad_debt = nominal.isdigit() and 8100 <= int(nominal) <= 8199
    text = f"{posting.details} {posting.reference}"
    return on_bad_debt or WRITE_OFF_PATTERN.search(text) is not None


def figures_under_default_rules(export: SageExport) -> dict[str, tuple[Figures, str]]:
    """The reconciliation rules, written out again here independently of the service: each
    live invoice's figures (in its own currency; revaluations in pounds beside them) and
    status from the exported rows alone."""
    postings = {p.tran_number: p for p in export.postings}
    invoices = {
        t: p
        for t, p in postings.items()
        if p.type == "SI" and not p.deleted and not is_write_off(p)
    }
    settled: defaultdict[int, defaultdict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for posting in postings.values():
        if posting.deleted:
            continue
        kind = {"SR": "paid", "SA": "paid", "SD": "discounted", "SP": "refunded"}.get(
            posting.type, "written_off" if is_write_off(posting) else "credited"
        )
        if is_revaluation(posting):
            kind = "exchange_adjustment"
        for a in posting.allocations:
            # In the invoice's own currency, but a revaluation moves pounds only.
            pounds = a.foreign_amount is None or kind == "exchange_adjustment"
            amount = a.amount if pounds or a.foreign_amount is None else a.foreign_amount
            settled[a.invoice_tran_number][kind] += amount
    labels = {}
    for tran, invoice in invoices.items():
        amounts = settled[tran]
        paid = amounts["paid"] - amounts["refunded"]
        others = amounts["discounted"] + amounts["credited"]
        written_off = amounts["written_off"]
        foreign = invoice.foreign
        gross = invoice.gross_amount if foreign is None else foreign.gross_amount
        figures = Figures(
            gross,
            paid,
            amounts["discounted"],
            written_off,
            amounts["credited"],
            "GBP" if foreign is None else foreign.currency,
            amounts["exchange_adjustment"],
        )
        sage = invoice.outstanding if foreign is None else foreign.outstanding
        if sage is not None:  # a cleared invoice's history row has no OUTSTANDING
            assert figures.outstanding == sage, f"Sage's balance of {invoice.reference}"
        status = label(figures.outstanding, gross, paid + others, written_off)
        labels[invoice.reference] = (figures, status)
    return labels


def statuses_under_default_rules(export: SageExport) -> dict[str, str]:
    return {number: status for number, (_, status) in figures_under_default_rules(export).items()}


def label(
    outstanding: Decimal, gross: Decimal, settled_otherwise: Decimal, written: Decimal
) -> str:
    if outstanding <= 0:
        if written <= 0:
            return "Paid"
        return "Paid/Written Off" if settled_otherwise > 0 else "Written Off"
    if outstanding >= gross and written <= 0 and settled_otherwise <= 0:
        return "Unpaid"
    return "Part Paid"


def test_same_seed_same_company() -> None:
    assert generate_company(customers=12, seed=7) == generate_company(customers=12, seed=7)


def test_another_seed_another_company() -> None:
    first, other = generate_company(customers=12, seed=7), generate_company(customers=12, seed=8)
    assert first.exports != other.exports


def test_every_status_is_intended_at_least_once(company: DemoCompany) -> None:
    assert set(company.intended_statuses().values()) == set(STATUSES)


def test_every_status_even_for_the_smallest_company() -> None:
    assert set(generate_company(customers=2, seed=3).intended_statuses().values()) == set(STATUSES)


def test_intended_statuses_follow_the_default_rules(company: DemoCompany, tmp_path: Path) -> None:
    final = read_back(company, len(company.exports) - 1, tmp_path)
    assert statuses_under_default_rules(final) == company.intended_statuses()


def test_figures_are_what_the_exported_rows_imply(company: DemoCompany, tmp_path: Path) -> None:
    final = figures_under_default_rules(read_back(company, len(company.exports) - 1, tmp_path))
    assert {n: figures for n, (figures, _) in final.items()} == {
        invoice.invoice_number: invoice.figures for invoice in company.invoices
    }


def test_numbered_the_way_sage_numbers(company: DemoCompany) -> None:
    final = company.exports[-1]
    first = final.header[0]
    assert (first["TRAN_NUMBER"], first["HEADER_NUMBER"], first["ITEM_COUNT"]) == ("1", "1", "2")
    drifted = [r for r in final.header if r["TRAN_NUMBER"] != r["HEADER_NUMBER"]]
    assert len(drifted) == len(final.header) - 1, "every header after the first has drifted"
    lines = {row["TRAN_NUMBER"]: row["HEADER_NUMBER"] for row in final.split}
    for header in final.header:
        assert lines[header["TRAN_NUMBER"]] == header["HEADER_NUMBER"], "first line's number"
    receipts = {r["HEADER_NUMBER"] for r in final.header if r["TYPE"] == "SR"}
    multi_line = [r for r in final.header if r["TYPE"] == "SR" and int(r["ITEM_COUNT"]) > 1]
    assert multi_line, "a receipt settling several invoices, a line each"
    pairs = {(row["SPLIT_NUMBER"], row["SPLIT_CROSSREF"]) for row in final.usage}
    mirrored = [(a, b) for a, b in pairs if (b, a) in pairs]
    assert mirrored
    assert all(lines[a] in receipts or lines[b] in receipts for a, b in mirrored)
    assert any(Decimal(row["AMOUNT"]) == 0 for row in final.usage), "a zeroed usage row"


def test_the_second_export_changes_statuses(company: DemoCompany, tmp_path: Path) -> None:
    before = statuses_under_default_rules(read_back(company, 0, tmp_path))
    changed = {
        invoice.scenario
        for invoice in company.invoices
        if before.get(invoice.invoice_number) != invoice.intended_status
    }
    assert {
        "deleted_receipt",
        "edited_receipt",
        "edited_invoice_then_paid",
        "payment_on_account_allocated_later",
        "written_off_later",
        "account_balance_write_off",
    } <= changed


def test_edits_keep_the_tran_number_and_change_the_amount(company: DemoCompany) -> None:
    first, second = ({row["TRAN_NUMBER"]: row for row in e.header} for e in company.exports)
    edited = [t for t in first if first[t]["GROSS_AMOUNT"] != second[t]["GROSS_AMOUNT"]]
    assert len(edited) >= 2
    assert all(second[t]["RECORD_MODIFY_DATE"] != first[t]["RECORD_MODIFY_DATE"] for t in edited)


def test_deletions_are_flagged_in_the_later_export(company: DemoCompany) -> None:
    first, second = company.exports
    assert not [row for row in first.header if row["DELETED_FLAG"] == "1"]
    deleted = [row for row in second.header if row["DELETED_FLAG"] == "1"]
    assert {row["TYPE"] for row in deleted} == {"SI", "SR"}
    assert {r["INV_REF"] for r in deleted if r["TYPE"] == "SI"} == set(company.deleted_invoices)
    assert any(row["DELETED_FLAG"] == "1" for row in second.usage)


def test_small_overpayment_write_off_si_is_not_an_invoice(company: DemoCompany) -> None:
    [write_off] = company.write_off_invoices
    header = next(r for r in company.exports[-1].header if r["TRAN_NUMBER"] == str(write_off))
    split = next(
        r for r in company.exports[-1].split if r["HEADER_NUMBER"] == header["HEADER_NUMBER"]
    )
    assert (header["TYPE"], header["DETAILS"], split["NOMINAL_CODE"]) == (
        "SI",
        "Bad Debt Write Off",
        "8100",
    )
    assert write_off not in {invoice.tran_number for invoice in company.invoices}


def test_covers_the_write_off_variants(company: DemoCompany) -> None:
    scenarios = {invoice.scenario for invoice in company.invoices}
    assert {
        "write_off_per_invoice",
        "account_balance_write_off",
        "small_overpayment",
        "manual_write_off",
        "refund_after_credit",
        "paid_with_discount",
    } <= scenarios
    rows = company.exports[-1].header
    baddbt = [r for r in rows if r["TYPE"] == "SC" and r["INV_REF"] == "BADDBT"]
    assert {r["DETAILS"] for r in baddbt} >= {"Bad Debt Write Off"}
    assert any(r["TYPE"] == "SP" for r in rows)
    assert {r["TYPE"] for r in rows} >= {"PI", "PP", "JD", "BR"}


def test_a_dollar_customer_a_contra_and_a_cleared_year(company: DemoCompany) -> None:
    dollars = [i for i in company.invoices if i.figures.currency == "USD"]
    assert sorted(i.intended_status for i in dollars) == ["Paid", "Part Paid", "Unpaid"]
    [revalued] = [i for i in dollars if i.figures.exchange_adjustment > 0]
    assert revalued.intended_status == "Paid"
    assert revalued.figures.credited == 0, "a revaluation is not a credit"
    rows = company.exports[-1]
    reval = [r for r in rows.header if r["INV_REF"] == "REVAL"]
    assert [(r["TYPE"], r["CURRENCY"], r["FOREIGN_GROSS_AMOUNT"]) for r in reval] == [
        ("SC", "2", "0")
    ]
    contra = {r["SPLIT_NUMBER"] for r in rows.split if r["NOMINAL_CODE"] == "1230"}
    assert {r["TYPE"] for r in rows.header if r["TRAN_NUMBER"] in contra} == {"SR", "PP"}
    assert company.cleared_invoices
    cleared = {r["INV_REF"] for r in rows.history_header if r["TYPE"] == "SI"}
    assert cleared == set(company.cleared_invoices)
    assert not cleared & {r["INV_REF"] for r in rows.header}, "only in AUDIT_HISTORY_*"


def test_rejects_a_single_customer() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        generate_company(customers=1)


# --- the command ----------------------------------------------------------------------------


def test_demo_without_keys_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGERLINK_EXPORTER_SECRET", raising=False)
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert " error: no webhook secret: pass --secret, set LEDGERLINK_EXPORTER_SECRET" in line
