"""Hiding passwords: every text that may hold a database URL goes through :func:`redact`
before it reaches a log, a terminal, argv or a report."""

from __future__ import annotations

import re

_PASSWORD_IN_NETLOC = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/?#@\s]*):(?P<pw>[^@/?#\s]*)@")
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&]password=)[^&\s]*", re.IGNORECASE)
_PASSWORD_KEYWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|[^\s&]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace every password in ``text`` (URLs, ``?password=``, ``password=...`` DSNs) by ***.

    Works on any string (log lines, argv, error messages), not only on a bare URL.
    """
    out = _PASSWORD_IN_NETLOC.sub(lambda m: f"{m['head']}:***@" if m["pw"] else m[0], text)
    out = _PASSWORD_IN_QUERY.sub(lambda m: f"{m['head']}***", out)
    return _PASSWORD_KEYWORD.sub(lambda m: f"{m['head']}***", out)
