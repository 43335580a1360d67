"""Shared fixtures: one real embedded PostgreSQL server per test session, a fresh database
per test module (spec 06: real PostgreSQL, never a mock).

The session runs hermetically: its own ``TA_LAB2_HOME`` in a fresh folder under /tmp, no URL
from the user's environment, and the server's test-only settings (``TA_LAB2_EMBEDDED_NO_FSYNC``:
no fsync, no full-page writes, ``initdb --no-sync``) because test data is disposable.

Run in parallel (pytest-xdist, ``-n auto --dist loadscope`` in pyproject.toml), every worker is
its own session: its own home, server and databases, so workers share nothing but the CPUs, and
a module's tests stay together on one worker (module-scoped databases are built once).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from ta_lab2.db.connect import Target, connect
from ta_lab2.db.embedded import ENV_FAST, ENV_HOME, EmbeddedServer

_USER_ENV = ("TA_LAB2_DB_URL", "TARGET_DB_URL")


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the package once, before any worker starts, as an install does: in a fresh
    editable checkout under ``PYTHONDONTWRITEBYTECODE`` every process the tests start (the
    CLI, the runners, their fork servers) would otherwise compile every module it imports."""
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        from ta_lab2.bench import cache_bytecode

        cache_bytecode()


@pytest.fixture(scope="session")
def pg_home() -> Iterator[Path]:
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to mode 0700 whenever
    # another session starts, which would lock the server's unprivileged user out (as root).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    home = Path(tempfile.mkdtemp(prefix=f"ta_lab2_test_{worker}_", dir="/tmp"))
    saved = {k: os.environ.get(k) for k in (*_USER_ENV, ENV_HOME, ENV_FAST)}
    for key in _USER_ENV:
        os.environ.pop(key, None)
    os.environ[ENV_HOME] = str(home)
    os.environ[ENV_FAST] = "1"
    yield home
    shutil.rmtree(home, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def pg_server(pg_home: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(pg_home)
    server.ensure_running()
    yield server
    server.stop()


def _db_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", Path(str(request.node.fspath)).stem.lower())[:30]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


def make_database(server: EmbeddedServer, name: str) -> Target:
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return Target(server.url(name), "test", server.home)


def drop_database(server: EmbeddedServer, name: str) -> None:
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def db(pg_server: EmbeddedServer, request: pytest.FixtureRequest) -> Iterator[Target]:
    """A fresh, empty database for this test module."""
    name = _db_name(request)
    target = make_database(pg_server, name)
    yield target
    drop_database(pg_server, name)


@pytest.fixture
def conn(db: Target) -> Iterator[psycopg.Connection]:
    with connect(db) as c:
        yield c


@pytest.fixture
def fresh_db(pg_server: EmbeddedServer, request: pytest.FixtureRequest) -> Iterator[Target]:
    """A fresh database for one test (for tests that need an empty schema)."""
    name = _db_name(request)
    target = make_database(pg_server, name)
    yield target
    drop_database(pg_server, name)
