"""Picklist rules: verification against what the sync may write, and repair.

OpenCRM has no picklist API, so the service keeps the invoice status picklist itself (mirroring
OpenCRM's Settings). A status is only ever written when it is in this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import Conflict, Unprocessable
from service.ledger.settings import LedgerSettings
from service.ledger.vocabulary import DERIVED_STATES
from service.picklist import repository

REPAIR_HINT = "POST /v1/picklists/invoice-status/repair adds them"


@dataclass(frozen=True)
class Verification:
    required: list[str]
    missing: list[str]
    observed_in_crm: list[str]
    observed_not_in_picklist: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing


def required_values(ledger: LedgerSettings) -> list[str]:
    """The protected statuses, every label the sync may write (either write-off mode), and the
    SageLink labels it falls back to when a derived label is missing. Order kept, no repeats."""
    fallback = [ledger.fallback_label_for(state) for state in DERIVED_STATES]
    return list(dict.fromkeys([*ledger.protected_statuses, *ledger.writable_labels(), *fallback]))


async def values(conn: AsyncConnection) -> list[str]:
    """The invoice status picklist, in its order."""
    return await repository.values(conn)


async def verify(conn: AsyncConnection, ledger: LedgerSettings) -> Verification:
    present = set(await repository.values(conn))
    observed = await repository.observed_in_crm(conn)
    required = required_values(ledger)
    return Verification(
        required=required,
        missing=[value for value in required if value not in present],
        observed_in_crm=observed,
        observed_not_in_picklist=[value for value in observed if value not in present],
    )


async def readiness_warnings(conn: AsyncConnection, ledger: LedgerSettings) -> list[str]:
    """Problems with the picklist worth reporting on /readyz (never fatal)."""
    present = set(await repository.values(conn))
    missing = [value for value in required_values(ledger) if value not in present]
    if not missing:
        return []
    names = ", ".join(f"'{value}'" for value in missing)
    return [
        f"picklist is missing {names}: statuses the sync may write or protect must be in the "
        f"invoice status picklist; {REPAIR_HINT}"
    ]


async def replace_values(conn: AsyncConnection, new_values: list[str]) -> list[str]:
    """Replace the whole list; refuse (409) when a value still in use would disappear."""
    await repository.lock_for_change(conn)
    doomed = sorted(set(await repository.values(conn)) - set(new_values))
    if doomed:
        await repository.lock_values(conn, doomed)
        in_use = await repository.values_in_use(conn, doomed)
        if in_use:
            names = ", ".join(f"'{value}'" for value in in_use)
            raise Conflict(
                f"the picklist would lose {names}, still in use (the status of invoices, or the "
                "target of a queued Global Update); move those invoices to another status "
                "first, or keep the values",
                extra={"in_use": in_use},
            )
    await repository.replace(conn, new_values)
    return await repository.values(conn)


async def repair(conn: AsyncConnection, ledger: LedgerSettings) -> list[str]:
    """Append every missing required value; return what was added (empty when nothing was)."""
    await repository.lock_for_change(conn)
    missing = (await verify(conn, ledger)).missing
    if not missing:
        return []
    return await repository.append(conn, missing)


async def ensure_allowed(conn: AsyncConnection, status: str) -> None:
    """422 listing the allowed values unless `status` is in the picklist. On success the value
    stays in the picklist until the caller's transaction ends."""
    if await repository.hold_value(conn, status):
        return
    allowed = await repository.values(conn)
    raise Unprocessable(
        f"status '{status}' is not in the invoice status picklist; use one of: "
        + ", ".join(f"'{value}'" for value in allowed),
        errors=[
            {
                "loc": ["body", "status"],
                "field": "body.status",
                "msg": "not in the invoice status picklist",
                "type": "picklist",
            }
        ],
        extra={"allowed": allowed},
    )


async def known_statuses(conn: AsyncConnection) -> list[str]:
    """Every status an invoice can carry: the picklist, then what was seen in the CRM."""
    values = await repository.values(conn)
    observed = await repository.observed_in_crm(conn)
    return list(dict.fromkeys([*values, *observed]))


async def ensure_known_statuses(
    conn: AsyncConnection, statuses: list[str], *, loc: str, field: str = "status"
) -> None:
    """422 listing the known statuses when a filter names one no invoice can carry."""
    known = await known_statuses(conn)
    unknown = [value for value in statuses if value not in known]
    if not unknown:
        return
    names = ", ".join(f"'{value}'" for value in unknown)
    raise Unprocessable(
        f"unknown status {names}; statuses are case-sensitive, use one of: "
        + ", ".join(f"'{value}'" for value in known),
        errors=[
            {
                "loc": [*loc.split("."), field],
                "field": f"{loc}.{field}",
                "msg": "not a known invoice status",
                "type": "enum",
            }
        ],
        extra={"allowed": known},
    )
