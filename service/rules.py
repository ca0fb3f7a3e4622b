"""How a Sage posting is classified, shared by ingest (write-off and revaluation SIs are not
invoices) and reconciliation (write-off SCs are not credits; revaluation SCs are neither).

Write-offs follow the write-off wizard's output: the nominal code is the reliable signal,
details/reference text is the fallback (docs/ARCHITECTURE.md, "What a write-off looks like
in Sage").

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
