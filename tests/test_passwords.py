"""No password is ever shown, against a real server that checks passwords.

The test server trusts every local connection; this module gives two roles of its own a
password (``scram-sha-256`` rules for just those roles, put first in ``pg_hba.conf`` and
removed afterwards). One password holds each of ``/ # ? @ % :`` and a space; the other only
characters libpq takes raw inside a URI. The real ``ta-lab2`` command then runs with the URL
in every form libpq accepts (percent-encoded URI, ``postgres://``, ``?password=``, a
key=value string, a raw URI), from every source (``--db-url``, ``TA_LAB2_DB_URL``,
``db_config.env``), with the right and a wrong password, and with ``--debug --log-level
DEBUG``; its stdout, stderr and every file it wrote are searched for the password, its
percent-encoded forms and each of its words.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from cli_helpers import Done, base_env, run_all
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ta_lab2.db.embedded import EmbeddedServer

pytestmark = [pytest.mark.db, pytest.mark.slow]

PASSWORD = "Zebra1/Quartz2#Marlin3?Falcon4@Tundra5%Glacier6:Pepper7 Walrus8"
WRONG = "Ibis1/Heron2#Crane3?Egret4@Stork5%Raven6:Finch7 Plover8"
RAW_PASSWORD = "Rawzeb1#Rawqua2?Rawmar3:Rawfal4!"  # nothing libpq would misread in a raw URI
RAW_WRONG = "Rawibi1#Rawher2?Rawcra3:Rawegr4!"
SECRETS = (PASSWORD, WRONG, RAW_PASSWORD, RAW_WRONG)


def _leaks(text: str) -> list[str]:
    """Every form of every password, and every word of one, found in ``text``."""
    found = []
    for secret in SECRETS:
        forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
        forms |= {w for w in re.split(r"[^A-Za-z0-9]+", secret) if len(w) >= 4}
        found += [form for form in forms if form in text]
    return found


class Server:
    """How to reach the test database as the password-protected roles."""

    def __init__(self, socket_dir: Path, dbname: str, role: str, raw_role: str) -> None:
        self.socket_dir, self.dbname, self.role, self.raw_role = socket_dir, dbname, role, raw_role

    def uri(self, password: str, scheme: str = "postgresql") -> str:
        host = quote(str(self.socket_dir), safe="")
        return f"{scheme}://{self.role}:{quote(password, safe='')}@{host}:5432/{self.dbname}"

    def raw_uri(self, password: str, role: str | None = None) -> str:
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{role or self.raw_role}:{password}@{host}:5432/{self.dbname}"

    def query(self, password: str) -> str:
        return (f"postgresql://{self.role}@/{self.dbname}?host={quote(str(self.socket_dir), safe='')}"
                f"&port=5432&password={quote(password, safe='')}")

    def key_value(self, password: str) -> str:
        return make_conninfo(host=str(self.socket_dir), port=5432, dbname=self.dbname, user=self.role,
                             password=password)


def _connects(server: Server, password: str) -> bool:
    try:
        with psycopg.connect(server.key_value(password)):
            return True
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), str(exc)
        return False


@pytest.fixture(scope="module")
def server(pg_server: EmbeddedServer) -> Iterator[Server]:
    suffix = uuid.uuid4().hex[:8]
    dbname, role = f"t_passwords_{suffix}", f"ta_pw_{suffix}"
    raw_role = f"{role}_raw"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        for name, password in ((role, PASSWORD), (raw_role, RAW_PASSWORD)):
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(raw_role)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(role)))
        hba = Path(admin.execute("SHOW hba_file").fetchone()[0])
        original = hba.read_text()
        rules = "".join(f"local all {name} scram-sha-256\n" for name in (role, raw_role))
        hba.write_text(rules + original)
        try:
            admin.execute("SELECT pg_reload_conf()")
            result = Server(pg_server.socket_dir, dbname, role, raw_role)
            # The server applies the reload asynchronously: wait until a wrong password is refused.
            deadline = time.monotonic() + 30
            while _connects(result, WRONG):
                assert time.monotonic() < deadline, "pg_hba.conf reload not applied"
                time.sleep(0.01)
            assert _connects(result, PASSWORD)
            yield result
        finally:
            hba.write_text(original)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            for name in (raw_role, role):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _job(cwd: Path, source: str, url: str, command: list[str]) -> tuple[list[str], Path, dict[str, str]]:
    """``ta-lab2 --debug COMMAND --log-level DEBUG`` with ``url`` given through ``source``."""
    cwd.mkdir(parents=True)
    env = base_env(TA_LAB2_HOME=str(cwd / "home"))
    args = ["--debug", *command, "--log-level", "DEBUG"]
    if source == "--db-url":
        args += ["--db-url", url]
    elif source == "db_config.env":
        (cwd / "db_config.env").write_text(f"# written by the test\nTARGET_DB_URL={url}\n")
    else:
        env[source] = url
    return args, cwd, env


def _written(cwd: Path) -> list[Path]:
    return [p for p in cwd.rglob("*") if p.is_file() and p.name != "db_config.env"]


def _assert_nothing_leaked(done: Done, cwd: Path) -> None:
    assert not _leaks(done.stdout), done.stdout
    assert not _leaks(done.stderr), done.stderr
    files = _written(cwd)
    assert any(p.parent.name == ".logs" for p in files), files  # the command did write its log
    for path in files:
        text = path.read_text(errors="replace")
        assert not _leaks(text), (path, _leaks(text))


# (name, source, form, password, command): form is a Server method name.
GOOD = [
    ("init-uri-env", "TA_LAB2_DB_URL", "uri", PASSWORD, ["init"]),
    ("status-uri-cli", "--db-url", "uri", PASSWORD, ["status"]),
    ("status-postgres-env", "TA_LAB2_DB_URL", "uri:postgres", PASSWORD, ["status"]),
    ("status-query-config", "db_config.env", "query", PASSWORD, ["status"]),
    ("status-kv-cli", "--db-url", "key_value", PASSWORD, ["status"]),
    ("status-kv-config", "db_config.env", "key_value", PASSWORD, ["status"]),
    ("status-raw-env", "TA_LAB2_DB_URL", "raw_uri", RAW_PASSWORD, ["status"]),
    ("load-kv-env", "TA_LAB2_DB_URL", "key_value", PASSWORD, ["load", "--synthetic", "1", "--days", "5"]),
]
BAD_PASSWORD = [
    ("status-uri-cli", "--db-url", "uri", WRONG, ["status"]),
    ("init-uri-env", "TA_LAB2_DB_URL", "uri", WRONG, ["init"]),
    ("status-query-env", "TA_LAB2_DB_URL", "query", WRONG, ["status"]),
    ("status-kv-config", "db_config.env", "key_value", WRONG, ["status"]),
    ("status-raw-cli", "--db-url", "raw_uri", RAW_WRONG, ["status"]),
]


def _url(server: Server, form: str, password: str) -> str:
    name, _, scheme = form.partition(":")
    return server.uri(password, scheme) if scheme else getattr(server, name)(password)


def _runs(server: Server, root: Path, cases: list[tuple[str, str, str, str, list[str]]]) -> dict[str, tuple[Done, Path]]:
    jobs = [_job(root / name, source, _url(server, form, pw), cmd) for name, source, form, pw, cmd in cases]
    return {case[0]: (done, job[1]) for case, job, done in zip(cases, jobs, run_all(jobs), strict=True)}


@pytest.fixture(scope="module")
def good_runs(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Done, Path]]:
    root = tmp_path_factory.mktemp("good")
    first = _runs(server, root, GOOD[:1])  # init before the commands that read the tables
    return first | _runs(server, root, GOOD[1:])


@pytest.fixture(scope="module")
def bad_password_runs(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Done, Path]]:
    return _runs(server, tmp_path_factory.mktemp("bad"), BAD_PASSWORD)


@pytest.mark.parametrize("case", [c[0] for c in GOOD])
def test_right_password_works_and_is_never_shown(good_runs: dict[str, tuple[Done, Path]], case: str) -> None:
    done, cwd = good_runs[case]
    assert done.returncode == 0, (done.stdout, done.stderr)
    _assert_nothing_leaked(done, cwd)
    if case.startswith("status"):
        assert "***" in done.stdout  # where the database lives, password masked
        assert "cmc_price_histories7" in done.stdout


@pytest.mark.parametrize("case", [c[0] for c in BAD_PASSWORD])
def test_wrong_password_fails_without_showing_it(bad_password_runs: dict[str, tuple[Done, Path]], case: str) -> None:
    done, cwd = bad_password_runs[case]
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "password authentication failed" in done.stderr
    assert "Traceback" in done.stderr  # --debug shows the exception chain, redacted
    assert "***" in done.stderr
    _assert_nothing_leaked(done, cwd)


UNUSABLE = [  # (name, source, url builder, words the message must hold)
    ("raw-specials-cli", "--db-url", lambda s: s.raw_uri(PASSWORD, s.role), ["from --db-url", "%40"]),
    ("raw-specials-env", "TA_LAB2_DB_URL", lambda s: s.raw_uri(PASSWORD, s.role), ["from TA_LAB2_DB_URL", "%40"]),
    ("raw-slash-config", "db_config.env", lambda s: s.raw_uri("Zebra1/Quartz2@x", s.role), ["db_config.env", "%2F"]),
    ("raw-space-cli", "--db-url", lambda s: s.raw_uri("Zebra1 Quartz2", s.role), ["from --db-url", "spaces"]),
    ("kv-unterminated-env", "TARGET_DB_URL", lambda s: s.key_value(PASSWORD)[:-1], ["from TARGET_DB_URL", "unterminated"]),
]


@pytest.fixture(scope="module")
def unusable_runs(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Done, Path]]:
    root = tmp_path_factory.mktemp("unusable")
    jobs = [_job(root / name, source, build(server), ["status"]) for name, source, build, _ in UNUSABLE]
    return {case[0]: (done, job[1]) for case, job, done in zip(UNUSABLE, jobs, run_all(jobs), strict=True)}


@pytest.mark.parametrize("case", [c[0] for c in UNUSABLE])
def test_unusable_url_is_refused_naming_its_source_without_echo(
    unusable_runs: dict[str, tuple[Done, Path]], case: str
) -> None:
    done, cwd = unusable_runs[case]
    words = next(c[3] for c in UNUSABLE if c[0] == case)
    assert done.returncode == 2, (done.stdout, done.stderr)
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    assert "internal error" not in done.stderr
    _assert_nothing_leaked(done, cwd)


def test_db_psql_connects_with_the_password_in_its_environment_only(server: Server) -> None:
    """`ta-lab2 db psql` runs the wheel's psql on the URL: the password reaches libpq through
    PGPASSWORD, never psql's argv (which `ps` shows to every user)."""
    from ta_lab2.db.connect import Target, psql_invocation

    for url in (server.uri(PASSWORD), server.key_value(PASSWORD)):
        argv, env = psql_invocation(Target(url, "--db-url"), ["-At", "-c", "SELECT current_user"])
        assert not any(_leaks(a) for a in argv), argv
        assert env["PGPASSWORD"] == PASSWORD
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == server.role, done.stderr
