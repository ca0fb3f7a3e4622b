"""What a person's protect/release means for the next sync (ingest + reconciliation)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import WorkerContext
from service.reconcile import tasks as reconcile_tasks
from tests.support.factories import Posting, load, settle, si
from tests.support.keys import READ_KEY, WRITE_KEY, auth

SI = 5001


async def _sync(ctx: WorkerContext, *postings: Posting) -> None:
    """The postings stored (when any), then the worker's reconcile task run until idle."""
    if postings:
        await load(ctx.engine, ctx.settings, *postings)
    reconcile = reconcile_tasks.Reconcile(ctx)
    for _ in range(20):
        if await reconcile.run_once() == 0:
            return
    raise AssertionError("reconciliation never went idle")


async def _invoice(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/invoices/INV-900", headers=auth(READ_KEY))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_protected_invoice_is_left_alone_and_released_one_is_recomputed(
    client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: WorkerContext
) -> None:
    await _sync(worker_ctx, si(SI, "INV-900", "120.00"))
    await _sync(worker_ctx, settle(SI + 1, "SR", [(SI, "120.00")]))
    invoice = await _invoice(client)
    assert (invoice["status"], invoice["outstanding"]) == ("Paid", "0.00")

    # A person protects it.
    edit = await client.patch(
        "/v1/invoices/INV-900",
        json={"status": "Written Off", "reason": "customer insolvent"},
        headers=auth(WRITE_KEY),
    )
    assert edit.status_code == 200

    # Sage then refunds the receipt: the sync must change neither status nor balance.
    await _sync(worker_ctx, settle(SI + 2, "SP", [(SI, "120.00")]))
    invoice = await _invoice(client)
    assert (invoice["status"], invoice["outstanding"]) == ("Written Off", "0.00")
    assert invoice["protected"] is True
    assert invoice["conflict"] is not None  # listed for a human instead
    assert invoice["history"][-1]["source"] == "manual"

    # The person moves it to an unprotected status: released, the next sync recomputes it.
    release = await client.patch(
        "/v1/invoices/INV-900",
        json={"status": "Part Paid", "reason": "not a write-off after all"},
        headers=auth(WRITE_KEY),
    )
    assert release.status_code == 200
    await _sync(worker_ctx)
    invoice = await _invoice(client)
    assert (invoice["status"], invoice["outstanding"]) == ("Unpaid", "120.00")
    assert invoice["conflict"] is None
    last = invoice["history"][-1]
    assert (last["source"], last["from_status"], last["to_status"]) == (
        "sync",
        "Part Paid",
        "Unpaid",
    )
