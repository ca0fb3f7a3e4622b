"""The composition root of both processes: the API (create_app() and its lifespan: engine,
embedded database, worker) and the standalone worker (`ledgerlink worker`). Everything shared
is built here once and handed on, typed: to requests through service/deps.py, to worker tasks
through service/tasks.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import cache, partial

import httpx
from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from service import __version__
from service.auth import check_before_input
from service.baddebts.router import router as baddebts_router
from service.console.router import install_console
from service.console.session import SessionKeys
from service.context import WorkerContext
from service.crm import tasks as crm_tasks
from service.crm.router import router as crm_router
from service.crm.tasks import DispatcherTask
from service.db import create_engine, database
from service.deps import Runtime, install_runtime
from service.exception_handlers import (
    document_problems,
    install_error_handlers,
    install_openapi_problems,
)
from service.ingest.rejections import REJECT_REASONS
from service.ingest.router import WEBHOOK_PATH
from service.ingest.router import router as ingest_router
from service.ingest.service import WebhookIngest
from service.invoices.router import router as invoices_router
from service.logging import configure_logging, get_logger
from service.metrics import KnownValues, initialise_label_sets
from service.middleware.stack import add_http_middleware
from service.ops.exposition import bind_metrics_socket, worker_metrics_app, worker_metrics_server
from service.ops.readiness import ReadinessSources
from service.ops.router import router as ops_router
from service.ops.startup import startup_checks
from service.picklist.router import router as picklist_router
from service.picklist.service import required_values
from service.query_parameters import refuse_unknown_query_parameters
from service.reconcile.router import router as reconcile_router
from service.settings import Settings, load_settings
from service.tasks import worker_tasks
from service.worker import Worker

log = get_logger(__name__)

API_ROUTERS: tuple[APIRouter, ...] = (
    ops_router,
    ingest_router,
    reconcile_router,
    invoices_router,
    picklist_router,
    crm_router,
    baddebts_router,
)


def build_worker(ctx: WorkerContext, database_url: str) -> tuple[Worker, DispatcherTask]:
    """The worker with every task, and its CRM dispatcher (whose halt readiness reports)."""
    dispatcher = crm_tasks.dispatcher(ctx)
    worker = Worker(
        worker_tasks(ctx, dispatcher),
        database_url=database_url,
        sweep_seconds=ctx.settings.worker_sweep_seconds,
    )
    return worker, dispatcher


def lifespan_for(
    settings: Settings, console_keys: SessionKeys
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    return partial(lifespan, settings=settings, console_keys=console_keys)


@asynccontextmanager
async def lifespan(
    app: FastAPI, *, settings: Settings, console_keys: SessionKeys
) -> AsyncIterator[None]:
    # Closed last: it stops the embedded PostgreSQL started when no database URL is set.
    database_scope = contextlib.ExitStack()
    db = await asyncio.to_thread(database_scope.enter_context, database(settings))
    database_url = db.url
    if db.embedded is not None:
        log.info("database.embedded.started", pgdata=str(db.embedded.pgdata))
    engine = create_engine(database_url, pool_size=settings.db_pool_size)
    # OpenCRM is the only thing it calls; OpenCrmClient sends its User-Agent on every request.
    http = httpx.AsyncClient(timeout=settings.opencrm_timeout_seconds)
    worker: Worker | None = None
    dispatcher: DispatcherTask | None = None
    worker_task: asyncio.Task[None] | None = None
    # Undone by the finally even when start-up itself fails or is cancelled (a Ctrl-C while
    # starting): the embedded PostgreSQL must not be left running.
    try:
        if not settings.parsed_api_keys:
            log.warning(
                "auth.no_keys",
                detail="LEDGERLINK_API_KEYS is empty: every protected endpoint answers 401",
            )
        await startup_checks(engine, settings)
        initialise_label_sets(known_values(settings, api=True))
        if settings.run_worker:
            ctx = WorkerContext(settings=settings, engine=engine, http=http)
            worker, dispatcher = build_worker(ctx, database_url)
        install_runtime(
            app,
            Runtime(
                settings=settings,
                engine=engine,
                ingest=WebhookIngest(settings),
                console_keys=console_keys,
                worker=worker,
                dispatcher=dispatcher,
            ),
        )
        if worker is not None:
            worker_task = asyncio.create_task(worker.run(), name="ledgerlink-worker")
        yield
    finally:
        if worker is not None and worker_task is not None:
            worker.stop()
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
    # Only settings go into them, so they are made with the app (and their warning about a
    # missing secret is logged when the app is made); the lifespan hands them on.
    console_keys = SessionKeys(settings)
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
        lifespan=lifespan_for(settings, console_keys),
        # Every route's: an unknown query parameter is a 422 naming it (the rule's scope is in
        # service/query_parameters.py).
        dependencies=[Depends(refuse_unknown_query_parameters)],
    )
    install_error_handlers(app)
    add_http_middleware(
        app, settings, partial(check_before_input, settings, frozenset({WEBHOOK_PATH}))
    )
    _include_routers(app)
    install_openapi_problems(app)
    return app


def _include_routers(app: FastAPI) -> None:
    for router in API_ROUTERS:
        app.include_router(router)
    install_console(app)


def known_values(settings: Settings, *, api: bool) -> KnownValues:
    """The label values a process knows before anything happens (service/metrics.py)."""
    return KnownValues(
        settings=settings,
        reject_reasons=REJECT_REASONS,
        statuses=required_values(settings.ledger),
        http_operations=http_operations() if api else (),
    )


@cache
def http_operations() -> tuple[tuple[str, str, str], ...]:
    """(route template, method, status) for every answer the API documents: each operation of
    its OpenAPI document with each of its responses. The code alone decides them, so they are
    worked out once per process (the document takes a tenth of a second to build)."""
    routes = [route for router in API_ROUTERS for route in router.routes]
    document = document_problems(
        get_openapi(title="ledgerlink", version=__version__, routes=routes)
    )
    # The document writes `{number}` where the route (and so the metric label) has
    # `{number:path}`.
    templates = {route.path_format: route.path for route in routes if isinstance(route, APIRoute)}
    return tuple(
        (templates[path], method.upper(), status)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    )


async def run_worker(settings: Settings, database_url: str) -> None:
    """`ledgerlink worker`: the worker, and its metrics and liveness on its own port."""
    sock = bind_metrics_socket(settings.host, settings.worker_metrics_port)
    initialise_label_sets(known_values(settings, api=False))
    engine = create_engine(database_url, pool_size=settings.db_pool_size)
    async with httpx.AsyncClient(timeout=settings.opencrm_timeout_seconds) as http:
        ctx = WorkerContext(settings=settings, engine=engine, http=http)
        worker, dispatcher = build_worker(ctx, database_url)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        sources = ReadinessSources(settings, engine, dispatcher)
        server = worker_metrics_server(worker_metrics_app(sources, worker.stopping))
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="worker-metrics")
        log.info("worker.metrics.listening", host=settings.host, port=settings.worker_metrics_port)
        try:
            await worker.run()
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
            await engine.dispose()
