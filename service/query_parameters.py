"""Unknown query parameters are refused (422 naming each), not ignored.

Ignored, a typo (`acount_ref=`) widened a selection and a setting sent in the wrong place
(`?dry_run=true` beside a JSON body) was dropped, so a preview ran for real. Refused on:

- every request that changes data (POST, PUT, PATCH, DELETE), wherever it is routed: the API,
  the webhook (its sender sends none) and the console's form posts (they post to bare paths);
- every operation of the API (/v1/), reads too: a list or CSV silently wider than asked is
  what someone then acts on, and an API client's parameters are fixed in its code, where a
  422 shows the mistake at once.

Not on the probes, the docs, and the console's pages: load balancers, monitors and browsers add
parameters of their own (cache busters, tracking), a page reads its own query string (its
filter, which it shows), and none of them changes anything.

One check, an app-wide dependency (`create_app`), reading what each route declares: its query
parameters, a query model counting as its fields. A key is checked first (service.auth): a
caller without one learns it needs one, not what a route takes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import UnionType
from typing import Any, Union, get_args, get_origin

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/v1/"


async def refuse_unknown_query_parameters(request: Request) -> None:
    if not request.query_params:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not checked(request.method, request.url.path):
        return
    declared = declared_query_parameters(route)
    unknown = [name for name in request.query_params if name not in declared]
    if not unknown:
        return
    body_fields = _body_fields(route)
    raise RequestValidationError(
        [
            {
                "type": "extra_forbidden",
                "loc": ("query", name),
                "msg": _why(name, request.query_params[name], declared, body_fields),
                "input": request.query_params[name],
            }
            for name in unknown
        ]
    )


def checked(method: str, path: str) -> bool:
    return method in MUTATING or path.startswith(API_PREFIX)


def declared_query_parameters(route: APIRoute) -> frozenset[str]:
    names: set[str] = set()
    for field in _fields(route.dependant, "query_params"):
        model = _model(field.field_info.annotation)
        if model is None:
            names.add(field.alias)
        else:
            names.update(info.alias or name for name, info in model.model_fields.items())
    return frozenset(names)


def _body_fields(route: APIRoute) -> frozenset[str]:
    names: set[str] = set()
    for field in _fields(route.dependant, "body_params"):
        model = _model(field.field_info.annotation)
        names.update(model.model_fields if model is not None else (field.alias,))
    return frozenset(names)


def _fields(dependant: Dependant, kind: str) -> Iterator[Any]:
    """The parameters of one kind of the endpoint and of every dependency it takes."""
    yield from getattr(dependant, kind)
    for sub in dependant.dependencies:
        yield from _fields(sub, kind)


def _model(annotation: Any) -> type[BaseModel] | None:
    """The model a parameter is read into (`Model` or `Model | None`), if any."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    for candidate in (annotation, *candidates):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _why(name: str, value: str, declared: frozenset[str], body_fields: frozenset[str]) -> str:
    if name in body_fields:
        return (
            f"not a query parameter: {name} belongs in the JSON body "
            f"({json.dumps({name: _as_json(value)})}); nothing was done"
        )
    if not declared:
        return "unknown query parameter: this operation takes none"
    return f"unknown query parameter; this operation takes {', '.join(sorted(declared))}"


def _as_json(value: str) -> Any:
    """`true`, `3` as JSON would have them; anything else as the string it is."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, bool | int | float) else value
