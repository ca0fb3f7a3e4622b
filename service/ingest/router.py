"""HTTP endpoint of ingestion: POST /v1/webhooks/sage/postings (rules in service.py)."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response

from service.auth import NO_API_KEY
from service.deps import EngineDep, IngestDep
from service.errors import ServiceError
from service.exception_handlers import PROBLEM_JSON
from service.ingest.rejections import count_rejection
from service.ingest.schemas import IngestResult, PostingBatch
from service.ingest.service import RETRIES
from service.transaction import read, run_in_transaction

router = APIRouter(tags=["ingest"])

WEBHOOK_PATH = "/v1/webhooks/sage/postings"


def _inline_schema(model: type[PostingBatch]) -> dict[str, Any]:
    """The model's JSON schema with its $defs inlined, for a body FastAPI does not parse."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


SIGNATURE_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "Unique per batch; a retry of the same batch sends the same id",
        "schema": {"type": "string", "maxLength": 255},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "Unix time in seconds when the delivery was signed",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": 'Space-separated "v1,<base64 HMAC-SHA256 of id.timestamp.body>"',
        "schema": {"type": "string"},
    },
]


@router.post(
    WEBHOOK_PATH,
    operation_id="ingest_sage_postings",
    summary="Receive a signed batch of Sage postings",
    status_code=202,
    response_model=IngestResult,
    responses={
        200: {
            "model": IngestResult,
            "description": "This webhook-id was applied before: "
            "its stored answer, nothing applied again",
        },
        202: {"description": "Stored (committed) and the affected invoices queued"},
        400: _problem("The body is not JSON"),
        401: _problem("Missing headers, bad signature, or timestamp outside the tolerance"),
        409: _problem("The same webhook-id is being processed right now; retry"),
        413: _problem("Body over LEDGERLINK_MAX_BODY_BYTES"),
        422: _problem(
            "A posting is invalid (errors name postings[i].field; nothing stored), or the "
            "webhook-id was used before for a different body"
        ),
        503: _problem(
            "No webhook secret configured, the database is unavailable, or the service holds "
            "as many request bodies as it may at once (LEDGERLINK_MAX_INFLIGHT_BODY_BYTES); retry"
        ),
    },
    openapi_extra={
        **NO_API_KEY,
        "parameters": SIGNATURE_HEADERS,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(PostingBatch)}},
        },
    },
)
async def receive_postings(request: Request, ingest: IngestDep, engine: EngineDep) -> Response:
    """Standard Webhooks signed, idempotent by `webhook-id`, stored all-or-nothing.

    The body is read here, not by FastAPI: the signature is over the exact bytes received,
    and an oversize body is refused before it is read whole.
    """
    try:
        signed = ingest.check_headers(
            request.headers.get("webhook-id"),
            request.headers.get("webhook-timestamp"),
            request.headers.get("webhook-signature"),
        )
        # Over LEDGERLINK_MAX_BODY_BYTES, the middleware refuses it while it streams in.
        body = await request.body()
        delivery = ingest.verified(signed, body)
        # Not the request's one transaction (ConnDep): a deadlock with a concurrent delivery
        # runs the whole store again in a new one.
        result = await run_in_transaction(
            engine, partial(ingest.apply, delivery=delivery), retries=RETRIES, name="webhook"
        )
        if result is None:
            answer = await read(engine, partial(ingest.replayed, delivery=delivery))
        else:
            answer = ingest.applied(delivery, result)
    except ServiceError as exc:
        count_rejection(exc)
        raise
    return Response(answer.body, status_code=answer.status_code, media_type="application/json")
