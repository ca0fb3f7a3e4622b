"""Bearer API keys with scopes (read < write < admin), compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Forbidden, Unauthorized
from service.settings import ApiKey, Scope, Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from LEDGERLINK_API_KEYS")

# `openapi_extra` of an operation that takes no API key (probes; the webhook, which is signed
# instead): client generators and linters read a missing `security` as "unknown", not "none".
NO_API_KEY: dict[str, Any] = {"security": []}


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


def find_key(settings: Settings, presented: str) -> ApiKey | None:
    """Check every key, always, so the time taken says nothing about which one matched."""
    found: ApiKey | None = None
    candidate = presented.encode()
    for key in settings.parsed_api_keys.values():
        if hmac.compare_digest(key.secret.encode(), candidate):
            found = key
    return found


def require(scope: Scope) -> Any:
    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        settings: Settings = request.app.state.settings
        if not settings.parsed_api_keys:
            raise Unauthorized(
                "no API keys are configured on this server; set LEDGERLINK_API_KEYS",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized(
                "missing bearer token: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        key = find_key(settings, credentials.credentials)
        if key is None:
            raise Unauthorized("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if scope not in key.scopes:
            raise Forbidden(f"this key lacks the '{scope}' scope")
        return Principal(name=key.name, scopes=key.scopes)

    return Depends(dependency)


ReadKey = Annotated[Principal, require("read")]
WriteKey = Annotated[Principal, require("write")]
AdminKey = Annotated[Principal, require("admin")]
