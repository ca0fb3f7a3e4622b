"""What every worker task is given: the process's settings, engine and HTTP client.

Built once at start-up (the API's lifespan, or `ledgerlink worker`). A leaf: features' `tasks.py`
import it, and it imports no feature, so neither it nor the worker loop closes an import circle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings

# One pass of a task: how many items it processed (0 = idle, so its loop sleeps).
Task = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    engine: AsyncEngine
    http: httpx.AsyncClient
