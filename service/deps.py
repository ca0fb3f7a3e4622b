"""Request-scoped dependencies: what the lifespan built (typed), and the one transaction per
request.

The lifespan builds one `Runtime`; this module (with service/request_scope.py, the part of it
that names no feature: the settings, the engine, the request's transaction) is the only reader
of `app.state`, so routes ask for typed parts of it (`SettingsDep`, `IngestDep`, ...) instead
of reaching into an attribute bag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from service.console.session import SessionKeys
from service.crm.tasks import DispatcherTask
from service.ingest.service import WebhookIngest
from service.ops.readiness import ReadinessSources
from service.request_scope import ConnDep as ConnDep
from service.request_scope import EngineDep as EngineDep
from service.request_scope import SettingsDep as SettingsDep
from service.request_scope import get_engine as get_engine
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
    def readiness_sources(self) -> ReadinessSources:
        return ReadinessSources(self.settings, self.engine, self.dispatcher)


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


async def get_ingest(runtime: RuntimeDep) -> WebhookIngest:
    return runtime.ingest


async def get_worker(runtime: RuntimeDep) -> Worker | None:
    return runtime.worker


async def get_readiness_sources(runtime: RuntimeDep) -> ReadinessSources:
    return runtime.readiness_sources


IngestDep = Annotated[WebhookIngest, Depends(get_ingest)]
WorkerDep = Annotated[Worker | None, Depends(get_worker)]
ReadinessDep = Annotated[ReadinessSources, Depends(get_readiness_sources)]
