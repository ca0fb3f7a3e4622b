"""Unknown query parameters are refused (422 naming them) on every operation of the API and
every request that changes data; nothing of a refused request is stored (issue 24 item 4).

A typo (`acount_ref=`) or a setting put in the wrong place (`?dry_run=true` beside a JSON body)
was ignored: the request ran without it, wider or for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncEngine

from service.main import create_app
from tests.security.test_auth import ENDPOINTS
from tests.support.factories import WEBHOOK, si
from tests.support.keys import ADMIN_KEY, auth
from tests.support.queries import table_checksums
from tests.support.settings import make_settings
from tests.support.webhooks import signed_request

SPEC: dict[str, Any] = yaml.safe_load((Path(__file__).parents[2] / "openapi.yaml").read_text())
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
REFUSING = [
    pytest.param(route, spec, id=f"{route[0]} {route[1]}")
    for route, spec in ENDPOINTS.items()
    if route[0] in MUTATING or route[1].startswith("/v1/")
]


def _app_routes() -> list[tuple[str, APIRoute]]:
    """Every route the app serves, with its full path."""
    app = create_app(make_settings("postgresql://unused@localhost/unused"))
    return [
        (context.path_format or "", context.original_route)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


@pytest.mark.parametrize(("route", "spec"), REFUSING)
async def test_an_unknown_query_parameter_is_422_naming_it_and_nothing_is_stored(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    route: tuple[str, str],
    spec: tuple[str, str, Any],
) -> None:
    method = route[0]
    _, path, body = spec
    before = await table_checksums(engine)
    if route[1] == WEBHOOK:
        content, headers = signed_request({"postings": [si(1, "INV-1")]})
        response = await client.post(
            path, params={"acount_ref": "A"}, content=content, headers=headers
        )
    else:
        response = await client.request(
            method, path, params={"acount_ref": "A"}, json=body, headers=auth(ADMIN_KEY)
        )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == ["query.acount_ref"], problem
    assert problem["errors"][0]["type"] == "extra_forbidden"
    assert "acount_ref" in problem["detail"]
    assert await table_checksums(engine) == before


async def test_every_unknown_parameter_is_named_and_the_known_ones_listed(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/v1/invoices?acount_ref=A&protected=true&limt=5&limit=5", headers=auth(ADMIN_KEY)
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == ["query.acount_ref", "query.limt"]
    assert "account_ref" in problem["errors"][0]["msg"]  # what it takes, to spot the typo


async def test_a_body_field_sent_as_a_query_parameter_says_where_it_belongs(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = await table_checksums(engine)
    response = await client.post(
        "/v1/sync/trigger?dry_run=true", json={"scope": "all"}, headers=auth(ADMIN_KEY)
    )
    assert response.status_code == 422, response.text
    assert '"dry_run": true' in response.json()["detail"]
    assert await table_checksums(engine) == before


async def test_an_unknown_parameter_is_401_first_without_a_key(client: httpx.AsyncClient) -> None:
    """A caller without a valid key learns that it needs one, not what a route takes."""
    for headers in ({}, {"Authorization": "Bearer not-a-key"}):
        response = await client.get("/v1/invoices?acount_ref=A", headers=headers)
        assert response.status_code == 401, response.text
        response = await client.post("/v1/picklists/invoice-status/repair?x=1", headers=headers)
        assert response.status_code == 401, response.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs"])
async def test_probes_and_docs_ignore_query_strings(client: httpx.AsyncClient, path: str) -> None:
    """Load balancers and monitors add their own parameters; a probe must not fail over one."""
    response = await client.get(f"{path}?probe=lb-1&_=123")
    assert response.status_code == 200, response.text


def test_the_parameters_accepted_are_those_openapi_yaml_declares() -> None:
    """The check reads what each route declares (a filter model counts as its fields): the
    same names the document gives clients, so no declared parameter is ever refused."""
    from service.query_parameters import declared_query_parameters

    spec = SPEC
    checked = 0
    for path, route in _app_routes():
        if not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = spec["paths"][path][method.lower()]
            documented = {
                p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"
            }
            assert declared_query_parameters(route) == documented, (method, route.path)
            checked += 1
    assert checked == len(ENDPOINTS)


def test_the_console_form_posts_declare_no_query_parameters() -> None:
    from service.query_parameters import declared_query_parameters

    posts = [
        route
        for path, route in _app_routes()
        if path.startswith("/console/") and (route.methods or set()) & MUTATING
    ]
    assert posts
    assert all(declared_query_parameters(route) == frozenset() for route in posts)
