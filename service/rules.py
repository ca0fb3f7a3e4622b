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

import re

from service.settings import Settings

REVALUATION_REFERENCE = "REVAL"
# Sage's own wording; matched at the start of the details only, case-insensitively.
REVALUATION_DETAILS = r"^ *currency +reval"


def nominal_in_ranges(nominal_code: str, ranges: list[tuple[str, str]]) -> bool:
    # ASCII digits and spaces only, exactly like the SQL side (str.isdigit() and str.strip()
    # would accept other scripts' digits and Unicode spaces that PostgreSQL does not).
    code = nominal_code.strip(" ")
    if not re.fullmatch(r"[0-9]{1,9}", code):
        return False
    value = int(code)
    return any(int(low) <= value <= int(high) for low, high in ranges)


def is_write_off(nominal_code: str, details: str, reference: str, settings: Settings) -> bool:
    if nominal_in_ranges(nominal_code, settings.nominal_ranges):
        return True
    pattern = re.compile(settings.write_off_pattern, re.IGNORECASE)
    return bool(pattern.search(details) or pattern.search(reference))


def is_revaluation(nominal_code: str, details: str, reference: str, settings: Settings) -> bool:
    """Sage's automatic exchange revaluation: the variance nominal, REVAL, or its details."""
    if nominal_in_ranges(nominal_code, settings.exchange_variance_ranges):
        return True
    if reference.strip(" ").upper() == REVALUATION_REFERENCE:
        return True
    return bool(re.search(REVALUATION_DETAILS, details, re.IGNORECASE))


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


def write_off_sql(alias: str, settings: Settings) -> tuple[str, dict[str, object]]:
    """A SQL boolean expression over `alias`.nominal_code/details/reference, with its params.

    Same rule as is_write_off().
    """
    params: dict[str, object] = {"wo_pattern": settings.write_off_pattern}
    nominal = _nominal_sql(alias, settings.nominal_ranges, "wo", params)
    text = f"({alias}.details ~* :wo_pattern OR {alias}.reference ~* :wo_pattern)"
    return f"({nominal} OR {text})", params


def revaluation_sql(alias: str, settings: Settings) -> tuple[str, dict[str, object]]:
    """A SQL boolean expression over `alias`, with its params: the rule of is_revaluation()."""
    params: dict[str, object] = {
        "reval_reference": REVALUATION_REFERENCE,
        "reval_details": REVALUATION_DETAILS,
    }
    nominal = _nominal_sql(alias, settings.exchange_variance_ranges, "fx", params)
    return (
        f"({nominal} OR upper(btrim({alias}.reference, ' ')) = :reval_reference "
        f"OR {alias}.details ~* :reval_details)",
        params,
    )
