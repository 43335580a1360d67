"""The shared options as Typer parameters, declared once (spelling, help and rules come from
:mod:`ta_lab2.flags`, which the builders' and refreshers' own commands use too)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ta_lab2.flags import HELP


def _schema_name(value: str) -> str:
    from ta_lab2.errors import UsageError
    from ta_lab2.flags import check_schema_name

    try:
        return check_schema_name(value)
    except UsageError as exc:
        raise typer.BadParameter(exc.message.split(": ", 1)[1]) from None


DbUrl = Annotated[Optional[str], typer.Option("--db-url", help=HELP["--db-url"], show_default=False)]
Database = Annotated[Optional[str], typer.Option("--database", help=HELP["--database"], show_default=False)]
Ids = Annotated[Optional[str], typer.Option("--ids", help=HELP["--ids"], show_default=False)]
DryRun = Annotated[bool, typer.Option("--dry-run", help=HELP["--dry-run"])]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help=HELP["--verbose"])]
LogLevel = Annotated[str, typer.Option("--log-level", help=HELP["--log-level"], case_sensitive=False)]
Tz = Annotated[str, typer.Option("--tz", help=HELP["--tz"])]
NumProcesses = Annotated[Optional[int], typer.Option("--num-processes", min=1, help=HELP["--num-processes"], show_default=False)]
WaitLock = Annotated[float, typer.Option("--wait-lock", min=0, help=HELP["--wait-lock"])]
Periods = Annotated[Optional[str], typer.Option("--periods", help=HELP["--periods"], show_default=False)]
Schema = Annotated[str, typer.Option("--schema", help=HELP["--schema"], callback=_schema_name)]
FullRebuild = Annotated[bool, typer.Option("--full-rebuild", help=HELP["--full-rebuild"])]
FullRefresh = Annotated[bool, typer.Option("--full-refresh", help=HELP["--full-refresh"])]
IncludeNonCanonical = Annotated[bool, typer.Option("--include-non-canonical", help=HELP["--include-non-canonical"])]
Executor = Annotated[str | None, typer.Option("--executor", metavar="local|dask", help=HELP["--executor"],
                                                  show_default=False)]
Scheduler = Annotated[str | None, typer.Option("--scheduler", metavar="ADDRESS", help=HELP["--scheduler"],
                                                   show_default=False)]
