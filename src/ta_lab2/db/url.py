"""Database URL resolution, validation and redaction.

First hit wins: ``--db-url`` -> ``TA_LAB2_DB_URL`` -> ``TARGET_DB_URL`` -> a ``db_config.env``
file (``TARGET_DB_URL=...`` line) in the working directory or up to 4 parents -> the embedded
server (``EMBEDDED``).

A "URL" is anything libpq accepts as a connection string: a URI (``postgresql://`` or
``postgres://``, optionally with a SQLAlchemy driver suffix such as ``+psycopg``) or a
``key=value`` string (``host=… dbname=… password='…'``). It is checked with libpq's own parser
(:func:`psycopg.conninfo.conninfo_to_dict`) before anything uses it; one that does not parse,
or that libpq would split differently from what its author meant (a raw ``@`` or ``/`` in the
password), is refused with the source it came from and what is wrong, never echoed.

A URL is never shown with its password: :func:`redact` removes every password from any text
(messages, log lines, tracebacks, reports, argv).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ta_lab2.errors import ConfigError
from ta_lab2.redaction import redact  # also imported from here by callers that handle URLs

ENV_URL = "TA_LAB2_DB_URL"
ENV_TARGET_URL = "TARGET_DB_URL"
CONFIG_FILE = "db_config.env"
CONFIG_PARENTS = 4
EMBEDDED = "embedded"

# No "://", no "user:password@" and no "password=" followed by a value in here: redact() would
# mask them in the message itself.
_URL_HINT = (
    "in a URL, percent-encode the password's special characters (@ %40, / %2F, # %23, ? %3F, "
    "% %25, : %3A, space %20); or give a key=value string: host=… port=… dbname=… user=… and the "
    "password in single quotes after password and =; or --db-url embedded for the embedded server"
)


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


def _unquoted(value: str) -> str:
    """``value`` without one pair of matching surrounding quotes (shell-style ``KEY="…"``)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _read_config_file(path: Path) -> str | None:
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key.strip() == ENV_TARGET_URL:
            value = _unquoted(value.strip())
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
    """Apply the resolution order above. ``--db-url embedded`` forces the embedded server.

    Raises ``ConfigError`` (naming the source, never echoing the URL) for a URL libpq cannot
    use as meant.
    """
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


_SCHEME = re.compile(r"^\s*(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def _checked(url: str, source: str) -> ResolvedUrl:
    """Validate ``url`` with libpq's parser; ``ConfigError`` (no echo of the URL) if unusable."""
    if url.strip().lower() == EMBEDDED:
        return ResolvedUrl(None, source)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    scheme = _SCHEME.match(url)
    if scheme is not None:
        base = scheme["scheme"].lower().split("+", 1)[0]
        if base not in _POSTGRES_SCHEMES:
            raise ConfigError(
                f"the database URL from {source} has scheme {scheme['scheme']!r}; "
                "expected postgresql:// or postgres://",
                hint=_URL_HINT,
            )
        url = normalize(url)
        problem = _ambiguous_uri(url)
        if problem:
            raise ConfigError(f"the database URL from {source} {problem}", hint=_URL_HINT)
    try:
        conninfo_to_dict(url)
    except ProgrammingError as exc:
        raise unparsable(source, exc) from None
    return ResolvedUrl(url, source)


def unparsable(source: str, exc: BaseException) -> ConfigError:
    """The error for a connection string libpq refused to parse: libpq's reason with every
    quoted fragment (which may be part of the password) replaced by ``…``."""
    def hide(m: re.Match[str]) -> str:  # keep libpq's own punctuation, such as "="
        return m[0] if len(m[1]) == 1 and not m[1].isalnum() else '"…"'

    reason = re.sub(r'"([^"]*)"', hide, str(exc)).strip()
    return ConfigError(f"the database URL from {source} cannot be parsed: {reason}", hint=_URL_HINT)


def _ambiguous_uri(url: str) -> str | None:
    """Why libpq would read a URI differently from what its author meant, or None.

    libpq ends the user:password part at the first ``@``, and only looks for it before the
    first ``/``: a raw ``@`` in the password turns its tail into the host name, a raw ``/``
    turns the user into the host and the password into port and database name. Neither can
    be what was meant (a host name has no ``@``; a database name with ``@`` must be
    percent-encoded to be told apart).
    """
    rest = url.split("://", 1)[1]
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    path = "" if slash < 0 else rest[slash:].split("?", 1)[0]
    if authority.count("@") > 1:
        return "has more than one raw '@' before its host: an '@' in the password must be written %40"
    if "@" in path:
        return ("has a raw '@' after a '/': a '/' in the password must be written %2F "
                "(and an '@' in a database name %40)")
    return None


def normalize(url: str) -> str:
    """Strip SQLAlchemy driver suffixes (``postgresql+psycopg://``) so libpq accepts the URL."""
    return re.sub(r"^\s*postgres(ql)?(\+\w+)?://", "postgresql://", url, count=1)
