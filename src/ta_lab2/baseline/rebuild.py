"""Phase 3 of a capture: rebuild the tables with the pipeline's own runners, as a user would
run them (``subprocess.run`` of the seed's scripts), reproducing how the snapshot was built."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import psycopg
from psycopg import sql

from ta_lab2.baseline import metadata_tracker as meta
from ta_lab2.baseline.naming import aux_schema
from ta_lab2.db.connect import Target
from ta_lab2.db.locks import WRITER_LOCKS
from ta_lab2.db.tables import BAR_TABLES, BARS_1D, EMA_TABLES
from ta_lab2.redaction import redact
from ta_lab2.db.locks import ENV_LOCKS_HELD
from ta_lab2.launch.process import die_with_parent
from ta_lab2.timeframes import V2_DEFAULT_PERIODS

log = logging.getLogger(__name__)
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ALL_LOCKS = tuple(name for name, _ in WRITER_LOCKS["baseline"])  # held for the children too
RUNNERS = (
    ("bars", "bars/run_all_bar_builders.py", "--full-rebuild", "run_all_bar_builders-latest.json"),
    ("emas", "emas/run_all_ema_refreshes.py", "--full-refresh", "run_all_ema_refreshes-latest.json"),
)


@dataclass(frozen=True)
class ChildRun:
    name: str
    argv: list[str]  # redacted
    exit_code: int | None
    duration_s: float
    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class RebuildSettings:
    """What the runners are told: where to write, how long a child may run, how to log."""

    output_dir: Path
    timeout_s: float
    log_level: str
    verbose: bool = False
    scratch_schema: str | None = None
    executor: str = "local"  # passed to the runners: --executor, and --scheduler when set
    scheduler: str | None = None


def rebuild_config(conn: psycopg.Connection, suffix: str, tables: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Runner arguments that make the rebuild reproduce what the snapshot holds, read from the
    snapshotted state tables (they list every (id, tf[, period]) that was built, also those
    that produced no rows): the 1D time zone, non-canonical timeframes, and the EMA periods
    when they are not the refreshers' defaults. Returns the arguments and any warning."""
    aux = aux_schema(suffix)
    bars: list[str] = []
    emas: list[str] = []
    warnings: list[str] = []
    tz = conn.execute(sql.SQL("SELECT DISTINCT tz FROM {}").format(sql.Identifier(aux, "cmc_price_bars_1d_state"))).fetchall()
    if len(tz) == 1 and tz[0][0] != "UTC":
        bars += ["--tz", tz[0][0]]
    elif len(tz) > 1:
        warnings.append(f"the 1D table was built with several time zones {sorted(t[0] for t in tz)}; rebuilding in UTC")
    non_canonical = False
    for table in tables:
        if table == BARS_1D:
            continue
        state = sql.Identifier(aux, f"{table}_state")
        non_canonical |= bool(conn.execute(sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} s JOIN dim_timeframe d USING (tf) WHERE NOT d.is_canonical)").format(state)).fetchone()[0])
    if non_canonical:
        bars.append("--include-non-canonical")
        emas.append("--include-non-canonical")
    lut = tuple(r[0] for r in conn.execute("SELECT period FROM dim_period ORDER BY 1").fetchall())
    built: dict[str, tuple[int, ...]] = {}
    for table in tables:
        if table in EMA_TABLES.values():
            rows = conn.execute(sql.SQL("SELECT DISTINCT period FROM {} ORDER BY 1").format(
                sql.Identifier(aux, f"{table}_state"))).fetchall()
            if rows:
                built[table] = tuple(r[0] for r in rows)
    defaults = {t: (V2_DEFAULT_PERIODS if t == EMA_TABLES["v2"] else lut) for t in built}
    if any(set(p) != set(defaults[t]) for t, p in built.items()):
        sets = {p for p in built.values()}
        union = sorted({x for p in sets for x in p})
        emas += ["--periods", ",".join(map(str, union))]
        if len(sets) > 1:
            warnings.append(f"EMA tables were built with different period lists {sorted(set(sets))}; rebuilding all with {union}")
    return {"bars": bars, "emas": emas}, warnings


def selected_builders(tables: Sequence[str]) -> dict[str, list[str]]:
    """Per runner with a table among ``tables``, the arguments that make it rebuild those
    tables only (``--builders`` / ``--only``; none when it rebuilds all of its family). A runner absent from the
    result has nothing to rebuild: the capture neither snapshots nor compares the tables it
    would otherwise rewrite."""
    selection = {}
    for name, registry, option in (("bars", BAR_TABLES, "--builders"), ("emas", EMA_TABLES, "--only")):
        builders = [builder for builder, table in registry.items() if table in tables]
        if builders:
            selection[name] = [] if len(builders) == len(registry) else [option, ",".join(builders)]
    return selection


def runner_argv(script: str, ids: list[int] | None, flag: str, settings: RebuildSettings,
                extra: Sequence[str] = ()) -> list[str]:
    argv = [sys.executable, str(SCRIPTS / script), "--ids", "all" if ids is None else ",".join(map(str, ids)), flag,
            "--timeout", str(int(settings.timeout_s)), "--output-dir", str(settings.output_dir / "runs"),
            "--log-level", settings.log_level, *extra]
    if settings.scratch_schema:
        argv += ["--schema", settings.scratch_schema]
    if settings.verbose:
        argv.append("--verbose")
    argv += ["--executor", settings.executor, *(["--scheduler", settings.scheduler] if settings.scheduler else [])]
    return argv


def planned_commands(ids: list[int] | None, settings: RebuildSettings, tables: Sequence[str]) -> list[str]:
    """The runners' command lines (redacted), for a dry run."""
    selection = selected_builders(tables)
    return [" ".join(meta.redacted_argv(runner_argv(script, ids, flag, settings, selection[name])))
            for name, script, flag, _ in RUNNERS if name in selection]


def rebuild(target: Target, ids: list[int] | None, settings: RebuildSettings, tables: Sequence[str],
            extra: dict[str, list[str]] | None = None) -> list[ChildRun]:
    """The runners of ``tables`` through ``subprocess.run``, each told to rebuild those tables
    only (:func:`selected_builders`; URL in the environment, the capture's locks passed down,
    each child's own process group killed on its timeout). A failed bar rebuild does not stop
    the EMA step."""
    selection = selected_builders(tables)
    env = target.child_env()
    env[ENV_LOCKS_HELD] = ",".join(ALL_LOCKS)
    runs = []
    for name, script, flag, summary_file in RUNNERS:
        if name not in selection:
            continue
        argv = runner_argv(script, ids, flag, settings, [*selection[name], *(extra or {}).get(name, [])])
        started = time.perf_counter()
        log.info("rebuild: %s", " ".join(meta.redacted_argv(argv)))
        try:
            proc = subprocess.run(argv, env=env, timeout=settings.timeout_s * 12 + 60,
                                  capture_output=not settings.verbose, text=True, start_new_session=True,
                                  preexec_fn=die_with_parent)
            code, message = proc.returncode, "" if proc.returncode == 0 else redact((proc.stderr or "")[-2000:])
        except subprocess.TimeoutExpired:
            code, message = None, "timed out"
        summary = _read_json(settings.output_dir / "runs" / summary_file) if code is not None else {}
        runs.append(ChildRun(name, meta.redacted_argv(argv), code, time.perf_counter() - started, code == 0, summary,
                             message))
    return runs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
