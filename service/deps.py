"""Request-scoped dependencies: what the lifespan built (typed), and the one transaction per
request.

The lifespan builds one `Runtime`; this module is the only reader of `app.state`, so routes ask
for typed parts of it (`SettingsDep`, `EngineDep`, ...) instead of reaching into an attribute bag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.console.session import SessionKeys
from service.crm.tasks import DispatcherTask
from service.ingest.service import WebhookIngest
from service.ops.readiness import Probed
from service.settings import Settings
from service.worker import Worker


@dataclass(frozen=True)
class Runtime:
    """Everything the API process builds once at start-up and shares between requests."""

    settings: Settings
    engine: AsyncEngine
    ingest: WebhookIngest
    console_keys: SessionKeys
    # The in-process worker (LEDGERLINK_RUN_WORKER) and its CRM dispatcher, else None.
    worker: Worker | None
    dispatcher: DispatcherTask | None

    @property
    def probed(self) -> Probed:
        return Probed(self.settings, self.engine, self.dispatcher)


def install_runtime(app: FastAPI, runtime: Runtime) -> None:
    app.state.runtime = runtime


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    # These accessors are coroutines: FastAPI runs a plain function dependency in its thread
    # pool, a round trip between threads per dependency per request for an attribute read.
    return runtime_of(request.app)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


async def get_engine(runtime: RuntimeDep) -> AsyncEngine:
    return runtime.engine


async def get_ingest(runtime: RuntimeDep) -> WebhookIngest:
    return runtime.ingest


async def get_worker(runtime: RuntimeDep) -> Worker | None:
    return runtime.worker


async def get_probed(runtime: RuntimeDep) -> Probed:
    return runtime.probed


async def get_connection(
    engine: Annotated[AsyncEngine, Depends(get_engine)],
) -> AsyncIterator[AsyncConnection]:
    """The request's one transaction. Committed after the endpoint returns and before the
    response is sent (scope="function"), so a 2xx means the work is on disk; any exception
    rolls everything back. Nothing else in a request commits."""
    async with engine.begin() as conn:
        yield conn


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
IngestDep = Annotated[WebhookIngest, Depends(get_ingest)]
WorkerDep = Annotated[Worker | None, Depends(get_worker)]
ProbedDep = Annotated[Probed, Depends(get_probed)]
ConnDep = Annotated[AsyncConnection, Depends(get_connection, scope="function")]
