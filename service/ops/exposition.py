"""Prometheus exposition for the API's /metrics and for the worker's own port.

The worker (`ledgerlink worker`) has no API, yet its counters (reconcile runs, posting-to-status
latency, CRM deliveries, conflicts) live in its own process: it serves them itself, with a
liveness probe, on LEDGERLINK_WORKER_METRICS_PORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.metrics import DB_POOL, DB_POOL_MAX, READY
from service.ops.gauges import refresh_gauges
from service.ops.readiness import ReadinessSources, readiness
from service.settings import Settings


async def metrics_response(sources: ReadinessSources) -> Response:
    # Backlogs and readiness live in PostgreSQL: read them at scrape time, in every process.
    await refresh_gauges(sources.engine)
    READY.set(1 if (await readiness(sources)).status == "ready" else 0)
    _pool_gauges(sources.engine, sources.settings)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _pool_gauges(engine: AsyncEngine, settings: Settings) -> None:
    pool = engine.pool
    if isinstance(pool, QueuePool):
        DB_POOL.labels("in_use").set(pool.checkedout())
        DB_POOL.labels("idle").set(pool.checkedin())
        # service.db.create_engine allows as many overflow connections as the pool size.
        DB_POOL_MAX.set(2 * settings.db_pool_size)


def worker_metrics_app(sources: ReadinessSources, stopping: asyncio.Event) -> Starlette:
    async def metrics(_: Request) -> Response:
        return await metrics_response(sources)

    async def healthz(_: Request) -> Response:
        # Answered from the worker's own event loop: a loop blocked by a runaway task fails it.
        if stopping.is_set():
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


class MetricsPortTaken(Exception):
    """The worker's metrics port cannot be bound; the message names the setting."""


def bind_metrics_socket(host: str, port: int) -> socket.socket:
    """Bind before the worker starts, so a port in use stops start-up with one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MetricsPortTaken(
            f"invalid setting LEDGERLINK_WORKER_METRICS_PORT: cannot listen on {host}:{port} "
            f"({exc.strerror}); choose a free port"
        ) from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


class _ServerWithoutSignalHandlers(uvicorn.Server):
    """A uvicorn server sharing the worker's event loop: the worker owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def worker_metrics_server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",  # worker.metrics.listening says where it listens
        access_log=False,
        lifespan="off",
        http="h11",
        timeout_keep_alive=5,
    )
    return _ServerWithoutSignalHandlers(config)
