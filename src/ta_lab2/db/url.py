"""Database URL resolution and redaction (spec 01, "URL resolution").

First hit wins: ``--db-url`` -> ``TA_LAB2_DB_URL`` -> ``TARGET_DB_URL`` -> a ``db_config.env``
file (``TARGET_DB_URL=...`` line) in the working directory or up to 4 parents -> the embedded
server (``EMBEDDED``). A URL is never shown with its password: use :func:`redact`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ta_lab2.errors import ConfigError
from ta_lab2.redaction import redact  # also imported from here by callers that handle URLs

ENV_URL = "TA_LAB2_DB_URL"
ENV_TARGET_URL = "TARGET_DB_URL"
CONFIG_FILE = "db_config.env"
CONFIG_PARENTS = 4
EMBEDDED = "embedded"


@dataclass(frozen=True)
class ResolvedUrl:
    """Where the URL came from and what it is. ``url`` is ``None`` for the embedded server."""

    url: str | None
    source: str  # "--db-url", "TA_LAB2_DB_URL", "TARGET_DB_URL", "<path>/db_config.env", "embedded"

    @property
    def is_embedded(self) -> bool:
        return self.url is None

    def describe(self) -> str:
        """Human description with the password redacted."""
        if self.url is None:
            return "embedded server"
        return f"{redact(self.url)} (from {self.source})"


def _read_config_file(path: Path) -> str | None:
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key.strip() == ENV_TARGET_URL:
            value = value.strip().strip('"').strip("'")
            if value:
                return value
    return None


def find_config_file(start: Path | None = None) -> Path | None:
    """The nearest ``db_config.env`` in ``start`` (default: cwd) or up to 4 parents."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *list(here.parents)[:CONFIG_PARENTS]]:
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_url(
    cli_url: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ResolvedUrl:
    """Apply the resolution order of spec 01. ``--db-url embedded`` forces the embedded server."""
    env = dict(os.environ) if env is None else env
    if cli_url:
        return _checked(cli_url, "--db-url")
    for name in (ENV_URL, ENV_TARGET_URL):
        value = env.get(name, "").strip()
        if value:
            return _checked(value, name)
    config = find_config_file(cwd)
    if config is not None:
        value = _read_config_file(config)
        if value:
            return _checked(value, str(config))
    return ResolvedUrl(None, EMBEDDED)


def _checked(url: str, source: str) -> ResolvedUrl:
    if url.strip().lower() == EMBEDDED:
        return ResolvedUrl(None, source)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        raise ConfigError(
            f"{source}: {redact(url)!r} is not a PostgreSQL URL",
            hint="use postgresql://user:password@host:5432/dbname, or 'embedded'",
        )
    return ResolvedUrl(normalize(url), source)


def normalize(url: str) -> str:
    """Strip SQLAlchemy driver suffixes (``postgresql+psycopg://``) so libpq accepts the URL."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url, count=1)
