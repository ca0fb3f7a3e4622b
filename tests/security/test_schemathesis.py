"""schemathesis against openapi.yaml, with the app running on a real PostgreSQL.

Every operation, positive and negative examples, an admin key supplied: no 5xx, every status
code, content type, header and body as documented, invalid input refused. A few hundred
examples in the normal suite; a few thousand under `make test-faults`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import APIOperation, BaseSchema, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Err
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from service.reconcile.tasks import reconcile_all_dirty
from service.settings import Settings
from tests.security.support import seed_ledger
from tests.support.factories import WEBHOOK
from tests.support.keys import ADMIN_KEY, auth
from tests.support.settings import make_settings
from tests.support.webhooks import signed_request

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


def invalid_body_rejected(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """schemathesis' negative_data_rejection, for invalid bodies. An "invalid" query, path or
    header value is often a valid string once on the wire (it sends the boolean `false` for a
    string parameter, which arrives as the text "false"), and the API rightly accepts it."""
    if case.meta is None or not case.meta.is_negative_at(ParameterLocation.BODY):
        return None
    return negative_data_rejection(ctx, response, case)


NEGATIVE_CHECKS: list[CheckFunction] = [*CHECKS, invalid_body_rejected]


@dataclass
class Tally:
    """What was sent and what came back, for the assertions and docs/RELIABILITY.md."""

    # (operation, generation mode, status) -> responses
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    no_negative_input: list[str] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for (_, _, status), n in self.statuses.items() if status >= 500)

    def operations(self) -> set[str]:
        return {label for label, _, _ in self.statuses}


def operations(schema: BaseSchema) -> list[APIOperation[Any, Any, Any, Any]]:
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"openapi.yaml: {result.err()}")
        found.append(result.ok())
    return found


def fuzz(
    app: Any,
    *,
    examples: int,
    known: dict[str, dict[str, Any]],
    derandomize: bool,
) -> Tally:
    """Run every operation of openapi.yaml against `app` (in schemathesis' own event loop).

    `known` gives path parameters of rows that exist, so half of the examples of an operation
    with a path parameter reach a real resource instead of a 404.
    """
    schema = schemathesis.openapi.from_path(str(SPEC))
    schema.app = app
    tally = Tally()
    for operation in operations(schema):
        variants: list[dict[str, Any] | None] = [None]
        fixed = {
            name: value
            for name, value in known.get(operation.label, {}).items()
            if "{" + name + "}" in operation.path
        }
        if fixed:
            variants.append(fixed)
        per_variant = max(1, examples // len(variants))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in variants:
                where = f"{operation.label} ({mode.value}, path {path_parameters or 'generated'})"
                strategy = operation.as_strategy(
                    generation_mode=mode, headers=auth(ADMIN_KEY), path_parameters=path_parameters
                )
                exercise = _examples_of(strategy, mode, tally, per_variant, derandomize)
                try:
                    exercise()
                except Unsatisfiable:
                    # No parameter of this operation can be made invalid (a free-text path
                    # segment, no parameters at all): there is no negative example to send.
                    if mode is not GenerationMode.NEGATIVE:
                        raise
                    tally.no_negative_input.append(where)
                except BaseException as exc:  # a FailureGroup is a BaseExceptionGroup
                    if not isinstance(exc, Exception | BaseExceptionGroup):
                        raise
                    tally.failures.append(f"{where}:\n{exc}")
    return tally


def _examples_of(
    strategy: SearchStrategy[Case[Any]],
    mode: GenerationMode,
    tally: Tally,
    max_examples: int,
    derandomize: bool,
) -> Callable[[], None]:
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Case[Any]) -> None:
        if mode is GenerationMode.POSITIVE and case.operation.path == WEBHOOK:
            # Signed, so that valid batches get past the signature to validation and storage
            # (unsigned, every one is a 401: that is what the negative examples show).
            body, signature = signed_request(json.dumps(case.body).encode())
            response = case.call(data=body, headers=signature)
        else:
            response = case.call()
        tally.statuses[(case.operation.label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=checks)

    return exercise


async def known_resources(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> Any:
    """Seed invoices, a job, a sync run and a dead letter; their ids by operation label."""
    numbers = await seed_ledger(client)
    await reconcile_all_dirty(engine, settings)
    job = await client.post(
        "/v1/invoices/bulk-status",
        json={"status": "Sent", "invoice_numbers": numbers[:2], "dry_run": True},
        headers=auth(ADMIN_KEY),
    )
    assert job.status_code == 200, job.text
    run = await client.post(
        "/v1/sync/trigger?wait=true", json={"scope": "all"}, headers=auth(ADMIN_KEY)
    )
    assert run.status_code == 200, run.text
    async with engine.begin() as conn:
        dead = (
            await conn.execute(
                sa.text(
                    "UPDATE outbox SET state = 'dead', attempts = 8 "
                    "WHERE id = (SELECT min(id) FROM outbox) RETURNING id"
                )
            )
        ).scalar_one()
    invoice = {"invoice_number": numbers[1]}
    return {
        "GET /v1/invoices/{invoice_number}": invoice,
        "PATCH /v1/invoices/{invoice_number}": invoice,
        "GET /v1/jobs/{job_id}": {"job_id": job.json()["job_id"]},
        "GET /v1/sync/runs/{run_id}": {"run_id": run.json()["run_id"]},
        "POST /v1/crm/outbox/{message_id}/retry": {"message_id": dead},
    }


async def run_against_openapi(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    *,
    examples: int,
    derandomize: bool,
) -> Tally:
    settings = make_settings(database_url, log_level="ERROR")
    known = await known_resources(client, engine, settings)
    # A second instance of the app, served by schemathesis in its own event loop.
    app = create_app(settings)
    try:
        tally = await asyncio.to_thread(
            fuzz, app, examples=examples, known=known, derandomize=derandomize
        )
    finally:
        await asyncio.to_thread(asgi.shutdown_lifespans)
    by_status = Counter[int]()
    for (_, _, status), count in tally.statuses.items():
        by_status[status] += count
    print(
        f"schemathesis: {tally.examples} examples over {len(tally.operations())} operations, "
        f"{tally.server_errors} responses 5xx, {len(tally.failures)} failing operations; "
        f"by status {dict(sorted(by_status.items()))}; webhook "
        f"{sorted((k[1], k[2], n) for k, n in tally.statuses.items() if k[0].endswith(WEBHOOK))}"
    )
    return tally


def assert_clean(tally: Tally, minimum_examples: int) -> None:
    documented = operations(schemathesis.openapi.from_path(str(SPEC)))
    assert tally.operations() == {op.label for op in documented}
    assert not tally.failures, "\n\n".join(tally.failures)
    assert tally.server_errors == 0, [key for key in tally.statuses if key[2] >= 500]
    assert tally.examples >= minimum_examples
    # Invalid input was tried on everything that takes a body or query parameters.
    negative = {label for label, mode, _ in tally.statuses if mode == "negative"}
    for op in documented:
        if op.body or op.query:
            assert op.label in negative, op.label


async def test_every_operation_conforms_and_never_fails(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    tally = await run_against_openapi(client, engine, database_url, examples=12, derandomize=True)
    assert_clean(tally, minimum_examples=200)


@pytest.mark.faults
async def test_a_few_thousand_examples_conform_and_never_fail(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    tally = await run_against_openapi(client, engine, database_url, examples=150, derandomize=False)
    assert_clean(tally, minimum_examples=2500)
