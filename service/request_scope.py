"""What any route may be handed without naming a feature: the settings, the engine and the
request's one transaction (`ConnDep`). service/deps.py adds the features' long-lived objects;
this module stays below every feature, so service/auth.py, which needs only the settings,
loads none of them.

The lifespan installs one runtime on the application (service/deps.py); this module and
that one are the only readers of `app.state`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Protocol

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.settings import Settings
from service.transaction import begin


class Core(Protocol):
    """The part of the runtime every request may use (service.deps.Runtime has it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def engine(self) -> AsyncEngine: ...


async def get_core(request: Request) -> Core:
    # These accessors are coroutines: FastAPI runs a plain function dependency in its thread
    # pool, a round trip between threads per dependency per request for an attribute read.
    core: Core = request.app.state.runtime
    return core


CoreDep = Annotated[Core, Depends(get_core)]


async def get_settings(core: CoreDep) -> Settings:
    return core.settings


async def get_engine(core: CoreDep) -> AsyncEngine:
    return core.engine


async def get_connection(
    engine: Annotated[AsyncEngine, Depends(get_engine)],
) -> AsyncIterator[AsyncConnection]:
    """The request's one transaction. Committed after the endpoint returns and before the
    response is sent (scope="function"), so a 2xx means the work is on disk; any exception
    rolls everything back. Nothing else in a request commits."""
    async with begin(engine) as conn:
        yield conn


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
ConnDep = Annotated[AsyncConnection, Depends(get_connection, scope="function")]
