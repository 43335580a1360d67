"""The shared command-line options' spelling, help and value rules, without any CLI
framework: the ``ta-lab2`` commands (Typer, :mod:`ta_lab2.cli.options`) and the builders' and
refreshers' own commands (argparse, :mod:`ta_lab2.work.command`) both build their options from
here, so an option reads and behaves the same on every command. Nothing here imports a layer
above :mod:`ta_lab2.errors`."""

from __future__ import annotations

import re

from ta_lab2.errors import UsageError

#: Help text of each shared option, by flag.
HELP: dict[str, str] = {
    "--db-url": "PostgreSQL URL (postgresql://…) or libpq key=value string. Default: TA_LAB2_DB_URL, "
                "TARGET_DB_URL, db_config.env, else the embedded server. 'embedded' forces the embedded server.",
    "--database": "A database of the embedded server, by name (created if missing), e.g. ta_lab2_demo, the "
                  "demo's. Instead of --db-url.",
    "--ids": "'all', or ids separated by commas or spaces: '1,52,825' or '1 52 825'.",
    "--dry-run": "Print the plan and change nothing.",
    "--verbose": "More detail; stream children's output.",
    "--log-level": "What the console shows: DEBUG, INFO, WARNING or ERROR (the log file under the output "
                   "folder keeps INFO and above, DEBUG too with DEBUG).",
    "--tz": "Time zone whose calendar dates are bar boundaries.",
    "--num-processes": ("Processes building ids at once (default: the CPU count, shared among a runner's "
                        "children running at once; at most one process per 8 ids)."),
    "--wait-lock": "Seconds to wait for another writer of the same tables.",
    "--periods": "EMA periods: a comma list, or 'lut' for every dim_period row. "
                 "Default: dim_period (v2: 9,10,21,50,100,200).",
    "--schema": "Database schema holding the tables.",
    "--full-rebuild": "Delete the selected ids' rows and state, then rebuild.",
    "--full-refresh": "Delete the selected ids' rows and state, then recompute.",
    "--include-non-canonical": "Also the non-canonical timeframes of dim_timeframe.",
    "--summary-json": "Write the JSON summary here.",
    "--executor": "Where the work units run: 'local' (this machine's processes) or 'dask' (tasks on a Dask "
                  "cluster). Default: TA_LAB2_EXECUTOR, else local.",
    "--scheduler": "The Dask scheduler's address (tcp://host:8786) for --executor dask. Default: "
                   "TA_LAB2_DASK_SCHEDULER, else a cluster started on this machine for the run.",
}

EXECUTORS = ("local", "dask")
ENV_EXECUTOR = "TA_LAB2_EXECUTOR"
ENV_SCHEDULER = "TA_LAB2_DASK_SCHEDULER"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


#: A schema name the pipeline accepts: a plain lower-case SQL identifier (no quoting needed).
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def check_schema_name(name: str, option: str = "--schema", what: str = "schema") -> str:
    """``name`` if it is a plain lower-case identifier of at most 63 bytes, else a usage error
    naming ``option`` (quoting would make ``'public; DROP …'`` a valid, surprising name)."""
    if not _SCHEMA_NAME.match(name) or len(name.encode()) > 63:
        raise UsageError(f"{option}: {name!r} is not a {what} name (lower-case letters, digits and _, "
                         "not starting with a digit, at most 63 characters)")
    return name


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


def parse_periods(value: str | None) -> tuple[int, ...] | None:
    """``--periods``: None (the refresher's default), ``lut`` (every dim_period row, returned
    as an empty tuple) or a comma list of positive integers."""
    if value is None or not value.strip():
        return None
    if value.strip().lower() == "lut":
        return ()
    out: list[int] = []
    for token in value.replace(" ", ",").split(","):
        if not token:
            continue
        try:
            p = int(token)
        except ValueError:
            raise UsageError(f"--periods: {token!r} is not an integer period") from None
        if p < 1:
            raise UsageError(f"--periods: {p} is not a positive period")
        if p not in out:
            out.append(p)
    return tuple(out)


def resolve_executor(executor: str | None, scheduler: str | None,
                     env: dict[str, str] | None = None) -> tuple[str, str | None]:
    """(executor, scheduler address or None) from ``--executor`` / ``--scheduler``, else
    ``TA_LAB2_EXECUTOR`` / ``TA_LAB2_DASK_SCHEDULER``; ``--scheduler`` alone means dask. The
    scheduler is None for local, and for dask without one (a cluster of this machine)."""
    import os

    environ = os.environ if env is None else env
    chosen = (executor or environ.get(ENV_EXECUTOR) or ("dask" if scheduler else "local")).strip().lower()
    if chosen not in EXECUTORS:
        source = "--executor" if executor else ENV_EXECUTOR
        raise UsageError(f"{source}: {chosen!r} is not one of {', '.join(EXECUTORS)}")
    if chosen == "local":
        if scheduler:
            raise UsageError("--scheduler: only with --executor dask")
        return "local", None
    address = (scheduler or environ.get(ENV_SCHEDULER) or "").strip() or None
    return "dask", address
