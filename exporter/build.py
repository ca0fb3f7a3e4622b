"""Builds the exporter's two deliverables into a directory (`make exporter` -> dist/):

- the wheel, `ledgerlink_exporter-<version>-py3-none-any.whl` (`pip install` it, with
  `[odbc]` for `push --dsn`);
- `ledgerlink-exporter.pyz`, one file holding the exporter and its pure-Python dependencies,
  run as `python ledgerlink-exporter.pyz push ...` on any PC with Python 3.11+. Its
  dependencies are resolved for Windows, the Sage PC, which only adds colorama; they run
  anywhere. pyodbc is a compiled module and cannot live in a zip: for `--dsn`, install the
  wheel with its odbc extra instead.

Usage: python exporter/build.py [--uv PATH] OUT_DIR
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ZIPAPP_NAME = "ledgerlink-exporter.pyz"
ZIPAPP_PLATFORM = "x86_64-pc-windows-msvc"


def build(out_dir: Path, uv: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("ledgerlink_exporter-*.whl"):
        old.unlink()
    _run(uv, "build", "--package", "ledgerlink-exporter", "--wheel", "--out-dir", str(out_dir))
    [wheel] = out_dir.glob("ledgerlink_exporter-*.whl")
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "app"
        _run(
            uv,
            "pip",
            "install",
            "--quiet",
            "--target",
            str(target),
            "--python-version",
            "3.11",
            "--python-platform",
            ZIPAPP_PLATFORM,
            "--only-binary",
            ":all:",
            str(wheel),
        )
        shutil.rmtree(target / "bin", ignore_errors=True)
        for cache in target.rglob("__pycache__"):
            shutil.rmtree(cache)
        pyz = out_dir / ZIPAPP_NAME
        zipapp.create_archive(
            target,
            pyz,
            interpreter="/usr/bin/env python3",
            main="ledgerlink_exporter.cli:main",
            compressed=True,
        )
    return wheel, pyz


def _run(*command: str) -> None:
    subprocess.run(command, check=True, cwd=ROOT.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--uv", default=shutil.which("uv") or "uv")
    args = parser.parse_args()
    wheel, pyz = build(args.out_dir, args.uv)
    print(f"built {wheel}\nbuilt {pyz}")


if __name__ == "__main__":
    main()
