"""CRM delivery rules."""

from __future__ import annotations

from typing import Any


def readiness_problems(app_state: Any) -> tuple[list[str], list[str]]:
    """(problems that fail readiness, warnings that do not) about the CRM connection."""
    return [], []
