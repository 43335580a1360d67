"""One hierarchy of expected failures, each carrying its process exit code.

Exit-code contract (documented in docs/cli.md):

* 0  success / equal
* 1  the work ran but found differences or a child failed (``WorkFailed``)
* 2  usage, input-data or infrastructure error detected before anything was changed
* 130 interrupted (Ctrl-C)

Commands raise these; the CLI catches them in one place, prints the message (never a
traceback unless ``--debug``) and exits with ``exit_code``.
"""

from __future__ import annotations

import logging
import sys
import traceback

from ta_lab2.redaction import redact


class TaLabError(Exception):
    """Base class of every expected failure. The message is shown to the user as is."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(TaLabError):
    """A command-line argument is invalid (names the parameter, the value and the rule)."""


class ConfigError(TaLabError):
    """Configuration (database URL, config file, environment) is unusable."""


class DatabaseError(TaLabError):
    """The database is unreachable or its schema is not what this code expects."""


class InputDataError(TaLabError):
    """An input file is not in the expected format at all (refused before writing)."""


class WorkFailed(TaLabError):
    """The work ran to completion but some of it failed or was rejected."""

    exit_code = 1


def report_failure(exc: BaseException, *, debug: bool = False) -> int:
    """Tell the user on stderr why a command stopped and return its exit code: the message
    of an expected failure (exit code its own), ``interrupted`` (130), or the one-line
    summary of an unexpected exception (1) — with the traceback (the whole exception chain)
    only when ``debug``. Every password in messages and tracebacks is redacted."""
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    if debug:
        _report_traceback(redact("".join(traceback.format_exception(exc))).rstrip())
    if isinstance(exc, TaLabError):
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    if not debug:
        print(f"internal error: {redact(f'{type(exc).__name__}: {exc}')} (run with --debug for the traceback)",
              file=sys.stderr)
    return 1


def _report_traceback(text: str) -> None:
    """Through logging (console and log file) once logging is set up, else on stderr."""
    log = logging.getLogger("ta_lab2")
    if log.hasHandlers():
        log.error("%s", text)
    else:
        print(text, file=sys.stderr)
