"""The invoice list's filters, defined once: the list, its counts and the Global Update's
selection all use them, so a dry run selects exactly what the list showed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.invoices.schemas import InvoiceFilter
from service.ledger.settings import LedgerSettings
from service.ledger.vocabulary import DERIVED_STATES
from service.picklist.service import ensure_known_statuses


@dataclass(frozen=True)
class FilterContext:
    """What a filter needs from the settings: which statuses are protected, and the label of
    each derived state (to tell a divergent status)."""

    protected_statuses: list[str]
    labels: dict[str, str]


def filter_sql(
    criteria: InvoiceFilter, context: FilterContext, *, prefix: str = "f_"
) -> tuple[str, dict[str, Any]]:
    """The filter as `AND ...` conditions over `invoices AS i`, with their bind parameters.

    The one definition of every list filter: the list, its counts and the Global Update's
    selection all use it, so a dry run selects exactly what the list showed."""
    clauses: list[str] = []
    params: dict[str, Any] = {f"{prefix}protected": context.protected_statuses}
    is_protected = f"i.status = ANY(CAST(:{prefix}protected AS text[]))"
    # `is not None`, never truthiness: an empty list (refused by the schema) must select
    # nothing here rather than drop the criterion and select everything.
    if criteria.status is not None:
        clauses.append(f"i.status = ANY(CAST(:{prefix}statuses AS text[]))")
        params[f"{prefix}statuses"] = list(criteria.status)
    if criteria.account_ref is not None:
        clauses.append(f"i.account_ref = CAST(:{prefix}account AS text)")
        params[f"{prefix}account"] = criteria.account_ref
    if criteria.protected is not None:
        clauses.append(is_protected if criteria.protected else f"NOT ({is_protected})")
    if criteria.derived_state is not None:
        clauses.append(f"i.derived_state = ANY(CAST(:{prefix}states AS text[]))")
        params[f"{prefix}states"] = list(criteria.derived_state)
    _flag(clauses, criteria.written_off, "i.written_off > 0")
    _flag(clauses, criteria.conflict, "i.conflict IS NOT NULL")
    _flag(clauses, criteria.mismatch, "i.mismatch")
    if criteria.divergent is not None:
        # The reconciliation report's `status_differs`, in the same terms.
        states = list(context.labels)
        whens = " ".join(
            f"WHEN :{prefix}state_{n} THEN :{prefix}label_{n}" for n in range(len(states))
        )
        for n, state in enumerate(states):
            params[f"{prefix}state_{n}"] = state
            params[f"{prefix}label_{n}"] = context.labels[state]
        expected = f"(CASE i.derived_state {whens} END)"
        _flag(
            clauses,
            criteria.divergent,
            f"(NOT ({is_protected}) AND {expected} IS NOT NULL AND i.status <> {expected})",
        )
    if criteria.updated_since is not None:
        clauses.append(f"i.updated_at >= CAST(:{prefix}updated_since AS timestamptz)")
        params[f"{prefix}updated_since"] = criteria.updated_since
    return "".join(f" AND {c}" for c in clauses), params


def _flag(clauses: list[str], wanted: bool | None, condition: str) -> None:
    if wanted is not None:
        clauses.append(condition if wanted else f"NOT coalesce({condition}, false)")


def filter_context(ledger: LedgerSettings) -> FilterContext:
    return FilterContext(
        protected_statuses=list(ledger.protected_statuses),
        labels={state: ledger.label_for(state) for state in DERIVED_STATES},
    )


async def checked_filter(
    conn: AsyncConnection, criteria: InvoiceFilter, *, loc: str
) -> InvoiceFilter:
    """The filter with its statuses checked (422 listing the known ones: a mistyped status
    would otherwise match nothing, silently) and `updated_since` in UTC when it has no offset."""
    if criteria.status:
        await ensure_known_statuses(conn, criteria.status, loc=loc)
    if criteria.updated_since is not None and criteria.updated_since.tzinfo is None:
        in_utc = criteria.updated_since.replace(tzinfo=UTC)
        criteria = criteria.model_copy(update={"updated_since": in_utc})
    return criteria
