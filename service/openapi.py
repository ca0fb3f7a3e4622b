"""`python -m service.openapi write|check`: openapi.yaml is generated from the app, never edited."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from service.main import create_app
from service.settings import load_settings

TARGET = Path(__file__).resolve().parents[1] / "openapi.yaml"


def render() -> str:
    app = create_app(load_settings(docs_enabled=True, log_level="WARNING"))
    spec: dict[str, Any] = app.openapi()
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "check"
    text = render()
    if mode == "write":
        TARGET.write_text(text)
        print(f"wrote {TARGET.name}")
        return 0
    if not TARGET.exists() or TARGET.read_text() != text:
        print("openapi.yaml is out of date with the app: run `make openapi` and commit it")
        return 1
    print("openapi.yaml matches the app")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
