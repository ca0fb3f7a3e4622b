"""The API keys every test app is configured with, and the header that presents one."""

from __future__ import annotations

READ_KEY = "test-read-key-000000000000"
WRITE_KEY = "test-write-key-00000000000"
ADMIN_KEY = "test-admin-key-00000000000"
# LEDGERLINK_API_KEYS of the test apps (tests/support/settings.py).
API_KEYS = {
    READ_KEY: {"name": "reader", "scopes": ["read"]},
    WRITE_KEY: {"name": "writer", "scopes": ["write"]},
    ADMIN_KEY: {"name": "admin", "scopes": ["admin"]},
}


def auth(key: str) -> dict[str, str]:
    """The request headers presenting `key`."""
    return {"Authorization": f"Bearer {key}"}
