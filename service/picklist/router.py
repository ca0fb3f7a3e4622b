"""HTTP endpoints of the invoice status picklist."""

from __future__ import annotations

from fastapi import APIRouter

from service.auth import AdminKey, ReadKey
from service.deps import ConnDep, SettingsDep
from service.picklist import repository, service
from service.picklist.schemas import PicklistIn, PicklistOut, RepairOut, VerificationOut

router = APIRouter(prefix="/v1/picklists/invoice-status", tags=["picklist"])


@router.get("", operation_id="get_invoice_status_picklist", response_model=PicklistOut)
async def get_picklist(_: ReadKey, conn: ConnDep) -> PicklistOut:
    """The invoice status picklist, in display order."""
    return PicklistOut(values=await repository.values(conn))


@router.put(
    "",
    operation_id="replace_invoice_status_picklist",
    response_model=PicklistOut,
    responses={409: {"description": "A value still in use on an invoice would disappear"}},
)
async def replace_picklist(_: AdminKey, body: PicklistIn, conn: ConnDep) -> PicklistOut:
    """Replace the whole list (admin). Refused with 409 when a value some invoice still carries
    would disappear."""
    return PicklistOut(values=await service.replace_values(conn, body.values))


@router.get(
    "/verification",
    operation_id="verify_invoice_status_picklist",
    response_model=VerificationOut,
)
async def verify_picklist(_: ReadKey, conn: ConnDep, settings: SettingsDep) -> VerificationOut:
    """Whether the picklist holds the protected statuses and every label the sync may write."""
    result = await service.verify(conn, settings.ledger)
    return VerificationOut(
        ok=result.ok,
        required=result.required,
        missing=result.missing,
        observed_in_crm=result.observed_in_crm,
        observed_not_in_picklist=result.observed_not_in_picklist,
    )


@router.post("/repair", operation_id="repair_invoice_status_picklist", response_model=RepairOut)
async def repair_picklist(_: AdminKey, conn: ConnDep, settings: SettingsDep) -> RepairOut:
    """Append every missing required value (admin); returns what was added."""
    added = await service.repair(conn, settings.ledger)
    return RepairOut(added=added, ok=(await service.verify(conn, settings.ledger)).ok)
