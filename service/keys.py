"""API keys: what LEDGERLINK_API_KEYS configures (each key's secret, name and scopes) and who
a request's key names (`Principal`). service/auth.py checks them on requests."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

Scope = Literal["read", "write", "admin"]


class ApiKey:
    """One configured API key: its secret, a display name for audit trails, its scopes."""

    def __init__(self, secret: str, name: str, scopes: frozenset[str]) -> None:
        self.secret = secret
        self.name = name
        self.scopes = scopes


@dataclass(frozen=True)
class Principal:
    """Who a request's API key names, and what it may do (the key without its secret)."""

    name: str
    scopes: frozenset[str]


def parse_api_keys(raw: str) -> dict[str, ApiKey]:
    """LEDGERLINK_API_KEYS: `{"<key>": ["read", ...]}` or
    `{"<key>": {"name": "alice", "scopes": [...]}}`, by secret. A ValueError says what is wrong."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object like {"<key>": ["read", "write"]}')
    keys: dict[str, ApiKey] = {}
    for secret, spec in data.items():
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:8]
        name = f"key-{fingerprint}"
        scopes = spec
        if isinstance(spec, dict):
            name = str(spec.get("name") or name)
            scopes = spec.get("scopes")
        if not isinstance(scopes, list) or not all(s in ("read", "write", "admin") for s in scopes):
            raise ValueError(f"scopes of key {name} must be a list of read/write/admin")
        if len(secret) < 16:
            raise ValueError(f"key {name} is shorter than 16 characters")
        granted = set(scopes)
        # admin implies write implies read: an admin key can do what a reader can.
        if "admin" in granted:
            granted |= {"write", "read"}
        if "write" in granted:
            granted.add("read")
        keys[secret] = ApiKey(secret, name, frozenset(granted))
    return keys
