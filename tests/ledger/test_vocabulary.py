"""The ledger's words have one definition (service/ledger/vocabulary.py): what cannot be
produced from it is held against it here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ledgerlink_exporter import sage

from service.ledger import vocabulary as v

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "service" / "ledger" / "vocabulary.py"
WORD_SETS = {
    "posting types": set(v.POSTING_TYPES),
    "settling posting types": set(v.POSTING_TYPES) - {v.INVOICE},
    "allocation kinds": set(v.ALLOCATION_KINDS),
    "derived states": set(v.DERIVED_STATES),
    "history sources": set(v.HISTORY_SOURCES),
    "outbox sources": set(v.OUTBOX_SOURCES),
}


def test_every_posting_type_says_what_it_does_to_an_invoice() -> None:
    for posting_type in v.POSTING_TYPES:
        assert (posting_type in v.COUNTS_AS) != (posting_type in (v.INVOICE, v.CREDIT)), (
            posting_type
        )
    assert set(v.COUNTS_AS.values()) | set(v.CREDIT_KINDS) | {v.UNCOUNTED} == set(
        v.ALLOCATION_KINDS
    )


def test_every_derived_state_has_a_label_and_a_sagelink_fallback() -> None:
    assert list(v.DEFAULT_STATUS_LABELS) == list(v.DERIVED_STATES)
    assert list(v.SAGELINK_FALLBACK) == list(v.DERIVED_STATES)
    assert set(v.SAGELINK_FALLBACK.values()) <= set(v.DERIVED_STATES)
    assert set(v.OUTBOX_SOURCES) <= set(v.HISTORY_SOURCES)


def _released_checks(name: str) -> list[str]:
    """The condition of every CHECK constraint called `name` in the migrations."""
    found = []
    for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "CheckConstraint"
                and any(
                    k.arg == "name" and ast.literal_eval(k.value) == name for k in node.keywords
                )
            ):
                found.append(ast.literal_eval(node.args[0]))
    return found


def test_the_migrations_check_what_the_vocabulary_says() -> None:
    """A released revision cannot change: a word added to the vocabulary needs a migration
    whose constraint says the same (the newest one wins; tests/test_models.py compares the
    catalog the models build with the one the migrations build)."""
    assert _released_checks("ck_postings_type")[-1] == v.sql_in("type", v.POSTING_TYPES)
    assert _released_checks("ck_status_history_source")[-1] == v.sql_in("source", v.HISTORY_SOURCES)


def test_the_exporter_sends_the_types_the_service_takes() -> None:
    """The exporter is its own distribution and keeps its own list of types."""
    assert sage.CUSTOMER_TYPES == set(v.POSTING_TYPES)
    assert sage.SETTLING_TYPES == set(v.POSTING_TYPES) - {v.INVOICE}


def word_lists(source: str, where: str) -> list[str]:
    """`where:line: words` of each literal list, tuple, set or Literal[...] of strings in
    `source` that spells out one of the vocabulary's sets, and of each SQL `IN (...)` list."""
    found = []
    for node in ast.walk(ast.parse(source, filename=where)):
        words: set[str] = set()
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            elements = node.elts
            if elements and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements
            ):
                words = {e.value for e in elements}  # type: ignore[attr-defined]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for listed in re.findall(r"\bIN \(('[^)]*')\)", node.value):
                words = set(re.findall(r"'([^']*)'", listed))
                if words in WORD_SETS.values():
                    break
        for name, word_set in WORD_SETS.items():
            if words == word_set:
                found.append(f"{where}:{getattr(node, 'lineno', 0)}: the {name}")
    return found


def test_the_check_finds_a_list_of_words() -> None:
    source = (
        'T = Literal["SI", "SC", "SR", "SA", "SD", "SP"]\n'
        "CHECK = \"source IN ('sync','manual','bulk','crm')\"\n"
        'FINE = ("SI", "SC")\n'
    )
    assert sorted(word_lists(source, "sample.py")) == [
        "sample.py:1: the posting types",
        "sample.py:2: the history sources",
    ]


def test_no_module_but_the_vocabulary_spells_out_its_words() -> None:
    files = [
        path
        for path in sorted((ROOT / "service").rglob("*.py"))
        if path != OWNER and ".venv" not in path.parts
    ]
    found = [
        hit for path in files for hit in word_lists(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == [], "take them from service.ledger.vocabulary instead:\n" + "\n".join(found)


def test_the_reconcile_statement_derives_only_known_states() -> None:
    """The rules that derive a state are SQL, not vocabulary; the words they write are."""
    from service.reconcile import compute

    statement = compute._COMPUTE
    figures = statement[
        statement.index("figures AS MATERIALIZED") : statement.index("outcome AS MATERIALIZED")
    ]
    derived = set(re.findall(r"(?:THEN|ELSE) '([a-z_]+)'", figures))
    assert derived == set(v.DERIVED_STATES)
    compared = re.findall(r"true_state IN \(([^)]*)\)", statement)
    assert compared
    for listed in compared:
        assert set(re.findall(r"'([a-z_]+)'", listed)) <= set(v.DERIVED_STATES)
