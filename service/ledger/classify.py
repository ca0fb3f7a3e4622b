"""How a Sage posting is classified, shared by ingest (write-off and revaluation SIs are not
invoices), reconciliation, the invoice page and the bad-debt list (what an allocation counts as:
`allocation_kind_sql`, the one definition; a revaluation SC is an exchange adjustment, a
write-off SC is written off, any other SC a credit).

Write-offs follow the write-off wizard's output: the nominal code is the reliable signal,
details/reference text is the fallback (docs/EXPORTER.md, "What Sage keeps").

Revaluations follow Sage's knowledge base, "Foreign Trader - posting foreign currency
transactions" (gb-kb.sage.com, k2dockey 211021152642110): when an invoice and a receipt at
different exchange rates are allocated, Sage posts an automatic revaluation with reference
REVAL, on the exchange rate variance nominal (7906 unless changed in the Foreign Trader set-up,
"Revaluation N/C", hence the setting), details "Currency Reval [amount] to [type and number]",
T9, and, when the receipt brought fewer pounds, raises it as an SC allocated to the invoice.
Any one of the three marks a revaluation, so a changed nominal or edited details still leave
the other signals. See docs/CURRENCY.md.
"""

from __future__ import annotations

from service.ledger.settings import LedgerSettings
from service.ledger.vocabulary import COUNTS_AS, CREDIT, CREDIT_KINDS, UNCOUNTED, sql_literal

REVALUATION_REFERENCE = "REVAL"
# Sage's own wording; matched at the start of the details only, case-insensitively.
REVALUATION_DETAILS = r"^ *currency +reval"


def _nominal_sql(
    alias: str, ranges: list[tuple[str, str]], prefix: str, params: dict[str, object]
) -> str:
    """`alias`.nominal_code within `ranges`, compared as integers when it is all digits."""
    code = f"btrim({alias}.nominal_code, ' ')"
    tests = []
    for i, (low, high) in enumerate(ranges):
        params[f"{prefix}_low_{i}"] = int(low)
        params[f"{prefix}_high_{i}"] = int(high)
        tests.append(f"({code}::bigint BETWEEN :{prefix}_low_{i} AND :{prefix}_high_{i})")
    # CASE evaluates the cast only for all-digit codes; no per-row subquery (hot path).
    return (
        f"(CASE WHEN {code} ~ '^[0-9]{{1,9}}$' "
        f"THEN ({' OR '.join(tests) or 'false'}) ELSE false END)"
    )


def write_off_sql(alias: str, ledger: LedgerSettings) -> tuple[str, dict[str, object]]:
    """A SQL boolean expression over `alias`.nominal_code/details/reference, with its params:
    a nominal code in the write-off ranges, or the pattern in the details or reference."""
    params: dict[str, object] = {"wo_pattern": ledger.write_off_pattern}
    nominal = _nominal_sql(alias, ledger.nominal_ranges, "wo", params)
    text = f"({alias}.details ~* :wo_pattern OR {alias}.reference ~* :wo_pattern)"
    return f"({nominal} OR {text})", params


def revaluation_sql(alias: str, ledger: LedgerSettings) -> tuple[str, dict[str, object]]:
    """A SQL boolean expression over `alias`, with its params: the variance nominal, REVAL, or
    Sage's details."""
    params: dict[str, object] = {
        "reval_reference": REVALUATION_REFERENCE,
        "reval_details": REVALUATION_DETAILS,
    }
    nominal = _nominal_sql(alias, ledger.exchange_variance_ranges, "fx", params)
    return (
        f"({nominal} OR upper(btrim({alias}.reference, ' ')) = :reval_reference "
        f"OR {alias}.details ~* :reval_details)",
        params,
    )


def credit_kind_sql(alias: str, ledger: LedgerSettings) -> tuple[str, dict[str, object]]:
    """A SQL CASE over `alias` (a credit's posting), with its params: what the credit counts
    as, in the order of `CREDIT_KINDS` (a revaluation first: its nominal may sit in a
    write-off range, and it moves no money of the customer's)."""
    revaluation, params = revaluation_sql(alias, ledger)
    write_off, wo_params = write_off_sql(alias, ledger)
    params.update(wo_params)
    exchange_adjustment, written_off, credited = CREDIT_KINDS
    return (
        f"CASE WHEN {revaluation} THEN {sql_literal(exchange_adjustment)} "
        f"WHEN {write_off} THEN {sql_literal(written_off)} ELSE {sql_literal(credited)} END",
        params,
    )


def allocation_kind_sql(
    posting_type: str, alias: str, ledger: LedgerSettings
) -> tuple[str, dict[str, object]]:
    """A SQL CASE, with its params: the AllocationKind of an allocation whose settling
    posting's type is the expression `posting_type` (a credit classified over `alias`, its
    posting). Anything else, an SI or a posting not received yet, counts for nothing."""
    credit, params = credit_kind_sql(alias, ledger)
    by_type = " ".join(
        f"WHEN {sql_literal(posting_type_)} THEN {sql_literal(kind)}"
        for posting_type_, kind in COUNTS_AS.items()
    )
    return (
        f"CASE {posting_type} {by_type} WHEN {sql_literal(CREDIT)} THEN {credit} "
        f"ELSE {sql_literal(UNCOUNTED)} END",
        params,
    )
