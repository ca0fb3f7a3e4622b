"""The advisory-lock namespaces and the dirty-marking statement each have one home in
service/ledger/, and every lock the service takes has a key of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from service.ledger import locks

ROOT = Path(__file__).resolve().parents[2]
NAMESPACES = {locks.JOBS, locks.CRM_INVOICE, locks.MIRROR, locks.SIGN_IN}


def test_every_namespace_is_its_own() -> None:
    assert len(NAMESPACES) == 4
    for namespace in NAMESPACES:
        # Four letters "LL..", a positive int4 (the key pg_advisory_xact_lock(int, int) takes).
        assert 0 < namespace < 2**31
        assert namespace.to_bytes(4, "big").startswith(b"LL")


def test_idempotency_keys_lock_per_actor_and_key() -> None:
    one = locks.idempotency_key("alice", "k1")
    assert -(2**63) <= one < 2**63
    assert one == locks.idempotency_key("alice", "k1")
    assert len({one, locks.idempotency_key("bob", "k1"), locks.idempotency_key("alice", "k2")}) == 3


def _service_files() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text()
        for path in sorted((ROOT / "service").rglob("*.py"))
        if not str(path.relative_to(ROOT)).startswith("service/ledger/")
    }


def namespace_literals(source: str, where: str) -> list[str]:
    return [
        f"{where}:{node.lineno}: {node.value:#x}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
        and node.value >> 16 == 0x4C4C
    ]


def test_no_module_but_the_ledger_names_a_lock_namespace() -> None:
    assert namespace_literals("X = 0x4C4C4A42\nY = 0x4C4D\n", "sample.py") == [
        "sample.py:1: 0x4c4c4a42"
    ]
    files = _service_files()
    assert len(files) > 50
    found = [hit for where, source in files.items() for hit in namespace_literals(source, where)]
    assert found == [], "take it from service.ledger.locks instead:\n" + "\n".join(found)


def test_no_module_but_the_ledger_writes_the_dirty_mark() -> None:
    statement = re.compile(r"INSERT\s+INTO\s+dirty_invoices", re.IGNORECASE)
    found = [where for where, source in _service_files().items() if statement.search(source)]
    assert found == [], "use service.ledger.dirty.mark_dirty instead: " + ", ".join(found)
