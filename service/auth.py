"""Bearer API keys with scopes (read < write < admin), compared in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.types import Scope as AsgiScope

from service.errors import Forbidden, Unauthorized
from service.keys import ApiKey, Principal, Scope
from service.request_scope import SettingsDep
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from LEDGERLINK_API_KEYS")

# `openapi_extra` of an operation that takes no API key (probes; the webhook, which is signed
# instead): client generators and linters read a missing `security` as "unknown", not "none".
NO_API_KEY: dict[str, Any] = {"security": []}


def find_key(settings: Settings, presented: str) -> ApiKey | None:
    """Check every key, always, so the time taken says nothing about which one matched."""
    found: ApiKey | None = None
    candidate = presented.encode()
    for key in settings.parsed_api_keys.values():
        if hmac.compare_digest(key.secret.encode(), candidate):
            found = key
    return found


def authenticate(settings: Settings, scheme: str | None, token: str | None) -> ApiKey:
    """The configured key presented as `Authorization: <scheme> <token>`, or a 401."""
    if not settings.parsed_api_keys:
        raise Unauthorized(
            "no API keys are configured on this server; set LEDGERLINK_API_KEYS",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token or (scheme or "").lower() != "bearer":
        raise Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = find_key(settings, token)
    if key is None:
        raise Unauthorized("unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return key


def check_before_input(settings: Settings, signed_paths: frozenset[str], scope: AsgiScope) -> None:
    """A request to the API that brings input (a body or a query string) must show a valid key
    before any of it is read (the scope is checked later, by the route): a stranger's upload
    costs nothing, and a stranger learns that a key is needed, not which parameters a route
    takes (service.query_parameters). A signed path (the webhook) is signed over its body
    instead, and has its own limits."""
    path: str = scope["path"]
    if not path.startswith("/v1/") or path in signed_paths:
        return
    if not _has_body(scope) and not scope.get("query_string"):
        return
    headers = dict(scope.get("headers", []))
    scheme, token = get_authorization_scheme_param(
        headers.get(b"authorization", b"").decode("latin-1")
    )
    authenticate(settings, scheme, token)


def _has_body(scope: AsgiScope) -> bool:
    headers = dict(scope.get("headers", []))
    return headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers


def require(scope: Scope) -> Any:
    async def dependency(
        settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        key = authenticate(
            settings,
            credentials.scheme if credentials else None,
            credentials.credentials if credentials else None,
        )
        if scope not in key.scopes:
            raise Forbidden(f"this key lacks the '{scope}' scope")
        return Principal(name=key.name, scopes=key.scopes)

    return Depends(dependency)


ReadKey = Annotated[Principal, require("read")]
WriteKey = Annotated[Principal, require("write")]
AdminKey = Annotated[Principal, require("admin")]
