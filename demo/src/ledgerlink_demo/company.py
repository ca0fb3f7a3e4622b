"""A made-up but realistic Sage 50 company, written as the three audit-trail CSV exports.

`generate_company` is pure and deterministic for a seed. It returns two exports of the same
company, in the order they are pushed: as it stands at first, and later, after edits
(the same TRAN_NUMBER with changed amounts), deletions (DELETED_FLAG=1, their allocations left
as zero-amount rows), allocations made later and write-offs.

The numbering is Sage's: every line has its own number, a header's TRAN_NUMBER is its first
line's, and headers are counted apart in HEADER_NUMBER, so the two drift from the first
multi-line invoice on (the very first one has two lines). Receipts may have several lines,
each settling another invoice, and allocations by receipt are also written from the other side
(mirror rows), as Sage does on real companies.

One more customer keeps its Sage record in US dollars (Foreign Trader): an unpaid invoice,
one part paid, and one paid in full at another rate, which Sage's automatic revaluation (a
REVAL SC on the exchange variance nominal 7906) clears in pounds. A contra entry (an SR on the
contra bank account 1230, with the supplier side's PP) settles another customer's invoice. A
cleared year (2024: invoices paid in full, then Sage's Clear Audit Trail) is only in the
AUDIT_HISTORY_* tables. Beside the audit-trail files the export has CURRENCY.csv.

With every invoice it returns what Sage's own ledger says of it once the second export is in:
the status under the default rules (write-offs told apart) and the paid / discounted /
written-off / credited / outstanding figures in the invoice's currency (and the exchange
adjustment in pounds), taken from what the demo posted, not from the service's rules, so an
end-to-end test can hold the service to them.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

UNPAID = "Unpaid"
PART_PAID = "Part Paid"
PAID = "Paid"
WRITTEN_OFF = "Written Off"
PAID_WRITTEN_OFF = "Paid/Written Off"
STATUSES = (UNPAID, PART_PAID, PAID, WRITTEN_OFF, PAID_WRITTEN_OFF)

HEADER_FIELDS = (
    "TRAN_NUMBER",
    "HEADER_NUMBER",
    "ITEM_COUNT",
    "TYPE",
    "ACCOUNT_REF",
    "INV_REF",
    "DATE",
    "DUE_DATE",
    "DETAILS",
    "NET_AMOUNT",
    "TAX_AMOUNT",
    "GROSS_AMOUNT",
    "AMOUNT_PAID",
    "OUTSTANDING",
    "PAID_FLAG",
    "DELETED_FLAG",
    "FOREIGN_NET_AMOUNT",
    "FOREIGN_TAX_AMOUNT",
    "FOREIGN_GROSS_AMOUNT",
    "FOREIGN_OUTSTANDING",
    "CURRENCY",
    "FOREIGN_RATE",
    "REVAL_TRANSACTION_FLAG",
    "RECORD_MODIFY_DATE",
)
SPLIT_FIELDS = (
    "TRAN_NUMBER",
    "SPLIT_NUMBER",
    "HEADER_NUMBER",
    "TYPE",
    "ACCOUNT_REF",
    "NOMINAL_CODE",
    "DETAILS",
    "TAX_CODE",
    "NET_AMOUNT",
    "TAX_AMOUNT",
    "GROSS_AMOUNT",
    "DELETED_FLAG",
    "RECORD_MODIFY_DATE",
)
USAGE_FIELDS = (
    "USAGE_NUMBER",
    "SPLIT_NUMBER",
    "SPLIT_CROSSREF",
    "TYPE",
    "REFERENCE",
    "AMOUNT",
    "FOREIGN_AMOUNT",
    "DATE",
    "DELETED_FLAG",
    "RECORD_MODIFY_DATE",
)
CURRENCY_FIELDS = ("NUMBER", "CODE", "NAME", "BASE_CURRENCY", "RATE")
FILE_NAMES = ("AUDIT_HEADER.csv", "AUDIT_SPLIT.csv", "AUDIT_USAGE.csv")
HISTORY_FILE_NAMES = (
    "AUDIT_HISTORY_HEADER.csv",
    "AUDIT_HISTORY_SPLIT.csv",
    "AUDIT_HISTORY_USAGE.csv",
)
CURRENCY_FILE_NAME = "CURRENCY.csv"
# Sage's CURRENCY table as a UK company sets it up: 1 is the base.
_CURRENCIES = {"GBP": (1, "Pound Sterling"), "USD": (2, "US Dollar"), "EUR": (3, "Euro")}
_RATES = {"GBP": Decimal(1), "USD": Decimal("1.28"), "EUR": Decimal("1.15")}

Row = dict[str, str]

_CENT = Decimal("0.01")
_ZERO = Decimal(0)
_VAT = Decimal("0.20")
_START = dt.date(2025, 1, 6)
_LATER = dt.date(2025, 4, 14)  # when the second export's changes happen
_CLEARED_YEAR = dt.date(2024, 3, 4)  # invoices of a year Clear Audit Trail has since cleared
# Dollars per pound: the US customer's invoices, and the day its last receipt came in.
_INVOICE_RATE = Decimal("1.25")
_RECEIPT_RATE = Decimal("1.28")
# Sage signs amounts by transaction type; the credit side is written negative.
_NEGATIVE_TYPES = frozenset({"SC", "SR", "SA", "SD", "PP"})
_NAMES = (
    "Acorn",
    "Bramble",
    "Cobalt",
    "Dunmore",
    "Elmfield",
    "Foxglove",
    "Granite",
    "Harbour",
    "Ironbridge",
    "Juniper",
    "Kestrel",
    "Larch",
    "Marlow",
    "Northgate",
    "Oakridge",
    "Pennine",
    "Quarry",
    "Redwood",
    "Saltash",
    "Thistle",
)


@dataclass(frozen=True)
class ExportRows:
    header: tuple[Row, ...]
    split: tuple[Row, ...]
    usage: tuple[Row, ...]
    # What Sage's Clear Audit Trail moved to AUDIT_HISTORY_HEADER / _SPLIT / _USAGE.
    history_header: tuple[Row, ...] = ()
    history_split: tuple[Row, ...] = ()
    history_usage: tuple[Row, ...] = ()


@dataclass(frozen=True)
class Figures:
    """An invoice as Sage's ledger has it: what settled it, by kind, and what is left, in the
    invoice's currency; Sage's revaluations (in pounds) beside them."""

    gross: Decimal
    paid: Decimal
    discounted: Decimal
    written_off: Decimal
    credited: Decimal
    currency: str = "GBP"
    exchange_adjustment: Decimal = Decimal(0)

    @property
    def outstanding(self) -> Decimal:
        return self.gross - self.paid - self.discounted - self.written_off - self.credited


@dataclass(frozen=True)
class DemoInvoice:
    invoice_number: str
    account_ref: str
    tran_number: int
    scenario: str
    intended_status: str
    figures: Figures


@dataclass(frozen=True)
class DemoCompany:
    exports: tuple[ExportRows, ...]
    invoices: tuple[DemoInvoice, ...]
    # Small-overpayment write-off SIs: SI postings that must never become invoices.
    write_off_invoices: tuple[int, ...]
    # Invoice numbers entered by mistake and deleted in a later export.
    deleted_invoices: tuple[str, ...]
    # Invoice numbers only in the AUDIT_HISTORY_* tables (a cleared year).
    cleared_invoices: tuple[str, ...] = ()

    def intended_statuses(self) -> dict[str, str]:
        return {invoice.invoice_number: invoice.intended_status for invoice in self.invoices}


def generate_company(customers: int = 50, seed: int = 1) -> DemoCompany:
    if customers < 2:
        raise ValueError("the demo company needs at least 2 customers")
    ledger = _Ledger(random.Random(seed))
    outcomes: list[tuple[_Txn, str, str]] = []
    accounts = [_account_ref(i) for i in range(customers)]
    # The first customer's whole balance is written off, so it gets nothing else.
    outcomes += _tagged(
        "account_balance_write_off", _account_balance_write_off(ledger, accounts[0])
    )
    plan = _scenario_plan(ledger.rng, accounts[1:])
    for account, scenario in plan:
        outcomes += _tagged(scenario, _SCENARIOS[scenario](ledger, account))
    outcomes += _tagged("foreign_currency", _foreign_customer(ledger, f"YAN{customers + 1:03d}"))
    _supplier_and_bank_noise(ledger, max(1, customers // 10))
    first = ledger.render()
    ledger.run_later()
    return DemoCompany(
        exports=(first, ledger.render()),
        invoices=tuple(
            DemoInvoice(
                txn.reference, txn.account, txn.number, scenario, status, ledger.figures(txn)
            )
            for txn, status, scenario in outcomes
        ),
        write_off_invoices=tuple(ledger.write_off_invoices),
        deleted_invoices=tuple(ledger.deleted_invoices),
        cleared_invoices=tuple(t.reference for t, _, _ in outcomes if t.cleared),
    )


def write_export(rows: ExportRows, directory: Path) -> tuple[Path, Path, Path]:
    """Writes the files as Sage's CSV export names them (the three audit-trail tables, their
    AUDIT_HISTORY_* copies and CURRENCY.csv beside them); returns the first three's paths."""
    directory.mkdir(parents=True, exist_ok=True)
    header, split, usage = (directory / name for name in FILE_NAMES)
    history_header, history_split, history_usage = (directory / name for name in HISTORY_FILE_NAMES)
    currencies = [
        {"NUMBER": str(n), "CODE": code, "NAME": name, "BASE_CURRENCY": str(int(n == 1))}
        | {"RATE": _double("", _RATES[code])}
        for code, (n, name) in _CURRENCIES.items()
    ]
    for path, fields, table in (
        (header, HEADER_FIELDS, rows.header),
        (split, SPLIT_FIELDS, rows.split),
        (usage, USAGE_FIELDS, rows.usage),
        (history_header, HEADER_FIELDS, rows.history_header),
        (history_split, SPLIT_FIELDS, rows.history_split),
        (history_usage, USAGE_FIELDS, rows.history_usage),
        (directory / CURRENCY_FILE_NAME, CURRENCY_FIELDS, currencies),
    ):
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(table)
    return header, split, usage


# --- the ledger the scenarios post to -----------------------------------------------------


@dataclass
class _Split:
    number: int
    nominal: str
    tax_code: str
    net: Decimal
    tax: Decimal
    allocated: Decimal = Decimal(0)
    # In the transaction's currency, when that is not pounds.
    foreign_net: Decimal | None = None

    @property
    def gross(self) -> Decimal:
        return self.net + self.tax

    @property
    def foreign_gross(self) -> Decimal:
        return self.gross if self.foreign_net is None else self.foreign_net


@dataclass
class _Txn:
    header_number: int
    type: str
    account: str
    reference: str
    date: dt.date
    details: str
    splits: list[_Split]
    modified: dt.datetime
    deleted: bool = False
    # An SC that writes a debt off (as opposed to a credit note).
    write_off: bool = False
    currency: str = "GBP"
    rate: Decimal = Decimal(1)
    # Sage's automatic exchange revaluation (REVAL).
    reval: bool = False
    # Moved to the AUDIT_HISTORY_* tables by Clear Audit Trail.
    cleared: bool = False

    @property
    def number(self) -> int:
        """TRAN_NUMBER: Sage numbers a transaction after its first line."""
        return self.splits[0].number

    @property
    def gross(self) -> Decimal:
        return sum((split.gross for split in self.splits), Decimal(0))

    @property
    def foreign_gross(self) -> Decimal:
        return sum((split.foreign_gross for split in self.splits), Decimal(0))


@dataclass
class _Usage:
    number: int
    invoice: _Txn
    invoice_split: _Split
    settling: _Txn
    settling_split: _Split
    amount: Decimal
    date: dt.date
    modified: dt.datetime
    deleted: bool = False
    # In the settling transaction's currency, when that is not pounds.
    foreign_amount: Decimal | None = None

    @property
    def foreign(self) -> Decimal:
        return self.amount if self.foreign_amount is None else self.foreign_amount

    @property
    def live(self) -> bool:
        return not (self.deleted or self.settling.deleted or self.invoice.deleted)


@dataclass
class _Ledger:
    rng: random.Random
    txns: list[_Txn] = field(default_factory=list)
    usages: list[_Usage] = field(default_factory=list)
    write_off_invoices: list[int] = field(default_factory=list)
    deleted_invoices: list[str] = field(default_factory=list)
    _later: list[Callable[[], None]] = field(default_factory=list)
    _later_phase: bool = False
    _next_header: int = 1
    _next_split: int = 1
    _next_usage: int = 1
    _next_invoice: int = 10001
    _tick: int = 0

    # time

    def later(self, change: Callable[[], None]) -> None:
        self._later.append(change)

    def run_later(self) -> None:
        self._later_phase = True
        for change in self._later:
            change()

    def day_after(self, on: dt.date, low: int = 5, high: int = 40) -> dt.date:
        return _LATER if self._later_phase else on + dt.timedelta(days=self.rng.randint(low, high))

    def _stamp(self, on: dt.date) -> dt.datetime:
        self._tick += 1
        day = _LATER if self._later_phase else on
        return dt.datetime.combine(day, dt.time(9)) + dt.timedelta(minutes=self._tick % 480)

    # amounts

    def amount(self, low: int = 40_00, high: int = 4_000_00) -> Decimal:
        return Decimal(self.rng.randint(low, high)) / 100

    def share(self, total: Decimal, low_percent: int, high_percent: int) -> Decimal:
        percent = Decimal(self.rng.randint(low_percent, high_percent)) / 100
        return max(_CENT, min(total - _CENT, _money(total * percent)))

    # postings

    def invoice(self, account: str, *, lines: int | None = None, start: dt.date = _START) -> _Txn:
        count = lines or self.rng.choice((1, 1, 2, 3))
        nominals = ("4000", "4010", "4020")
        splits = [self._split(nominals[i % 3], "T1", self.amount()) for i in range(count)]
        on = start + dt.timedelta(days=self.rng.randint(0, 60))
        return self._post("SI", account, self._invoice_number(), on, "Goods and services", splits)

    def dollar_invoice(self, account: str) -> _Txn:
        """Export services, zero-rated (T0), invoiced in dollars at the day's rate."""
        dollars = self.amount()
        split = _Split(self._take_split(), "4000", "T0", _money(dollars / _INVOICE_RATE), _ZERO)
        split.foreign_net = dollars
        on = _START + dt.timedelta(days=self.rng.randint(0, 60))
        txn = self._post("SI", account, self._invoice_number(), on, "Consultancy (USD)", [split])
        txn.currency, txn.rate = "USD", _INVOICE_RATE
        return txn

    def dollar_receipt(self, invoice: _Txn, dollars: Decimal, rate: Decimal) -> None:
        """Dollars in at `rate`, into the dollar bank account (1210). When they bring fewer
        pounds than the invoice booked them at, Sage revalues the difference: an SC, reference
        REVAL, on the exchange variance nominal 7906, allocated to the invoice (no dollars)."""
        on = self.day_after(invoice.date)
        receipt = self._foreign_post(
            "SR", invoice, "BACS", on, "Sales Receipt", "1210", dollars, rate
        )
        split = invoice.splits[0]
        self._use(invoice, split, receipt, receipt.gross, foreign=dollars)
        shortfall = _money(dollars / invoice.rate) - receipt.gross
        if shortfall > 0:
            details = f"Currency Reval {shortfall} to SI {invoice.number}"
            reval = self._foreign_post("SC", invoice, "REVAL", on, details, "7906", _ZERO, rate)
            reval.splits[0].net = shortfall
            reval.reval = True
            self._use(invoice, split, reval, shortfall, foreign=_ZERO)

    def _foreign_post(
        self,
        kind: str,
        invoice: _Txn,
        reference: str,
        on: dt.date,
        details: str,
        nominal: str,
        dollars: Decimal,
        rate: Decimal,
    ) -> _Txn:
        split = _Split(self._take_split(), nominal, "T9", _money(dollars / rate), _ZERO)
        split.foreign_net = dollars
        txn = self._post(kind, invoice.account, reference, on, details, [split])
        txn.currency, txn.rate = invoice.currency, rate
        return txn

    def _invoice_number(self) -> str:
        self._next_invoice += 1
        return str(self._next_invoice - 1)

    def duplicate(self, invoice: _Txn) -> _Txn:
        splits = [self._split(s.nominal, s.tax_code, s.net) for s in invoice.splits]
        return self._post(
            "SI", invoice.account, self._invoice_number(), invoice.date, invoice.details, splits
        )

    def post(
        self,
        kind: str,
        account: str,
        reference: str,
        on: dt.date,
        details: str,
        nominal: str,
        gross: Decimal,
        tax_code: str = "T9",
    ) -> _Txn:
        # T1 amounts include VAT at 20%; T9 is outside the scope of VAT (bank, write-offs).
        net = _money(gross / (1 + _VAT)) if tax_code == "T1" else gross
        split = _Split(self._take_split(), nominal, tax_code, net, gross - net)
        return self._post(kind, account, reference, on, details, [split])

    def settle(
        self,
        invoice: _Txn,
        kind: str,
        amount: Decimal,
        *,
        reference: str,
        details: str,
        nominal: str,
        tax_code: str = "T9",
        on: dt.date | None = None,
        write_off: bool = False,
    ) -> _Txn:
        on = on or self.day_after(invoice.date)
        settling = self.post(
            kind, invoice.account, reference, on, details, nominal, amount, tax_code
        )
        settling.write_off = write_off
        self.allocate(invoice, settling, amount)
        return settling

    def receive(self, invoice: _Txn, amount: Decimal, *, on: dt.date | None = None) -> _Txn:
        return self.settle(
            invoice, "SR", amount, reference="BACS", details="Sales Receipt", nominal="1200", on=on
        )

    def write_off(self, invoice: _Txn, amount: Decimal) -> _Txn:
        """What the wizard's "write off transactions" posts: one SC per invoice."""
        return self.settle(
            invoice,
            "SC",
            amount,
            reference=invoice.reference,
            details="Bad Debt Write Off",
            nominal="8100",
            write_off=True,
        )

    def allocate(
        self, invoice: _Txn, settling: _Txn, amount: Decimal, line: _Split | None = None
    ) -> None:
        """Spreads the amount over the invoice's splits, as Sage allocates split by split."""
        remaining = amount
        for index, split in enumerate(invoice.splits):
            last = index == len(invoice.splits) - 1
            take = remaining if last else min(remaining, split.gross - split.allocated)
            if take <= 0:
                continue
            split.allocated += take
            remaining -= take
            self._use(invoice, split, settling, take, line)

    def receive_many(self, invoices: Sequence[_Txn]) -> _Txn:
        """One receipt for several invoices: a line per invoice, each settling its own."""
        on = max(invoice.date for invoice in invoices) + dt.timedelta(days=10)
        lines = [
            _Split(self._take_split(), "1200", "T9", inv.gross, Decimal(0)) for inv in invoices
        ]
        receipt = self._post("SR", invoices[0].account, "BACS", on, "Sales Receipt", lines)
        for invoice, line in zip(invoices, lines, strict=True):
            self.allocate(invoice, receipt, invoice.gross, line)
        return receipt

    def figures(self, invoice: _Txn) -> Figures:
        sums: dict[str, Decimal] = defaultdict(Decimal)
        for usage in self.usages:
            if usage.invoice is invoice and usage.live:
                kind = _category(usage.settling)
                # A revaluation moves pounds only; everything else counts in the invoice's
                # own currency.
                sums[kind] += usage.amount if kind == "exchange_adjustment" else usage.foreign
        return Figures(
            gross=invoice.foreign_gross,
            paid=sums["paid"] - sums["refund"],
            discounted=sums["discounted"],
            written_off=sums["written_off"],
            credited=sums["credited"],
            currency=invoice.currency,
            exchange_adjustment=sums["exchange_adjustment"],
        )

    def refund(self, invoice: _Txn, amount: Decimal) -> _Txn:
        on = self.day_after(invoice.date, 45, 60)
        refund = self.post("SP", invoice.account, "REFUND", on, "Customer refund", "1200", amount)
        self._use(invoice, invoice.splits[0], refund, amount)
        return refund

    def settled(self, invoice: _Txn) -> Decimal:
        return sum((u.amount for u in self.usages if u.invoice is invoice and u.live), Decimal(0))

    # changes for the later export

    def edit_net(self, txn: _Txn, net: Decimal) -> None:
        split = txn.splits[0]
        split.net, split.tax = net, _money(net * _VAT)
        txn.modified = self._stamp(txn.date)

    def edit_usage_amounts(self, settling: _Txn, amount: Decimal) -> None:
        split = settling.splits[0]
        split.net, split.tax = amount, Decimal(0)
        settling.modified = self._stamp(settling.date)
        for usage in self.usages:
            if usage.settling is settling:
                usage.amount = amount
                usage.modified = settling.modified
                usage.invoice.modified = settling.modified

    def delete(self, txn: _Txn) -> None:
        """Sage deletes a transaction by flagging it; its allocations are undone, which may
        leave the usage row behind with a zero amount rather than flag it."""
        txn.deleted = True
        txn.modified = self._stamp(txn.date)
        touched = [usage for usage in self.usages if txn in (usage.settling, usage.invoice)]
        for index, usage in enumerate(touched):
            if index == 0:
                usage.amount = Decimal(0)
            else:
                usage.deleted = True
            usage.modified = txn.modified
            usage.invoice.modified = usage.settling.modified = txn.modified

    # internals

    def _split(self, nominal: str, tax_code: str, net: Decimal) -> _Split:
        return _Split(self._take_split(), nominal, tax_code, net, _money(net * _VAT))

    def _take_split(self) -> int:
        self._next_split += 1
        return self._next_split - 1

    def _post(
        self,
        kind: str,
        account: str,
        reference: str,
        on: dt.date,
        details: str,
        splits: list[_Split],
    ) -> _Txn:
        txn = _Txn(
            self._next_header, kind, account, reference, on, details, splits, self._stamp(on)
        )
        self._next_header += 1
        self.txns.append(txn)
        return txn

    def _use(
        self,
        invoice: _Txn,
        split: _Split,
        settling: _Txn,
        amount: Decimal,
        line: _Split | None = None,
        foreign: Decimal | None = None,
    ) -> None:
        stamp = self._stamp(settling.date)
        settling_split = line or settling.splits[0]
        self.usages.append(
            _Usage(
                self._next_usage,
                invoice,
                split,
                settling,
                settling_split,
                amount,
                settling.date,
                stamp,
                foreign_amount=foreign,
            )
        )
        self._next_usage += 1
        invoice.modified = settling.modified = stamp

    # the CSV rows

    def render(self) -> ExportRows:
        live = [txn for txn in self.txns if not txn.cleared]
        old = [txn for txn in self.txns if txn.cleared]
        # Clear Audit Trail moves a transaction with everything allocated to it.
        old_usages = [u for u in self.usages if u.invoice.cleared]
        live_usages = [u for u in self.usages if not u.invoice.cleared]
        return ExportRows(
            header=tuple(self._header_row(txn) for txn in live),
            split=tuple(self._split_row(txn, s) for txn in live for s in txn.splits),
            usage=tuple(row for usage in live_usages for row in self._usage_rows(usage)),
            history_header=tuple(self._history_header_row(txn) for txn in old),
            history_split=tuple(self._split_row(txn, s) for txn in old for s in txn.splits),
            history_usage=tuple(row for usage in old_usages for row in self._usage_rows(usage)),
        )

    def _outstanding(self, txn: _Txn, *, foreign: bool = False) -> Decimal:
        """Sage's OUTSTANDING (or FOREIGN_OUTSTANDING): a revaluation clears pounds only."""

        def amount(usage: _Usage) -> Decimal:
            return (
                (Decimal(0) if usage.settling.reval else usage.foreign) if foreign else usage.amount
            )

        live = [u for u in self.usages if u.live]
        if txn.type != "SI":
            used = sum((amount(u) for u in live if u.settling is txn), Decimal(0))
            return (txn.foreign_gross if foreign else txn.gross) - used
        balance = txn.foreign_gross if foreign else txn.gross
        for usage in live:
            if usage.invoice is txn:
                # A refund pays money back out: the invoice is owed that much again.
                balance += amount(usage) if usage.settling.type == "SP" else -amount(usage)
        return balance

    def _history_header_row(self, txn: _Txn) -> Row:
        """AUDIT_HISTORY_HEADER has no OUTSTANDING columns (Zynk's schema page)."""
        row = self._header_row(txn)
        row["OUTSTANDING"] = row["FOREIGN_OUTSTANDING"] = ""
        return row

    def _header_row(self, txn: _Txn) -> Row:
        outstanding = self._outstanding(txn)
        net = sum((s.net for s in txn.splits), Decimal(0))
        tax = sum((s.tax for s in txn.splits), Decimal(0))
        foreign_net = sum(
            (s.net if s.foreign_net is None else s.foreign_net for s in txn.splits), Decimal(0)
        )
        foreign_tax = Decimal(0) if txn.currency != "GBP" else tax
        return {
            "TRAN_NUMBER": str(txn.number),
            "HEADER_NUMBER": str(txn.header_number),
            "ITEM_COUNT": str(len(txn.splits)),
            "TYPE": txn.type,
            "ACCOUNT_REF": txn.account,
            "INV_REF": txn.reference,
            "DATE": _sage_date(txn.date),
            "DUE_DATE": _sage_date(txn.date + dt.timedelta(days=30)) if txn.type == "SI" else "",
            "DETAILS": txn.details,
            "NET_AMOUNT": _double(txn.type, net),
            "TAX_AMOUNT": _double(txn.type, tax),
            "GROSS_AMOUNT": _double(txn.type, net + tax),
            "AMOUNT_PAID": _double("", txn.gross - outstanding),
            "OUTSTANDING": _double("", outstanding),
            "PAID_FLAG": "Y" if outstanding <= 0 else "N",
            "DELETED_FLAG": "1" if txn.deleted else "0",
            "FOREIGN_NET_AMOUNT": _double(txn.type, foreign_net),
            "FOREIGN_TAX_AMOUNT": _double(txn.type, foreign_tax),
            "FOREIGN_GROSS_AMOUNT": _double(txn.type, foreign_net + foreign_tax),
            "FOREIGN_OUTSTANDING": _double("", self._outstanding(txn, foreign=True)),
            "CURRENCY": str(_CURRENCIES[txn.currency][0]),
            "FOREIGN_RATE": _double("", txn.rate),
            "REVAL_TRANSACTION_FLAG": "1" if txn.reval else "0",
            "RECORD_MODIFY_DATE": _sage_stamp(txn.modified),
        }

    def _split_row(self, txn: _Txn, split: _Split) -> Row:
        return {
            "TRAN_NUMBER": str(split.number),
            "SPLIT_NUMBER": str(split.number),
            "HEADER_NUMBER": str(txn.header_number),
            "TYPE": txn.type,
            "ACCOUNT_REF": txn.account,
            "NOMINAL_CODE": split.nominal,
            "DETAILS": txn.details,
            "TAX_CODE": split.tax_code,
            "NET_AMOUNT": _double(txn.type, split.net),
            "TAX_AMOUNT": _double(txn.type, split.tax),
            "GROSS_AMOUNT": _double(txn.type, split.gross),
            "DELETED_FLAG": "1" if txn.deleted else "0",
            "RECORD_MODIFY_DATE": _sage_stamp(txn.modified),
        }

    def _usage_rows(self, usage: _Usage) -> list[Row]:
        """The row, and for a receipt its mirror: the same allocation stored from the
        receipt's side, which must not count twice."""
        row = {
            "USAGE_NUMBER": str(usage.number * 2 - 1),
            "SPLIT_NUMBER": str(usage.invoice_split.number),
            "SPLIT_CROSSREF": str(usage.settling_split.number),
            "TYPE": usage.settling.type,
            "REFERENCE": usage.settling.reference,
            "AMOUNT": _double("", usage.amount),
            "FOREIGN_AMOUNT": _double("", usage.foreign),
            "DATE": _sage_date(usage.date),
            "DELETED_FLAG": "1" if usage.deleted else "0",
            "RECORD_MODIFY_DATE": _sage_stamp(usage.modified),
        }
        if usage.settling.type != "SR":
            return [row]
        mirror = {
            **row,
            "USAGE_NUMBER": str(usage.number * 2),
            "SPLIT_NUMBER": row["SPLIT_CROSSREF"],
            "SPLIT_CROSSREF": row["SPLIT_NUMBER"],
            "TYPE": usage.invoice.type,
            "REFERENCE": usage.invoice.reference,
        }
        return [row, mirror]


# --- scenarios: each posts one situation and says how each invoice should end -------------

_Outcome = tuple[_Txn, str]
_Scenario = Callable[[_Ledger, str], list[_Outcome]]


def _unpaid(ledger: _Ledger, account: str) -> list[_Outcome]:
    return [(ledger.invoice(account), UNPAID)]


def _paid_in_full(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    ledger.receive(invoice, invoice.gross)
    return [(invoice, PAID)]


def _part_paid(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    ledger.receive(invoice, ledger.share(invoice.gross, 20, 80))
    return [(invoice, PART_PAID)]


def _paid_with_discount(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    discount = _money(invoice.gross * Decimal("0.025"))
    on = ledger.day_after(invoice.date)
    ledger.settle(
        invoice,
        "SD",
        discount,
        reference="DISC",
        details="Prompt payment discount",
        nominal="4009",
        on=on,
    )
    ledger.receive(invoice, invoice.gross - discount, on=on)
    return [(invoice, PAID)]


def _credit_note(ledger: _Ledger, invoice: _Txn, amount: Decimal) -> _Txn:
    return ledger.settle(
        invoice,
        "SC",
        amount,
        reference=f"CN{invoice.reference}",
        details="Credit note - goods returned",
        nominal="4000",
        tax_code="T1",
    )


def _credit_note_in_full(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    _credit_note(ledger, invoice, invoice.gross)
    return [(invoice, PAID)]


def _part_credited(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    _credit_note(ledger, invoice, ledger.share(invoice.gross, 10, 50))
    return [(invoice, PART_PAID)]


def _write_off_per_invoice(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    ledger.write_off(invoice, invoice.gross)
    return [(invoice, WRITTEN_OFF)]


def _part_paid_then_written_off(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    paid = ledger.share(invoice.gross, 30, 70)
    ledger.receive(invoice, paid)
    ledger.write_off(invoice, invoice.gross - paid)
    return [(invoice, PAID_WRITTEN_OFF)]


def _credited_then_written_off(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    credited = ledger.share(invoice.gross, 10, 40)
    _credit_note(ledger, invoice, credited)
    ledger.write_off(invoice, invoice.gross - credited)
    return [(invoice, PAID_WRITTEN_OFF)]


def _written_off_by_hand(
    ledger: _Ledger, account: str, *, reference: str, details: str, nominal: str, tax_code: str
) -> list[_Outcome]:
    """An SC entered by hand for the whole invoice; `reference` may name the invoice."""
    invoice = ledger.invoice(account)
    ledger.settle(
        invoice,
        "SC",
        invoice.gross,
        reference=reference.format(invoice=invoice.reference),
        details=details,
        nominal=nominal,
        tax_code=tax_code,
        write_off=True,
    )
    return [(invoice, WRITTEN_OFF)]


# A batch credit note by hand: bad-debt nominal, VAT reclaimed, free-text details.
_manual_write_off = functools.partial(
    _written_off_by_hand,
    reference="BADDBT",
    details="Customer dissolved, balance not recoverable",
    nominal="8105",
    tax_code="T1",
)
# Posted to sales by mistake: only the details say it is a write-off.
_write_off_by_details = functools.partial(
    _written_off_by_hand,
    reference="WO{invoice}",
    details="Write off - balance too small to chase",
    nominal="4000",
    tax_code="T9",
)


def _small_overpayment(ledger: _Ledger, account: str) -> list[_Outcome]:
    """Paid a little too much; the wizard writes the excess off with an SI, not an invoice."""
    invoice = ledger.invoice(account)
    excess = ledger.amount(1, 4_99)
    receipt = ledger.post(
        "SR",
        account,
        "BACS",
        ledger.day_after(invoice.date),
        "Sales Receipt",
        "1200",
        invoice.gross + excess,
    )
    ledger.allocate(invoice, receipt, invoice.gross)
    write_off = ledger.post(
        "SI",
        account,
        "BADDBT",
        ledger.day_after(receipt.date),
        "Bad Debt Write Off",
        "8100",
        excess,
    )
    ledger.allocate(write_off, receipt, excess)
    ledger.write_off_invoices.append(write_off.number)
    return [(invoice, PAID)]


def _refund_after_credit(ledger: _Ledger, account: str) -> list[_Outcome]:
    """Paid, then partly credited, and the credit paid back to the customer."""
    invoice = ledger.invoice(account)
    ledger.receive(invoice, invoice.gross)
    credited = ledger.share(invoice.gross, 10, 30)
    _credit_note(ledger, invoice, credited)
    ledger.refund(invoice, credited)
    return [(invoice, PAID)]


def _one_receipt_for_several(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoices = [ledger.invoice(account) for _ in range(ledger.rng.randint(2, 3))]
    ledger.receive_many(invoices)
    return [(invoice, PAID) for invoice in invoices]


def _edited_invoice_then_paid(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account, lines=1)

    def correct_and_pay() -> None:
        ledger.edit_net(invoice, ledger.share(invoice.splits[0].net, 70, 95))
        ledger.receive(invoice, invoice.gross)

    ledger.later(correct_and_pay)
    return [(invoice, PAID)]


def _edited_receipt(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account, lines=1)
    receipt = ledger.receive(invoice, invoice.gross)
    ledger.later(lambda: ledger.edit_usage_amounts(receipt, ledger.share(invoice.gross, 40, 70)))
    return [(invoice, PART_PAID)]


def _deleted_receipt(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account, lines=2)
    receipt = ledger.receive(invoice, invoice.gross)
    ledger.later(lambda: ledger.delete(receipt))
    return [(invoice, UNPAID)]


def _payment_on_account_allocated_later(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    on = ledger.day_after(invoice.date)
    payment = ledger.post(
        "SA", account, "On account", on, "Payment on Account", "1200", invoice.gross
    )
    ledger.later(lambda: ledger.allocate(invoice, payment, invoice.gross))
    return [(invoice, PAID)]


def _written_off_later(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    paid = ledger.share(invoice.gross, 20, 60)
    ledger.receive(invoice, paid)

    def write_off_the_rest() -> None:
        ledger.write_off(invoice, invoice.gross - paid)

    ledger.later(write_off_the_rest)
    return [(invoice, PAID_WRITTEN_OFF)]


def _duplicate_invoice_deleted(ledger: _Ledger, account: str) -> list[_Outcome]:
    invoice = ledger.invoice(account)
    duplicate = ledger.duplicate(invoice)
    ledger.deleted_invoices.append(duplicate.reference)
    ledger.later(lambda: ledger.delete(duplicate))
    return [(invoice, UNPAID)]


def _account_balance_write_off(ledger: _Ledger, account: str) -> list[_Outcome]:
    """The wizard's "write off account balance": credits and payments on account are
    allocated first, then one SC with reference BADDBT covers every invoice still open."""
    paid = ledger.invoice(account, lines=2)
    ledger.receive(paid, paid.gross)
    on_account = ledger.invoice(account)
    ledger.settle(
        on_account,
        "SA",
        ledger.share(on_account.gross, 20, 60),
        reference="On account",
        details="Payment on Account",
        nominal="1200",
    )
    credited = ledger.invoice(account)
    open_invoices = [on_account, credited, ledger.invoice(account), ledger.invoice(account)]

    def write_off_balance() -> None:
        _credit_note(ledger, credited, ledger.share(credited.gross, 10, 40))
        remainders = [invoice.gross - ledger.settled(invoice) for invoice in open_invoices]
        total = sum(remainders, Decimal(0))
        baddbt = ledger.post("SC", account, "BADDBT", _LATER, "Bad Debt Write Off", "8100", total)
        baddbt.write_off = True
        for invoice, remainder in zip(open_invoices, remainders, strict=True):
            ledger.allocate(invoice, baddbt, remainder)

    ledger.later(write_off_balance)
    return [
        (paid, PAID),
        (on_account, PAID_WRITTEN_OFF),
        (credited, PAID_WRITTEN_OFF),
        (open_invoices[2], WRITTEN_OFF),
        (open_invoices[3], WRITTEN_OFF),
    ]


def _foreign_customer(ledger: _Ledger, account: str) -> list[_Outcome]:
    """A customer whose Sage record is in US dollars: one invoice unpaid, one part paid at the
    invoice's rate, one paid in full at another rate (its REVAL SC allocated to it)."""
    unpaid, part, paid = (ledger.dollar_invoice(account) for _ in range(3))
    ledger.dollar_receipt(part, ledger.share(part.foreign_gross, 20, 80), _INVOICE_RATE)
    ledger.dollar_receipt(paid, paid.foreign_gross, _RECEIPT_RATE)
    return [(unpaid, UNPAID), (part, PART_PAID), (paid, PAID)]


def _contra(ledger: _Ledger, account: str) -> list[_Outcome]:
    """The customer is also a supplier: Sage's contra entry posts an SR to the customer and a
    PP to the supplier, both on the contra bank account (1230); the SR pays like any receipt."""
    invoice = ledger.invoice(account)
    amount = ledger.share(invoice.gross, 30, 70)
    on = ledger.day_after(invoice.date)
    bill = ledger.post(
        "PI", account, f"PO{invoice.reference}", invoice.date, "Haulage", "5000", amount
    )
    ledger.settle(
        invoice, "SR", amount, reference="Contra", details="Contra Entry", nominal="1230", on=on
    )
    payment = ledger.post("PP", account, "Contra", on, "Contra Entry", "1230", amount)
    ledger.allocate(bill, payment, amount)
    return [(invoice, PART_PAID)]


def _cleared_year(ledger: _Ledger, account: str) -> list[_Outcome]:
    """Paid in full in a year Sage's Clear Audit Trail has since cleared: the invoice and its
    receipt are only in the AUDIT_HISTORY_* tables."""
    invoice = ledger.invoice(account, start=_CLEARED_YEAR)
    receipt = ledger.receive(invoice, invoice.gross)
    invoice.cleared = receipt.cleared = True
    return [(invoice, PAID)]


_SCENARIOS: dict[str, _Scenario] = {
    "unpaid": _unpaid,
    "paid_in_full": _paid_in_full,
    "part_paid": _part_paid,
    "paid_with_discount": _paid_with_discount,
    "credit_note_in_full": _credit_note_in_full,
    "part_credited": _part_credited,
    "write_off_per_invoice": _write_off_per_invoice,
    "part_paid_then_written_off": _part_paid_then_written_off,
    "credited_then_written_off": _credited_then_written_off,
    "manual_write_off": _manual_write_off,
    "write_off_by_details": _write_off_by_details,
    "small_overpayment": _small_overpayment,
    "refund_after_credit": _refund_after_credit,
    "one_receipt_for_several": _one_receipt_for_several,
    "edited_invoice_then_paid": _edited_invoice_then_paid,
    "edited_receipt": _edited_receipt,
    "deleted_receipt": _deleted_receipt,
    "payment_on_account_allocated_later": _payment_on_account_allocated_later,
    "written_off_later": _written_off_later,
    "duplicate_invoice_deleted": _duplicate_invoice_deleted,
    "contra": _contra,
    "cleared_year": _cleared_year,
}
# How often each everyday situation comes up among the extra invoices of a customer.
_EVERYDAY_WEIGHTS = {
    "unpaid": 30,
    "paid_in_full": 35,
    "part_paid": 12,
    "paid_with_discount": 8,
    "credit_note_in_full": 3,
    "part_credited": 4,
    "write_off_per_invoice": 3,
    "part_paid_then_written_off": 3,
    "payment_on_account_allocated_later": 2,
}


def _scenario_plan(rng: random.Random, accounts: Sequence[str]) -> list[tuple[str, str]]:
    """Every scenario at least once (spread over the customers), then everyday extras."""
    plan = [(accounts[i % len(accounts)], name) for i, name in enumerate(_SCENARIOS)]
    names, weights = list(_EVERYDAY_WEIGHTS), list(_EVERYDAY_WEIGHTS.values())
    for account in accounts:
        plan += [(account, name) for name in rng.choices(names, weights, k=rng.randint(0, 3))]
    return sorted(plan, key=lambda item: accounts.index(item[0]))


def _supplier_and_bank_noise(ledger: _Ledger, count: int) -> None:
    """Transactions every real export has and the exporter must leave out."""
    for i in range(1, count + 1):
        on = _START + dt.timedelta(days=ledger.rng.randint(0, 60))
        supplier = f"SUP{i:03d}"
        bill = ledger.post("PI", supplier, f"PO{i:04d}", on, "Stationery", "7500", ledger.amount())
        payment = ledger.post(
            "PP", supplier, "BACS", ledger.day_after(on), "Purchase Payment", "1200", bill.gross
        )
        ledger.allocate(bill, payment, bill.gross)
        ledger.post("BR", "1200", "INT", on, "Bank interest", "4900", ledger.amount(1_00, 20_00))
        transfer = ledger.amount()
        ledger.post("JD", "", "TRF", on, "Transfer to deposit", "1210", transfer)
        ledger.post("JC", "", "TRF", on, "Transfer to deposit", "1200", transfer)


def _category(settling: _Txn) -> str:
    if settling.reval:
        return "exchange_adjustment"
    if settling.type == "SC":
        return "written_off" if settling.write_off else "credited"
    return {"SR": "paid", "SA": "paid", "SD": "discounted", "SP": "refund"}[settling.type]


def _tagged(scenario: str, outcomes: list[_Outcome]) -> list[tuple[_Txn, str, str]]:
    return [(txn, status, scenario) for txn, status in outcomes]


def _account_ref(index: int) -> str:
    return f"{_NAMES[index % len(_NAMES)][:3].upper()}{index + 1:03d}"


def _money(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _double(kind: str, amount: Decimal) -> str:
    """The amount as Sage's CSV writes a double: no trailing zeros, signed by type."""
    if amount.is_zero():
        return "0"
    signed = -amount if kind in _NEGATIVE_TYPES else amount
    return f"{signed.normalize():f}"


def _sage_date(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")


def _sage_stamp(stamp: dt.datetime) -> str:
    return stamp.strftime("%d/%m/%Y %H:%M:%S")
