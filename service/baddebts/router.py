"""HTTP endpoint of the bad-debt list (JSON or CSV)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request

from service import csvout
from service.auth import ReadKey
from service.baddebts import service
from service.baddebts.schemas import BadDebtPage
from service.deps import ConnDep, SettingsDep
from service.ingest.schemas import SageDate
from service.invoices.schemas import AccountRef

router = APIRouter(tags=["reports"])


@router.get(
    "/v1/reports/bad-debts",
    operation_id="bad_debts",
    response_model=BadDebtPage,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def bad_debts(
    _: ReadKey,
    conn: ConnDep,
    settings: SettingsDep,
    request: Request,
    as_of: Annotated[
        SageDate | None,
        Query(description="The day ages are counted to (default: today, UTC)"),
    ] = None,
    account_ref: Annotated[AccountRef | None, Query()] = None,
    qualifying: Annotated[
        bool | None, Query(description="Only invoices that do (true) or do not qualify")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Any:
    """Written-off invoices with gross, VAT, when and how much was written off, the age of
    the debt, and whether it qualifies for UK VAT bad debt relief (more than six months past
    its due date and written off). JSON, or CSV with `?format=csv` or `Accept: text/csv`."""
    page = await service.bad_debts(
        conn,
        settings.ledger,
        as_of=as_of,
        account_ref=account_ref,
        qualifying=qualifying,
        limit=limit,
        cursor=cursor,
    )
    if not csvout.wants_csv(accept, format):
        return page
    return csvout.page_response(
        request,
        service.CSV_FIELDS,
        service.csv_rows(page.items),
        filename=f"bad-debts-{page.as_of.isoformat()}.csv",
        next_cursor=page.next_cursor,
    )
