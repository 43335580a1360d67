"""Hiding passwords: every text that may hold a database URL goes through :func:`redact`
before it reaches a log, a terminal, argv or a report."""

from __future__ import annotations

import re

MASK = "***"

# A URI inside free text: its userinfo is taken to end at the LAST '@' before the next URI or
# the end of the line, so a password with raw '@', '/', '#', '?', ':' or spaces is masked
# whole (the cost, rarely, is masking a little more than the password).
_URI_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# An already masked value ("***" followed by a delimiter) is left as it is, so that redacting
# twice (a redacted URL inside a redacted JSON report) changes nothing.
_MASKED = r"\*\*\*(?![^\s\"',;)\]}&])"
_QUERY_PASSWORD = re.compile(rf"(?P<head>[?&]password=)(?:{_MASKED}|[^&\s]*)", re.IGNORECASE)
# key=value connection strings (value quoted with '…' and \' escapes, or up to whitespace),
# also PGPASSWORD=…; not after ?/& (the query form above handles those).
_KEYWORD_PASSWORD = re.compile(
    rf"(?<![?&\w])(?P<head>(?:pg)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|{_MASKED}|\S*)",
    re.IGNORECASE | re.DOTALL,
)
# "password": "…" or 'password': '…' in JSON or a Python dict repr.
_MAPPING_PASSWORD = re.compile(
    r"""(?P<head>(?P<q>["'])(?:pg)?password(?P=q)\s*:\s*)(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""",
    re.IGNORECASE,
)


def _redact_uris(text: str) -> str:
    out: list[str] = []
    pos = 0
    heads = list(_URI_HEAD.finditer(text))
    for i, head in enumerate(heads):
        start = head.end()
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        newline = text.find("\n", start, end)
        end = end if newline < 0 else newline
        segment = text[start:end]
        at = segment.rfind("@")
        colon = segment.find(":", 0, max(at, 0))
        if at < 0 or colon < 0 or colon + 1 == at or any(c.isspace() for c in segment[:colon]):
            continue  # no userinfo, no password, or the ':' is not in a user name
        out.append(text[pos : start + colon + 1])
        out.append(MASK)
        pos = start + at
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> str:
    """``text`` with every password replaced by ``***``: in URIs (raw or percent-encoded,
    whatever characters the password holds), in ``?password=`` / ``&password=`` query
    parameters, in ``password=…`` of key=value strings (quoted or not, also ``PGPASSWORD=``),
    and as a ``"password": "…"`` mapping entry.

    Works on any string (log lines, tracebacks, argv, error messages, reports) and is
    idempotent. It errs on the side of masking too much: a line holding a URI and, later, an
    unrelated ``@`` loses what lies between.
    """
    out = _redact_uris(text)
    out = _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", out)
    out = _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", out)
    return _MAPPING_PASSWORD.sub(lambda m: f"{m['head']}{m['q']}{MASK}{m['q']}", out)
