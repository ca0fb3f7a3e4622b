"""The application: create_app() and its lifespan (engine, embedded database, worker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service import __version__
from service.auth import check_before_body
from service.db import create_engine, database
from service.errors import install_error_handlers, install_openapi_problems
from service.logging import configure_logging, get_logger
from service.middleware import BodyBudget, RequestContextMiddleware
from service.settings import Settings, load_settings
from service.worker import Worker, WorkerContext

log = get_logger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Closed last: it stops the embedded PostgreSQL started when no database URL is set.
    database_scope = contextlib.ExitStack()
    db = await asyncio.to_thread(database_scope.enter_context, database(settings))
    database_url = db.url
    if db.embedded is not None:
        log.info("database.embedded.started", pgdata=str(db.embedded.pgdata))
    engine = create_engine(database_url, pool_size=settings.db_pool_size)
    # OpenCRM is the only thing it calls; OpenCrmClient sends its User-Agent on every request.
    http = httpx.AsyncClient(timeout=settings.opencrm_timeout_seconds)
    app.state.engine = engine
    app.state.http = http
    app.state.database_url = database_url
    app.state.worker = None
    worker_task: asyncio.Task[None] | None = None
    if not settings.parsed_api_keys:
        log.warning(
            "auth.no_keys",
            detail="LEDGERLINK_API_KEYS is empty: every protected endpoint answers 401",
        )
    from service.ops.startup import startup_checks

    await startup_checks(app)
    if settings.run_worker:
        ctx = WorkerContext(settings=settings, engine=engine, http=http, database_url=database_url)
        worker = Worker(ctx)
        app.state.worker = worker
        worker_task = asyncio.create_task(worker.run(), name="ledgerlink-worker")
    try:
        yield
    finally:
        if worker_task is not None:
            app.state.worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker_task, timeout=30)
        await http.aclose()
        await engine.dispose()
        await asyncio.to_thread(database_scope.close)
        if db.embedded is not None:
            log.info("database.embedded.stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    # FastAPIOffline serves the docs' assets itself (no CDN), but insists on a schema URL: with
    # the docs switched off there is no schema URL, no docs page, and plain FastAPI.
    make = FastAPIOffline if settings.docs_enabled else FastAPI
    app = make(
        title="ledgerlink",
        version=__version__,
        summary="Sage 50 -> OpenCRM payment statuses that tell write-offs from payments",
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
        # Relative: the docs page and generated clients talk to whichever host served them.
        servers=[{"url": "/", "description": "The ledgerlink service that serves this document"}],
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        receive_timeout=settings.request_timeout_seconds,
        max_body_bytes=settings.max_body_bytes,
        body_budget=BodyBudget(settings.max_inflight_body_bytes),
        check_before_body=partial(check_before_body, settings),
    )
    _include_routers(app)
    install_openapi_problems(app)
    return app


def _include_routers(app: FastAPI) -> None:
    from service.baddebts.router import router as baddebts_router
    from service.console.router import install_console
    from service.crm.router import router as crm_router
    from service.ingest.router import router as ingest_router
    from service.invoices.router import router as invoices_router
    from service.ops.router import router as ops_router
    from service.picklist.router import router as picklist_router
    from service.reconcile.router import router as reconcile_router

    for router in (
        ops_router,
        ingest_router,
        reconcile_router,
        invoices_router,
        picklist_router,
        crm_router,
        baddebts_router,
    ):
        app.include_router(router)
    install_console(app)
