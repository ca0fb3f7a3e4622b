"""No import circle under `service/`, the worker loop imports no feature, and the API-key check
loads none; no module of the tests (or the benchmarks) imports a conftest.

Every `import` of a `service` module counts, wherever it is written: at module level, inside a
function, or under `if TYPE_CHECKING:`. A function-level import still runs, and one that closes
a circle only hides it (the reader still has two modules that need each other); a
`TYPE_CHECKING` import that closes one is the same circle in the types. Function-level imports
that close no circle are allowed (the CLI keeps FastAPI and SQLAlchemy out of
`ledgerlink --help` that way). Importing `a.b.c` also imports the packages `a` and `a.b`, so
those count too.

The graph is read with `ast` from the source, never by importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Modules every feature may use; the worker loop and its context may use nothing else.
WORKER_LOOP = ("service.worker", "service.context")
SHARED = {
    "service",
    "service.context",
    "service.contracts",
    "service.db",
    "service.logging",
    "service.metrics",
    "service.settings",
}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of `package` under `root`."""
    found: dict[str, Path] = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name an import statement in the file names (each `from x import y` gives
    both `x` and `x.y`: `y` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):  # every statement: module level, functions, TYPE_CHECKING
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (and their parent packages)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for name in imported_names(path, module):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in modules and candidate != module:
                    targets.add(candidate)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "; ".join(edges)


def test_no_import_circle_under_service() -> None:
    graph = import_graph(ROOT, "service")
    assert len(graph) > 50, "the scan found too few modules to mean anything"
    found = cycles(graph)
    assert found == [], "\n".join(describe(graph, c) for c in found)


def test_the_worker_loop_imports_no_feature() -> None:
    """The registry (service/tasks.py) imports the features; the loop and its context do not."""
    graph = import_graph(ROOT, "service")
    for module in WORKER_LOOP:
        assert graph[module] <= SHARED, (module, sorted(graph[module] - SHARED))


def loaded_by(graph: dict[str, set[str]], module: str) -> set[str]:
    """Every module importing `module` loads, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


# The features the API-key check must never load: it runs before every route, the worker's
# and the console's included, and needs nothing but the settings and the keys. A feature's
# settings model is part of the settings (`Settings` declares its environment variables from
# it), so it may be loaded, with its package: both must then import nothing of their feature.
NOT_FOR_AUTH = ("service.crm", "service.ingest", "service.worker", "service.console")


def _settings_model(name: str) -> bool:
    return name.endswith(".settings")


def test_the_api_key_check_loads_no_feature() -> None:
    graph = import_graph(ROOT, "service")
    loaded = loaded_by(graph, "service.auth")
    assert "service.keys" in loaded, "the scan found too little to mean anything"
    settings_models = {name for name in loaded if _settings_model(name)}
    # The packages a settings model is loaded through.
    their_packages = {
        ".".join(name.split(".")[:i])
        for name in settings_models
        for i in range(2, name.count(".") + 1)
    }
    found = sorted(
        name
        for name in loaded - settings_models - their_packages
        for feature in NOT_FOR_AUTH
        if name == feature or name.startswith(f"{feature}.")
    )
    assert found == [], f"service.auth loads {found}"
    # ... and those settings models, and their packages, load no feature code of their own.
    for name in settings_models | their_packages:
        feature_code = {
            target
            for target in graph[name]
            if target.startswith(NOT_FOR_AUTH) and target not in settings_models | their_packages
        }
        assert feature_code == set(), (name, sorted(feature_code))


def test_loaded_by_follows_imports_through_other_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert loaded_by(graph, "a") == {"b", "c"}
    assert loaded_by(graph, "c") == set()


def test_the_scan_finds_circles_however_the_import_is_written(tmp_path: Path) -> None:
    """The checker itself: circles through a function-level import, a TYPE_CHECKING import, a
    relative import and a package __init__ are all found; a one-way import is not one."""
    files = {
        "pkg/__init__.py": "from pkg import d\n",
        "pkg/a.py": "def f() -> None:\n    from pkg.b import thing\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
        "pkg/c.py": "import pkg.b\n",
        "pkg/d.py": "from pkg.sub import e\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/e.py": "X = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg", "pkg.b"}
    # d imports pkg.sub.e, so the packages pkg (whose __init__ imports d) and pkg.sub too.
    assert graph["pkg.d"] == {"pkg", "pkg.sub", "pkg.sub.e"}
    assert sorted(cycles(graph)) == [["pkg", "pkg.d"], ["pkg.a", "pkg.b"]]


def conftest_imports(root: Path, package: str) -> dict[str, list[str]]:
    """Module of `package` -> the conftest modules it imports, for those importing any."""
    found: dict[str, list[str]] = {}
    for module, path in module_names(root, package).items():
        conftests = set()
        for name in imported_names(path, module):
            parts = name.split(".")
            if "conftest" in parts:
                conftests.add(".".join(parts[: parts.index("conftest") + 1]))
        if conftests:
            found[module] = sorted(conftests)
    return found


def test_no_test_imports_a_conftest() -> None:
    """A conftest holds fixtures, which pytest hands to the tests of its folder and below; what
    a test imports (keys, settings, factories, queries) is in a plain module, tests/support/
    or a folder's support.py. Importing a conftest runs it a second time under another name
    and ties one folder's tests to another's fixtures."""
    assert len(module_names(ROOT, "tests")) > 100, "the scan found too few modules"
    found = conftest_imports(ROOT, "tests") | conftest_imports(ROOT, "bench")
    assert found == {}, "\n".join(f"{m} imports {', '.join(c)}" for m, c in found.items())


def test_the_scan_finds_a_conftest_however_it_is_imported(tmp_path: Path) -> None:
    files = {
        "tests/__init__.py": "",
        "tests/conftest.py": "KEY = 1\n",
        "tests/a/__init__.py": "",
        "tests/a/conftest.py": "from tests.support import helper\n",
        "tests/a/test_names.py": "from tests.conftest import KEY\n",
        "tests/a/test_module.py": "from tests.a import conftest\n",
        "tests/a/test_relative.py": "from .conftest import thing\n",
        "tests/a/test_plain.py": "import tests.conftest\n",
        "tests/a/test_late.py": "def f() -> None:\n    from ..conftest import KEY\n",
        "tests/support.py": "from tests.a.support import helper\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert conftest_imports(tmp_path, "tests") == {
        "tests.a.test_names": ["tests.conftest"],
        "tests.a.test_module": ["tests.a.conftest"],
        "tests.a.test_relative": ["tests.a.conftest"],
        "tests.a.test_plain": ["tests.conftest"],
        "tests.a.test_late": ["tests.conftest"],
    }
