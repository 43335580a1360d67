"""URL resolution order, validation and redaction. Pure: no database."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ta_lab2.db.url import redact, resolve_url
from ta_lab2.errors import ConfigError

A = "postgresql://a:pa@h1/db1"
B = "postgresql://b:pb@h2/db2"
C = "postgresql://c:pc@h3/db3"
D = "postgresql://d:pd@h4/db4"


def _config(folder: Path, url: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "db_config.env").write_text(f"# comment\nOTHER=1\nTARGET_DB_URL={url}\n")


def test_cli_url_wins_over_everything(tmp_path: Path) -> None:
    _config(tmp_path, D)
    env = {"TA_LAB2_DB_URL": B, "TARGET_DB_URL": C}
    got = resolve_url(A, env=env, cwd=tmp_path)
    assert (got.url, got.source) == (A, "--db-url")


def test_ta_lab2_env_before_target_env(tmp_path: Path) -> None:
    _config(tmp_path, D)
    got = resolve_url(None, env={"TA_LAB2_DB_URL": B, "TARGET_DB_URL": C}, cwd=tmp_path)
    assert (got.url, got.source) == (B, "TA_LAB2_DB_URL")


def test_target_env_before_config_file(tmp_path: Path) -> None:
    _config(tmp_path, D)
    got = resolve_url(None, env={"TARGET_DB_URL": C}, cwd=tmp_path)
    assert (got.url, got.source) == (C, "TARGET_DB_URL")


def test_config_file_in_cwd(tmp_path: Path) -> None:
    _config(tmp_path, D)
    got = resolve_url(None, env={}, cwd=tmp_path)
    assert got.url == D and got.source.endswith("db_config.env")


@pytest.mark.parametrize("levels, found", [(1, True), (4, True), (5, False)])
def test_config_file_up_to_four_parents(tmp_path: Path, levels: int, found: bool) -> None:
    _config(tmp_path, D)
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(levels)])
    deep.mkdir(parents=True)
    got = resolve_url(None, env={}, cwd=deep)
    assert (got.url == D) is found
    if not found:
        assert got.is_embedded


def test_nothing_configured_means_embedded(tmp_path: Path) -> None:
    got = resolve_url(None, env={}, cwd=tmp_path)
    assert got.is_embedded and got.url is None


def test_empty_env_values_are_ignored(tmp_path: Path) -> None:
    got = resolve_url(None, env={"TA_LAB2_DB_URL": "  ", "TARGET_DB_URL": C}, cwd=tmp_path)
    assert got.url == C


def test_embedded_keyword_forces_embedded(tmp_path: Path) -> None:
    assert resolve_url("embedded", env={"TA_LAB2_DB_URL": B}, cwd=tmp_path).is_embedded


def test_sqlalchemy_driver_suffix_is_normalised(tmp_path: Path) -> None:
    got = resolve_url("postgresql+psycopg2://u:p@h/d", env={}, cwd=tmp_path)
    assert got.url == "postgresql://u:p@h/d"


def test_non_postgres_url_is_refused_without_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_url("mysql://root:hunter2@h/db", env={}, cwd=tmp_path)
    message = str(err.value)
    assert "hunter2" not in message and "root" not in message
    assert "--db-url" in message and "'mysql'" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postgresql://user:s3cret@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://user:@/db?host=/tmp", "postgresql://user:@/db?host=/tmp"),
        ("postgresql://h/db?user=u&password=s3cret&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
        ("host=h user=u password=s3cret dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password='s 3cret' dbname=d", "host=h password=*** dbname=d"),
        ("connecting to postgresql://u:p%40ss@h/d failed", "connecting to postgresql://u:***@h/d failed"),
        ("two: postgres://a:x@h/d and postgresql://b:y@g/e", "two: postgres://a:***@h/d and postgresql://b:***@g/e"),
        # raw special characters: the password runs to the last '@' of the URL's line
        ("postgresql://postgres:Sup3r#Secret!@127.0.0.1:55432/x", "postgresql://postgres:***@127.0.0.1:55432/x"),
        ("at postgresql://u:a/b?c#d:e f@g@h/db: failed", "at postgresql://u:***@h/db: failed"),
        ("postgresql://u:p@h/db\nuser x@y", "postgresql://u:***@h/db\nuser x@y"),
        ("postgresql://h/db failed for role x@y", "postgresql://h/db failed for role x@y"),
        ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:***@h/db"),
        ("host=h password='it\\'s a \\\\ secret' port=5", "host=h password=*** port=5"),
        ("PGPASSWORD=s3cret psql", "PGPASSWORD=*** psql"),
        ("{'user': 'u', 'password': 'it\\'s'}", "{'user': 'u', 'password': '***'}"),
        ('{"password": "a\\"b", "x": 1}', '{"password": "***", "x": 1}'),
        ('"db_url": "host=h password=***",', '"db_url": "host=h password=***",'),  # masked stays masked
        ('"db_url": "postgresql://h/d?password=***",', '"db_url": "postgresql://h/d?password=***",'),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


# --------------------------------------------------------------------------- every libpq form
# The oracle is libpq itself: each form is first shown to carry exactly the password (libpq's
# parser reads it back), then its redaction is compared with the same form built around ***.
SPECIALS = "/#?@%: !'\"\\&="
PASSWORDS = st.text(alphabet=st.sampled_from(SPECIALS + "ab9Z"), min_size=1, max_size=16).map(lambda s: f"Pw{s}9q")
RAW_OK = st.text(alphabet=st.sampled_from("#?:!&='\"ab9Z"), min_size=1, max_size=16).map(lambda s: f"Pw{s}9q")
HOST = quote("/tmp/ta lab2/run", safe="")  # a socket folder, percent-encoded as a URI host


def _hidden(password: str, text: str) -> bool:
    return password not in text and quote(password, safe="") not in text


@settings(max_examples=150, deadline=None)
@given(PASSWORDS, st.sampled_from(["postgresql", "postgres"]))
def test_percent_encoded_uri_is_redacted(password: str, scheme: str) -> None:
    url = f"{scheme}://ta_user:{quote(password, safe='')}@{HOST}:5432/db"
    assert conninfo_to_dict(url)["password"] == password
    assert redact(url) == f"{scheme}://ta_user:***@{HOST}:5432/db"
    assert resolve_url(url, env={}).describe() == f"postgresql://ta_user:***@{HOST}:5432/db (from --db-url)"


@settings(max_examples=150, deadline=None)
@given(RAW_OK)
def test_raw_uri_libpq_accepts_is_redacted(password: str) -> None:
    url = f"postgresql://ta_user:{password}@{HOST}:5432/db"
    assert conninfo_to_dict(url)["password"] == password
    assert redact(f"cannot connect to {url}: failed") == f"cannot connect to postgresql://ta_user:***@{HOST}:5432/db: failed"


@settings(max_examples=150, deadline=None)
@given(PASSWORDS)
def test_query_parameter_is_redacted(password: str) -> None:
    url = f"postgresql://ta_user@/db?host={HOST}&password={quote(password, safe='')}&port=5432"
    assert conninfo_to_dict(url)["password"] == password
    assert redact(url) == f"postgresql://ta_user@/db?host={HOST}&password=***&port=5432"


@settings(max_examples=150, deadline=None)
@given(PASSWORDS)
def test_key_value_string_is_redacted(password: str) -> None:
    conninfo = make_conninfo(host="/tmp/x y", user="ta_user", password=password, dbname="db")
    assert conninfo_to_dict(conninfo)["password"] == password
    assert redact(conninfo) == make_conninfo(host="/tmp/x y", user="ta_user", password="***", dbname="db")
    assert _hidden(password, resolve_url(conninfo, env={}).describe())


@pytest.mark.parametrize(
    "url, what",
    [
        ("postgresql://u:Zebra1 Quartz2@h/db", "cannot be parsed: unexpected spaces"),
        ("postgresql://u:Zebra1@Quartz2@h/db", "'@'"),
        ("postgresql://u:Zebra1/Quartz2@h/db", "'/'"),
        ("postgresql://u:Zebra1/Quartz2?Marlin3@h/db", "cannot be parsed"),
        ("postgresql://u:Zebra1%Quartz2@h/db", "cannot be parsed: invalid percent-encoded token"),
        ("postgresql://u@h/db?password=Zebra1 Quartz2", "cannot be parsed"),
        ("postgresql://u@h/db?password=Zebra1&Quartz2", "cannot be parsed"),
        ("host=h password='Zebra1 Quartz2", "cannot be parsed: unterminated quoted string"),
        ("host=h password=Zebra1 Quartz2", "cannot be parsed"),
    ],
)
def test_unusable_url_is_refused_without_echo(tmp_path: Path, url: str, what: str) -> None:
    """Refused before any connection, naming the source and the problem, echoing no part of it."""
    for source, kwargs in (
        ("--db-url", {"cli_url": url, "env": {}}),
        ("TA_LAB2_DB_URL", {"env": {"TA_LAB2_DB_URL": url}}),
        ("TARGET_DB_URL", {"env": {"TARGET_DB_URL": url}}),
    ):
        with pytest.raises(ConfigError) as err:
            resolve_url(**kwargs, cwd=tmp_path)
        message = str(err.value)
        assert f"from {source}" in message and what in message, message
        assert "Zebra1" not in message and "Quartz2" not in message, message


def test_db_config_env_keeps_quoted_key_value_strings(tmp_path: Path) -> None:
    conninfo = "host=/tmp/x user=u password='a b' dbname=d"
    _config(tmp_path, conninfo)
    assert resolve_url(None, env={}, cwd=tmp_path).url == conninfo
    _config(tmp_path, '"postgresql://u:p@h/d"')
    assert resolve_url(None, env={}, cwd=tmp_path).url == "postgresql://u:p@h/d"
