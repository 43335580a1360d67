"""URL resolution order and redaction (spec 01). Pure: no database."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert "hunter2" not in str(err.value)
    assert "mysql://root:***@h/db" in str(err.value)


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
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
