"""Options shared by every command, declared once (same spelling and help everywhere)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ta_lab2.errors import UsageError

DbUrl = Annotated[
    Optional[str],
    typer.Option(
        "--db-url",
        help="PostgreSQL URL. Default: TA_LAB2_DB_URL, TARGET_DB_URL, db_config.env, else the embedded server. "
        "'embedded' forces the embedded server.",
        show_default=False,
    ),
]
Ids = Annotated[
    Optional[str],
    typer.Option("--ids", help="'all', or ids separated by commas or spaces: '1,52,825' or '1 52 825'.", show_default=False),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More detail; stream children's output.")]
LogLevel = Annotated[
    str,
    typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.", case_sensitive=False),
]
Tz = Annotated[str, typer.Option("--tz", help="Time zone whose calendar dates are bar boundaries.")]
NumProcesses = Annotated[
    Optional[int], typer.Option("--num-processes", min=1, help="Ids processed at once (default: CPU count).", show_default=False)
]
WaitLock = Annotated[
    float, typer.Option("--wait-lock", min=0, help="Seconds to wait for another writer of the same tables.")
]
Periods = Annotated[
    Optional[str],
    typer.Option("--periods", help="EMA periods: a comma list, or 'lut' for every dim_period row. "
                 "Default: dim_period (v2: 9,10,21,50,100,200).", show_default=False),
]
Schema = Annotated[str, typer.Option("--schema", help="Database schema holding the tables.")]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level: {value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def parse_ids(value: str | None, *, required: bool = True) -> list[int] | None:
    """``all`` -> None (every id); ``'1,52 825'`` -> [1, 52, 825]. Errors name the bad token."""
    if value is None or not value.strip():
        if required:
            raise UsageError("--ids is required: 'all' or a list such as '1,52,825'")
        return None
    text = value.strip()
    if text.lower() == "all":
        return None
    ids: list[int] = []
    for token in text.replace(",", " ").split():
        try:
            ident = int(token)
        except ValueError:
            raise UsageError(f"--ids: {token!r} is not an integer id") from None
        if ident <= 0:
            raise UsageError(f"--ids: {token!r} is not a positive id")
        if ident not in ids:
            ids.append(ident)
    return ids


def check_tz(value: str) -> str:
    """``--tz`` must be an IANA zone name (``UTC``, ``Europe/Paris``)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--tz: {value!r} is not a known time zone (e.g. UTC, America/New_York)") from None
    return value
