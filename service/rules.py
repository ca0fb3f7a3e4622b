"""The write-off classifier, shared by ingest (write-off SIs are not invoices) and
reconciliation (write-off SCs are not credits). DOMAIN.md "What a write-off looks like":
the nominal code is the reliable signal; details/reference text is the fallback."""

from __future__ import annotations

import re

from service.settings import Settings


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


def write_off_sql(alias: str, settings: Settings) -> tuple[str, dict[str, object]]:
    """A SQL boolean expression over `alias`.nominal_code/details/reference, with its params.

    Same rule as is_write_off(); nominal codes compare as integers when they are all digits.
    """
    params: dict[str, object] = {"wo_pattern": settings.write_off_pattern}
    code = f"btrim({alias}.nominal_code, ' ')"
    ranges = []
    for i, (low, high) in enumerate(settings.nominal_ranges):
        params[f"wo_low_{i}"] = int(low)
        params[f"wo_high_{i}"] = int(high)
        ranges.append(f"({code}::bigint BETWEEN :wo_low_{i} AND :wo_high_{i})")
    # CASE evaluates the cast only for all-digit codes; no per-row subquery (hot path).
    nominal = (
        f"(CASE WHEN {code} ~ '^[0-9]{{1,9}}$' "
        f"THEN ({' OR '.join(ranges) or 'false'}) ELSE false END)"
    )
    text = f"({alias}.details ~* :wo_pattern OR {alias}.reference ~* :wo_pattern)"
    return f"({nominal} OR {text})", params
