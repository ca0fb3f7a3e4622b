"""Property: for random postings and allocations, the SQL engine agrees with the plain-Python
model of the rules (tests/reconcile/model.py), figure for figure, in both modes, with
protected invoices, missing picklist labels, edits and deletions, in the base currency and in
a foreign one (with Sage's revaluations). Our guard for money."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ingest.schemas import AllocationIn, PostingIn
from tests.reconcile import model
from tests.support.database import DEFAULT_PICKLIST, INVOICES_WITH_QUEUE
from tests.support.factories import load, reconcile
from tests.support.settings import make_settings

NOMINALS = ["4000", "8100", "8150", "8199", "8200", "1200", "", " 8105", "81O0", "08100", "7906"]
DETAILS = [
    "",
    "Bad Debt Write Off",
    "bad  debt",
    "Write-off",
    "Payment",
    "Credit",
    "BADDBT x",
    "Currency Reval 30.00 to SI 2",
]
REFERENCES = ["", "BADDBT", "CN001", "REF", "write off", "REVAL", " reval"]
# None: the base currency, as today's senders send it; GBP: the base currency with Sage's
# FOREIGN_* columns repeating the base amounts; USD: a foreign currency.
CURRENCIES = [None, None, "GBP", "USD", "USD"]
LABEL_SETS = [
    {},
    {"written_off": "WO", "paid_written_off": "Paid + WO"},
    {"part_paid": "Part Paid", "paid": "Paid"},
]

cents = st.integers(min_value=1, max_value=40_000).map(lambda c: Decimal(c) / 100)


@st.composite
def allocation(draw: st.DrawFn, tran_numbers: int, currency: str | None) -> AllocationIn:
    amount = draw(cents)
    foreign: Decimal | None = None
    if currency == "GBP":
        foreign = amount
    elif currency == "USD":
        foreign = draw(st.one_of(cents, st.just(Decimal("0.00"))))
    return AllocationIn(
        invoice_tran_number=draw(st.integers(1, tran_numbers + 2)),
        amount=amount,
        foreign_amount=foreign,
        deleted=draw(st.integers(0, 9)) == 0,
    )


def in_currency(
    draw: st.DrawFn, currency: str | None, gross: Decimal, outstanding: Decimal | None
) -> dict[str, Any]:
    """The currency fields of a posting whose base gross and outstanding are given."""
    if currency is None:
        return {}
    if currency == "GBP":
        foreign_gross, foreign_outstanding, rate = gross, outstanding, Decimal(1)
    else:
        foreign_gross = draw(st.one_of(cents, st.just(Decimal("0.00"))))
        foreign_outstanding = None
        if outstanding is not None:
            foreign_outstanding = draw(
                st.sampled_from([foreign_gross, Decimal("0.00"), foreign_gross / 2])
            ).quantize(Decimal("0.01"))
        rate = Decimal("1.25")
    return {
        "currency": currency,
        "exchange_rate": rate,
        "foreign_net_amount": foreign_gross,
        "foreign_tax_amount": Decimal("0.00"),
        "foreign_gross_amount": foreign_gross,
        "foreign_outstanding": foreign_outstanding,
    }


@st.composite
def invoice_si(draw: st.DrawFn, tran: int) -> PostingIn:
    gross = draw(st.one_of(cents, st.just(Decimal("0.00"))))
    outstanding: Decimal | None = None
    if draw(st.integers(0, 4)) == 0:
        outstanding = draw(st.sampled_from([gross, Decimal("0.00"), gross / 2, -gross]))
        outstanding = outstanding.quantize(Decimal("0.01"))
    write_off_si = draw(st.integers(0, 9)) == 0  # a small-overpayment write-off SI
    revaluation_si = draw(st.integers(0, 14)) == 0  # Sage's REVAL SI: not an invoice either
    return PostingIn(
        tran_number=tran,
        type="SI",
        account_ref="ACC" + str(draw(st.integers(1, 2))),
        reference=f"INV{draw(st.integers(1, 5))}",
        date=dt.date(2026, 10, 1),
        details="Bad Debt Write Off" if write_off_si else "Goods",
        nominal_code="8100" if write_off_si else "7906" if revaluation_si else "4000",
        net_amount=gross,
        tax_amount=Decimal("0.00"),
        gross_amount=gross,
        outstanding=outstanding,
        deleted=draw(st.integers(0, 14)) == 0,
        **in_currency(draw, draw(st.sampled_from(CURRENCIES)), gross, outstanding),
    )


@st.composite
def settling(draw: st.DrawFn, tran: int, tran_numbers: int) -> PostingIn:
    currency = draw(st.sampled_from(CURRENCIES))
    allocations = draw(st.lists(allocation(tran_numbers, currency), min_size=0, max_size=3))
    total = sum((a.amount for a in allocations), Decimal("0.00"))
    return PostingIn(
        tran_number=tran,
        type=draw(st.sampled_from(["SR", "SA", "SD", "SC", "SC", "SP"])),
        account_ref="ACC1",
        reference=draw(st.sampled_from(REFERENCES)),
        date=dt.date(2026, 10, 2),
        details=draw(st.sampled_from(DETAILS)),
        nominal_code=draw(st.sampled_from(NOMINALS)),
        net_amount=total,
        tax_amount=Decimal("0.00"),
        gross_amount=total,
        deleted=draw(st.integers(0, 9)) == 0,
        allocations=allocations,
        **in_currency(draw, currency, total, None),
    )


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    n_si = draw(st.integers(1, 6))
    sis = [draw(invoice_si(t)) for t in range(1, n_si + 1)]
    n_settle = draw(st.integers(0, 10))
    settles = [draw(settling(100 + i, n_si)) for i in range(n_settle)]
    # Phase two: some postings re-sent edited (deleted flag flipped, allocations replaced),
    # some new ones, and some invoices protected or released by a person.
    edits = []
    for posting in draw(st.lists(st.sampled_from(settles), max_size=3)) if settles else []:
        edits.append(
            posting.model_copy(
                update={
                    "deleted": not posting.deleted,
                    "allocations": draw(st.lists(allocation(n_si, posting.currency), max_size=2)),
                }
            )
        )
    extra = [draw(settling(200 + i, n_si)) for i in range(draw(st.integers(0, 3)))]
    return {
        "phase1": [*sis, *settles],
        "phase2": [*edits, *extra],
        "mode": draw(st.sampled_from(["classify", "sagelink"])),
        "labels": draw(st.sampled_from(LABEL_SETS)),
        "dropped": draw(st.sets(st.sampled_from(list(DEFAULT_PICKLIST)), max_size=2)),
        "protect": draw(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 2)), max_size=3)),
    }


async def _reset(engine: AsyncEngine, dropped: set[str]) -> None:
    async with engine.begin() as conn:
        # DELETE, not TRUNCATE: far cheaper on a handful of rows, example after example.
        for table in (
            "sync_run_changes",
            "sync_runs",
            "status_history",
            "outbox",
            "invoices",
            "allocations",
            "postings",
            "picklist_values",
        ):
            await conn.execute(sa.text(f"DELETE FROM {table}"))
        values = [v for v in (*DEFAULT_PICKLIST, "WO", "Paid + WO") if v not in dropped]
        await conn.execute(
            sa.text("INSERT INTO picklist_values (value, position) VALUES (:v, :p)"),
            [{"v": v, "p": i} for i, v in enumerate(values)],
        )


async def _befores(engine: AsyncEngine) -> dict[str, tuple[model.Before, bool]]:
    """Every invoice as it is now, and whether it is dirty (only those get reconciled)."""
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text(INVOICES_WITH_QUEUE))
        return {
            r["invoice_number"]: (
                model.Before(**{k: r[k] for k in model.Before.__dataclass_fields__}),
                r["dirty_since"] is not None,
            )
            for r in rows.mappings()
        }


async def _counts(engine: AsyncEngine, table: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(f"SELECT invoice_number, count(*) FROM {table} GROUP BY invoice_number")
        )
        return {r[0]: r[1] for r in rows}


async def _check(
    engine: AsyncEngine, config: Any, postings: dict[int, PostingIn], picklist: set[str]
) -> None:
    befores = await _befores(engine)
    history_before = await _counts(engine, "status_history")
    outbox_before = await _counts(engine, "outbox")
    await reconcile(engine, config)
    history_after = await _counts(engine, "status_history")
    outbox_after = await _counts(engine, "outbox")
    async with engine.connect() as conn:
        rows = {
            r["invoice_number"]: r
            for r in (await conn.execute(sa.text(INVOICES_WITH_QUEUE))).mappings()
        }
    live = list(postings.values())
    for number, (before, dirty) in befores.items():
        got = rows[number]
        if not dirty:
            assert got["status"] == before.status
            assert got["outstanding"] == before.outstanding
            assert history_after.get(number) == history_before.get(number)
            continue
        want = model.expected(before, live, config, picklist)
        event(f"state {want.derived_state}")
        event(f"currency {before.currency}")
        if want.exchange_adjustment:
            event("exchange_adjustment")
        for flag in ("has_conflict", "has_warning", "mismatch", "status_changed"):
            if getattr(want, flag):
                event(flag)
        actual = model.Expected(
            status=got["status"],
            outstanding=got["outstanding"],
            paid=got["paid"],
            discounted=got["discounted"],
            written_off=got["written_off"],
            credited=got["credited"],
            derived_state=got["derived_state"],
            computed_outstanding=got["computed_outstanding"],
            mismatch=got["mismatch"],
            **{name: got[name] for name in model.BASE_FIGURES},
            has_conflict=got["conflict"] is not None,
            has_warning=got["warning"] is not None,
            status_changed=history_after.get(number, 0) - history_before.get(number, 0) == 1,
            sent_to_crm=outbox_after.get(number, 0) - outbox_before.get(number, 0) == 1,
        )
        assert actual == want, (number, before)
        assert got["dirty_since"] is None
        assert history_after.get(number, 0) - history_before.get(number, 0) in (0, 1)
        assert outbox_after.get(number, 0) - outbox_before.get(number, 0) in (0, 1)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scenario())
async def test_sql_engine_agrees_with_the_python_model(
    engine: AsyncEngine, database_url: str, case: dict[str, Any]
) -> None:
    config = make_settings(database_url, write_off_mode=case["mode"], status_labels=case["labels"])
    await _reset(engine, case["dropped"])
    picklist = {v for v in (*DEFAULT_PICKLIST, "WO", "Paid + WO") if v not in case["dropped"]}
    postings: dict[int, PostingIn] = {}

    await load(engine, config, *case["phase1"])
    postings.update({p.tran_number: p for p in case["phase1"]})
    await _check(engine, config, postings, picklist)

    protected = [*config.protected_statuses, config.status_labels["paid"]]
    async with engine.begin() as conn:
        for number, which in case["protect"]:
            params = {"s": protected[which], "n": f"INV{number}"}
            await conn.execute(
                sa.text("UPDATE invoices SET status = :s WHERE invoice_number = :n"), params
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO dirty_invoices (invoice_number) VALUES (:n) "
                    "ON CONFLICT (invoice_number) DO NOTHING"
                ),
                params,
            )
    if case["phase2"]:
        await load(engine, config, *case["phase2"])
        postings.update({p.tran_number: p for p in case["phase2"]})
    await _check(engine, config, postings, picklist)
