"""The ``ta-lab2`` command. Each command parses its options, calls one library function,
renders the result and maps it to an exit code (0 ok, 1 work failed / rejected rows,
2 usage or data error, 130 interrupted). Expected failures are ``TaLabError``s, handled in
:func:`main` only."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any, Annotated, Optional

import typer

from ta_lab2 import __version__
from ta_lab2 import flags
from ta_lab2.cli import options as opt
from ta_lab2.redaction import redact
from ta_lab2.errors import TaLabError, UsageError, WorkFailed, report_failure

log = logging.getLogger("ta_lab2")

app = typer.Typer(
    name="ta-lab2",
    help="Daily crypto prices -> multi-timeframe bars and EMAs in PostgreSQL, and a baseline harness "
    "that proves a rebuild computes what it computed before.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="The embedded PostgreSQL server (used when no URL is configured).", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _register_pipeline_commands() -> None:
    from ta_lab2.cli.pipeline_cmds import bars, emas, refresh

    app.command("bars")(bars)
    app.command("emas")(emas)
    app.command("refresh")(refresh)
    from ta_lab2.cli.baseline_cmds import baseline_app, bench, demo

    app.add_typer(baseline_app, name="baseline")
    app.command("demo")(demo)
    app.command("bench")(bench)


_register_pipeline_commands()

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ta-lab2 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    _state["debug"] = debug


def _setup(log_level: str = "WARNING") -> None:
    from ta_lab2.logs import setup_logging

    setup_logging(flags.parse_log_level(log_level))


@app.command()
def init(db_url: opt.DbUrl = None, database: opt.Database = None, schema: opt.Schema = "public", log_level: opt.LogLevel = "WARNING") -> None:
    """Create (idempotently) every table, index and seeded dimension row; record the schema version."""
    _setup(log_level)
    from ta_lab2.cli.render import console
    from ta_lab2.db.connect import connect, resolve_target
    from ta_lab2.db.schema import SCHEMA_VERSION, ensure_schema

    target = resolve_target(db_url, database)
    with connect(target) as conn:
        created = ensure_schema(conn, schema, repair=True)
    state = "created" if created else "already up to date"
    console.print(f"schema {schema!r} version {SCHEMA_VERSION}: {state} — {target.describe()}", highlight=False)


@app.command()
def load(
    files: Annotated[Optional[list[Path]], typer.Argument(help="CoinMarketCap ';' CSV, or generic CSV/Parquet files.", show_default=False)] = None,
    asset_id: Annotated[Optional[int], typer.Option("--id", help="Asset id for CoinMarketCap files (else looked up by name in dim_assets).", show_default=False)] = None,
    synthetic: Annotated[Optional[int], typer.Option("--synthetic", min=1, help="Generate N synthetic assets instead of reading files.", show_default=False)] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Synthetic: history length of the longest asset (calendar days).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Synthetic: random seed (same seed, same data).")] = 1,
    end_date: Annotated[Optional[str], typer.Option("--end-date", help="Synthetic: last day (YYYY-MM-DD or 'today'; default 2025-12-31).", show_default=False)] = None,
    gap_rate: Annotated[float, typer.Option("--gap-rate", min=0.0, max=1.0, help="Synthetic: probability a day starts a gap of 1-5 missing days.")] = 0.01,
    defect_rate: Annotated[float, typer.Option("--defect-rate", min=0.0, max=1.0, help="Synthetic: probability per row of each defect kind.")] = 0.005,
    force: Annotated[bool, typer.Option("--force", help="Load even into an id whose name or symbol in dim_assets differs from the input's.")] = False,
    wait_lock: opt.WaitLock = 0.0,
    db_url: opt.DbUrl = None, database: opt.Database = None,
    schema: opt.Schema = "public",
    log_level: opt.LogLevel = "WARNING",
) -> None:
    """Load daily prices into cmc_price_histories7 (upsert; rejected rows reported and kept).

    Exit code 1 when any row was rejected, 2 when an input is unusable (nothing written).
    """
    _setup(log_level)
    from ta_lab2.cli.render import load_report
    from ta_lab2.db.connect import connect, resolve_target
    from ta_lab2.load.service import load_files, load_synthetic
    from ta_lab2.load.synthetic import SyntheticConfig

    if synthetic is None and not files:
        raise UsageError("load: give input files, or --synthetic N (with --days, --seed)")
    if synthetic is not None and files:
        raise UsageError("load: give either input files or --synthetic, not both")
    if files:
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UsageError(f"load: no such file: {', '.join(missing)}")
    config = None
    if synthetic is not None:
        try:
            config = SyntheticConfig(
                n_assets=synthetic, days=days, seed=seed, end_date=_parse_end_date(end_date),
                gap_rate=gap_rate, defect_rate=defect_rate,
            )
        except ValueError as exc:
            raise UsageError(f"load --synthetic: {exc}") from None
    target = resolve_target(db_url, database)
    with connect(target, autocommit=True) as conn:
        if config is not None:
            report = load_synthetic(conn, config, schema=schema, force=force, wait_lock=wait_lock)
        else:
            report = load_files(conn, files or [], asset_id=asset_id, schema=schema, force=force, wait_lock=wait_lock)
    load_report(report)
    if not report.ok:
        raise WorkFailed(f"{report.rejected} row(s) rejected; see above and table load_rejects")


def _parse_end_date(value: str | None) -> dt.date:
    if value is None:
        return dt.date(2025, 12, 31)
    if value.lower() == "today":
        return dt.datetime.now(dt.timezone.utc).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--end-date: {value!r} is not a date (YYYY-MM-DD or 'today')") from None


@app.command()
def status(
    db_url: opt.DbUrl = None, database: opt.Database = None,
    schema: opt.Schema = "public",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    log_level: opt.LogLevel = "WARNING",
) -> None:
    """Per table: rows, ids, first/last day, state age; and where the database lives."""
    _setup(log_level)
    from ta_lab2.cli.render import print_json, status_table
    from ta_lab2.db.connect import connect, resolve_target
    from ta_lab2.db.status import collect_status

    target = resolve_target(db_url, database)
    with connect(target) as conn:
        result = collect_status(conn, target.describe(), schema)
    print_json(result) if as_json else status_table(result)


@db_app.command("start")
def db_start() -> None:
    """Start the embedded server (initialising it on first use)."""
    from ta_lab2.cli.render import console
    from ta_lab2.db.embedded import EmbeddedServer

    server = EmbeddedServer()
    url = server.ensure_running()
    console.print(f"embedded PostgreSQL running: {redact(url)} (data in {server.pgdata})", highlight=False)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server cleanly (fast shutdown with a checkpoint)."""
    from ta_lab2.cli.render import console
    from ta_lab2.db.embedded import EmbeddedServer

    server = EmbeddedServer()
    stopped = server.stop()
    console.print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


@db_app.command("psql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def db_psql(ctx: typer.Context, db_url: opt.DbUrl = None, database: opt.Database = None) -> None:
    """Open psql (the one that comes with the embedded server) on the database; anything after
    the options goes to psql, e.g. `ta-lab2 db psql --database ta_lab2_demo -c "SELECT 1"`."""
    import os

    from ta_lab2.db.connect import psql_invocation, resolve_target

    argv, env = psql_invocation(resolve_target(db_url, database), list(ctx.args))
    sys.stdout.flush()
    os.execve(argv[0], argv, env)


@db_app.command("status")
def db_status() -> None:
    """Where the embedded server keeps its data and whether it is running."""
    from ta_lab2.cli.render import console
    from ta_lab2.db.embedded import EmbeddedServer

    st = EmbeddedServer().status()
    console.print(f"home: {st.home}\npgdata: {st.pgdata}\ninitialised: {st.initialized}\nrunning: {st.running}", highlight=False)
    if st.url:
        console.print(f"url: {redact(st.url)}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """The ``ta-lab2`` entry point."""
    run_app(app, argv)


#: What the value of an option is called in --help (else the option's last word, upper-cased).
_VALUE_NAMES = {"--db-url": "URL", "--ids": "IDS", "--tz": "ZONE", "--timeout": "SECONDS", "--wait-lock": "SECONDS",
                "--log-level": "LEVEL", "--num-processes": "N", "--synthetic": "N", "--days": "N", "--assets": "N",
                "--seed": "N", "--id": "ID", "--json": "FILE", "--tolerances": "FILE", "--expected-diffs": "FILE",
                "--builders": "NAMES", "--only": "NAMES", "--skip": "NAMES", "--periods": "PERIODS",
                "--tables": "TABLES", "--scenario": "NAME", "--database": "NAME"}


def _name_values(command: Any, parent: Any = None) -> None:
    """Help that reads like a command line: ``--db-url URL``, ``--full-rebuild`` (no
    ``<bool>``/``<str>`` type labels), ``SUFFIX`` for an argument (not ``{suffix}``).
    tests/test_docs.py checks every command's help for the labels this removes."""
    ctx = command.context_class(command, parent=parent, info_name=command.name, **command.context_settings)
    for param in [*command.params, command.get_help_option(ctx)]:  # Typer may vendor click: kinds, not classes
        if param is None:
            continue
        if param.param_type_name == "argument":
            name = param.name.upper()
            param.metavar = name
            # Typer writes a required argument {NAME} in the usage line and its type beside it
            param._usage_display_name = lambda name=name: name
            param.display_type_rich = lambda ctx: None
        elif param.param_type_name == "option" and param.metavar is None:
            long = max(param.opts, key=len)
            param.metavar = "" if param.is_flag else _VALUE_NAMES.get(long, long.rsplit("-", 1)[-1].upper())
    for sub in getattr(command, "commands", {}).values():
        _name_values(sub, ctx)


def run_app(application: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a Typer app and turn every outcome into the documented exit code.

    Typer's own exceptions are recognised by shape (``exit_code`` / ``show``) because Typer
    versions differ in where they define them (click, or a vendored copy).
    """
    command = typer.main.get_command(application)
    _name_values(command)
    try:
        result = command.main(args=argv, prog_name="ta-lab2" if application is app else None, standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - Typer's own outcomes first, then the shared mapping
        name = type(exc).__name__
        if name == "Abort":
            sys.exit(report_failure(KeyboardInterrupt()))
        if name == "Exit" and hasattr(exc, "exit_code"):
            sys.exit(int(exc.exit_code))
        if hasattr(exc, "show") and hasattr(exc, "exit_code") and not isinstance(exc, TaLabError):
            exc.show()  # usage errors: bad option, missing argument
            sys.exit(2 if int(exc.exit_code) in (1, 2) else int(exc.exit_code))
        sys.exit(report_failure(exc, debug=_state["debug"]))
    except KeyboardInterrupt as exc:
        sys.exit(report_failure(exc))
    sys.exit(result if isinstance(result, int) else 0)
