"""What client tooling needs from openapi.yaml, checked without Node: every operation says how
it is authenticated and how a client error looks, and the document names its servers and
licence. CI runs Redocly's recommended lint as well (`make openapi-lint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC: dict[str, Any] = yaml.safe_load((REPO / "openapi.yaml").read_text())
OPERATIONS = [
    (f"{method.upper()} {path}", operation)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    if method in {"get", "put", "post", "patch", "delete"}
]
UNAUTHENTICATED = {
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "POST /v1/webhooks/sage/postings",
}


@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[n for n, _ in OPERATIONS])
def test_every_operation_declares_its_security_and_a_client_error(
    name: str, operation: dict[str, Any]
) -> None:
    assert "security" in operation, f"{name}: no `security` (use [] when it takes no key)"
    assert (operation["security"] == []) == (name in UNAUTHENTICATED), name
    assert any(code.startswith("4") for code in operation["responses"]), name


def test_document_names_servers_and_licence() -> None:
    assert SPEC["servers"] == [{"url": "/", "description": SPEC["servers"][0]["description"]}]
    assert SPEC["info"]["license"] == {"name": "Apache-2.0", "identifier": "Apache-2.0"}
    assert "Apache License" in (REPO / "LICENSE").read_text()
