"""Renderings of result objects for people (Rich tables on stdout) and machines (JSON)."""

from __future__ import annotations

import dataclasses
import decimal
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ta_lab2.db.status import DatabaseStatus

if TYPE_CHECKING:
    from ta_lab2.launch.results import RunSummary
    from ta_lab2.load.service import LoadReport

# Not on a terminal (pipes, CI logs): wide enough that tables are not folded.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _age(ts: dt.datetime | None) -> str:
    if ts is None:
        return "-"
    seconds = (dt.datetime.now(dt.timezone.utc) - ts).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def command_name() -> str:
    """How to run ``ta-lab2`` again, for the commands a message suggests: ``ta-lab2`` when that
    name on ``PATH`` is the program running, else the path it was run by (``.venv/bin/ta-lab2``
    from a virtual environment that is not activated), or ``… -m ta_lab2``."""
    program = Path(sys.argv[0])
    if program.name == "ta-lab2":
        on_path = shutil.which("ta-lab2")
        if on_path is not None and Path(on_path).resolve() == program.resolve():
            return "ta-lab2"
        return str(program)
    if program.name == "__main__.py":
        python = Path(sys.executable)
        shown = os.path.relpath(python) if python.is_relative_to(Path.cwd()) else str(python)
        return f"{shown} -m ta_lab2"
    return "ta-lab2"


def status_table(status: DatabaseStatus) -> None:
    console.print(f"[bold]database[/]: {status.location}")
    console.print(f"[bold]server[/]: PostgreSQL {status.server_version}")
    if not status.initialized:
        console.print("[yellow]schema not initialised[/] — run [bold]ta-lab2 init[/] (or any load)")
    else:
        console.print(f"[bold]schema version[/]: {status.schema_version} (code: {status.code_schema_version})")
    table = Table(show_lines=False)
    for col, justify in (("table", "left"), ("rows", "right"), ("ids", "right"), ("first day", "left"),
                         ("last day", "left"), ("state updated", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in status.tables:
        if not t.exists:
            table.add_row(t.table, "[dim]missing[/]", "", "", "", "")
            continue
        table.add_row(t.table, _fmt_int(t.rows), _fmt_int(t.ids), str(t.first_day or "-"), str(t.last_day or "-"),
                      _age(t.state_updated_at))
    console.print(table)


def load_report(report: LoadReport, *, max_rejects: int = 20) -> None:
    table = Table(title="load")
    for col in ("input", "format", "read", "loaded", "updated", "unchanged", "rejected", "new ids"):
        table.add_column(col, justify="left" if col in ("input", "format") else "right")
    for f in report.files:
        table.add_row(f.source, f.format, _fmt_int(f.rows_read), _fmt_int(f.counts.inserted),
                      _fmt_int(f.counts.updated), _fmt_int(f.counts.unchanged),
                      f"[red]{f.rejected:,}[/]" if f.rejected else "0", _fmt_int(f.new_assets))
    console.print(table)
    rejects = report.all_rejects()
    if rejects.height:
        err_console.print(f"[red]{rejects.height} row(s) rejected[/] (kept in table load_rejects):")
        for row in rejects.head(max_rejects).iter_rows(named=True):
            err_console.print(f"  {row['source_file']}:{row['line']}: {row['reason']}", markup=False, highlight=False)
        if rejects.height > max_rejects:
            err_console.print(f"  … and {rejects.height - max_rejects} more")
    _oddities(report)
    console.print(report.summary_line(), markup=False, highlight=False)


def _oddities(report: LoadReport) -> None:
    """Warn about loaded rows the 1D bar builder will reject (price ≤ 0) or repair (high < low)."""
    for f in report.files:
        odd = f.oddities
        if odd.non_positive_price:
            err_console.print(f"warning: {f.source}: {odd.non_positive_price:,} row(s) with a price ≤ 0, loaded as "
                              "given; the 1D bar builder will reject them (reason non_positive_price)",
                              markup=False, highlight=False)
        if odd.high_below_low:
            err_console.print(f"warning: {f.source}: {odd.high_below_low:,} row(s) with high below low, loaded as "
                              "given; the 1D bar builder will repair them (high raised to max(open, close, low), "
                              "repaired_high)", markup=False, highlight=False)
    if report.oddities:
        err_console.print("  to list them: SELECT * FROM cmc_price_histories7 WHERE least(open, high, low, close) <= 0 "
                          "OR high < low; after `ta-lab2 bars`, table cmc_price_bars_1d_rejects holds the rejected "
                          "ones and cmc_price_bars_1d flags the repaired ones (repaired_high)",
                          markup=False, highlight=False)


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        return float(obj)
    return obj


def print_json(obj: Any) -> None:
    console.print_json(json.dumps(to_jsonable(obj)))


def run_summary_table(summary: "RunSummary", json_path: "Path | None" = None, rejects: list[Any] | None = None) -> None:
    """Per child: status, duration, rows, ids, rejects; then totals, the first 1D rejects (with
    their reasons) and the JSON path."""
    title = f"{summary.runner}" + (" (dry run: nothing was changed)" if summary.dry_run else "")
    table = Table(title=title)
    for col in ("child", "status", "seconds", "ids", "rows inserted", "rows deleted", "rejects", "rows/s"):
        table.add_column(col, justify="left" if col in ("child", "status") else "right")
    colors = {"ok": "green", "failed": "red", "timeout": "red", "skipped": "yellow", "planned": "cyan"}
    for c in summary.children:
        s = c.summary
        table.add_row(
            c.name, f"[{colors.get(c.status, 'white')}]{c.status}[/]", f"{c.duration_s:.1f}",
            str(s.get("ids", "")), _fmt_int(int(s.get("rows_inserted", 0) or 0)) if s else "",
            _fmt_int(int(s.get("rows_deleted", 0) or 0)) if s else "", str(s.get("rejects", "")) if s else "",
            f"{s['rows_per_s']:,.0f}" if s.get("rows_per_s") else "",
        )
    t = summary.totals()
    table.add_section()
    table.add_row("total", "[green]ok[/]" if summary.ok else "[red]failed[/]", f"{summary.duration_s:.1f}", "",
                  _fmt_int(int(t["rows_inserted"])), _fmt_int(int(t["rows_deleted"])), _fmt_int(int(t["rejects"])), "")
    console.print(table)
    _bar_rejects_hint(summary, rejects or [])
    for c in summary.children:
        if c.status == "planned":
            console.print(f"  {c.name}: {c.message}", markup=False, highlight=False)
        elif not c.ok and c.status != "skipped":
            err_console.print(f"[red]{c.name}: {c.status}[/] — {c.message}")
            if c.output_tail:
                err_console.print(c.output_tail, markup=False, highlight=False)
    if json_path is not None:
        console.print(f"summary: {json_path}", highlight=False)


def _bar_rejects_hint(summary: "RunSummary", first: list[Any]) -> None:
    """How many source rows the 1D builder rejected, the first with their reasons, and the
    query that lists them all (they are kept with their original values)."""
    from ta_lab2.bars.rejects import ALL_REJECTS

    rejected = sum(int(c.summary.get("rejects") or 0) for c in summary.children if c.name == "1d" and c.summary)
    if not rejected:
        return
    err_console.print(f"[yellow]1d rejected {rejected:,} source row{'s' if rejected != 1 else ''}[/]"
                      + (", the first:" if first else "."), highlight=False)
    for r in first:
        err_console.print(f"  id {r.id}, {r.day}: {r.reason}", highlight=False, markup=False)
    err_console.print(f"All of them, with their original values: {ALL_REJECTS}", highlight=False, markup=False,
                      soft_wrap=True)


def capture_summary(result: Any, paths: dict[str, Any], *, max_roots: int = 10) -> None:
    """Compact console summary of a baseline capture (or compare): verdict, root causes first,
    the per-table results, what was sampled, and the report paths."""
    from ta_lab2.baseline.wording import root_sentence

    colour = "green" if result.verdict == "PASS" else "red"
    what = "compare" if getattr(result, "kind", "capture") == "compare" else "baseline"
    console.print(f"[bold]{what} {result.suffix}[/]: [bold {colour}]{result.verdict}[/]")
    roots = result.root_causes
    if roots:
        console.print(f"[bold]root causes[/] ({len(roots)}):")
        for n, root in enumerate(roots[:max_roots], start=1):
            console.print(f"  {n}. {root_sentence(root)}", markup=False, highlight=False, soft_wrap=True)
        if len(roots) > max_roots:
            console.print(f"  … and {len(roots) - max_roots} more (see the report)", highlight=False)
    table = Table()
    for col in ("table", "result", "snapshot", "rebuilt", "one-sided", "compared", "match rate", "series", "CRIT",
                "WARN", "INFO"):
        table.add_column(col, justify="left" if col in ("table", "result") else "right")
    for t in result.comparisons:
        sc = t.severity_counts
        table.add_row(t.table, "[green]PASS[/]" if t.passed else "[red]FAIL[/]", _fmt_int(t.rows_snapshot),
                      _fmt_int(t.rows_rebuilt), _fmt_int(t.only_in_snapshot + t.only_in_rebuilt), _fmt_int(t.rows_compared),
                      f"{t.match_rate:.4%}", _fmt_int(len(t.divergences)), str(sc.get("CRITICAL", 0)),
                      str(sc.get("WARNING", 0)), str(sc.get("INFO", 0)))
    console.print(table)
    if result.comparisons:
        sampling = result.metadata.get("sampling", {}).get("statement", "")
        line = sampling if result.summary["sampled"] else "every row compared, nothing sampled"
        console.print(f"[dim]{line}[/]", highlight=False, soft_wrap=True)
    for note in getattr(result, "notes", ()):
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    for problem in result.problems:
        err_console.print(f"[red]problem:[/] {problem}", highlight=False)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}", highlight=False)


def captures_table(rows: list[dict[str, Any]]) -> None:
    """Captures newest first: whether each is running, interrupted or finished, and what to do
    about an interrupted one."""
    table = Table(title="baseline captures")
    for col in ("suffix", "state", "phase", "verdict", "ids", "rows", "size", "scratch"):
        table.add_column(col)
    colours = {"running": "cyan", "interrupted": "yellow", "failed": "red"}
    for r in rows:
        total = sum(int(v.get("rows", 0)) for v in (r.get("tables") or {}).values())
        ids = "all" if r["ids"] is None else ",".join(map(str, r["ids"]))
        state = r.get("state", "")
        table.add_row(r["suffix"], f"[{colours[state]}]{state}[/]" if state in colours else state, r["status"],
                      r.get("verdict") or "-", ids, _fmt_int(total), f"{int(r.get('size_bytes') or 0) / 1e6:.1f} MB",
                      r.get("scratch_schema") or "")
    console.print(table)
    for r in rows:
        if r.get("hint") and r.get("state") in ("interrupted", "finished"):
            console.print(f"{r['suffix']}: {r['hint']}", highlight=False, soft_wrap=True)


def bench_table(result: Any) -> None:
    """Phases with rows, seconds and rows/s, the ratios and the speed bars of one scenario."""
    table = Table(title=f"bench: {result.scenario} ({result.assets:,} assets, {result.source_days:,} source days, "
                        f"{result.rows:,} rows built)")
    for col in ("phase", "rows", "seconds", "rows/s", "raw COPY rows/s", "pipeline / raw"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for p, raw in zip(result.tables, result.raw_copy):
        rate, raw_rate = p.rows_per_s or 0, raw.rows_per_s or 0
        table.add_row(p.name, _fmt_int(p.rows), f"{p.seconds:.2f}", f"{rate:,.0f}", f"{raw_rate:,.0f}",
                      f"{rate / raw_rate:.0%}" if raw_rate else "")
    table.add_section()
    table.add_row("full rebuild (all tables)", _fmt_int(result.rows), f"{result.full_rebuild_s:.1f}",
                  f"{result.rows / max(result.full_rebuild_s, 1e-9):,.0f}", "", "")
    each = ", ".join(f"{x:.1f}" for x in result.incremental_runs_s)
    table.add_row(f"incremental (one new day per asset; median of {each} s)" if len(result.incremental_runs_s) > 1
                  else "incremental (one new day per asset)", "", f"{result.incremental_s:.1f}", "", "", "")
    table.add_row(f"capture_baseline --ids all ({result.capture_verdict})", "", f"{result.capture_s:.1f}", "", "", "")
    causes = "; ".join(result.changed_root_causes) or "no root cause"
    table.add_row(f"capture after one changed price, {result.changed_price} ({result.changed_capture_verdict}: {causes})",
                  "", f"{result.changed_capture_s:.1f}", "", "", "")
    table.add_row(result.compare.name, _fmt_int(result.compare.rows), f"{result.compare.seconds:.2f}",
                  f"{result.compare.rows_per_s or 0:,.0f}", "", "")
    console.print(table)
    ratios = result.ratios()
    console.print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items() if v is not None)
                  + f"; peak RSS {result.peak_rss_mb:.0f} MB (this process {result.peak_rss_self_mb:.0f} MB, largest child "
                  f"{result.peak_rss_children_mb:.0f} MB); database with one capture's snapshot "
                  f"{result.disk_bytes / 1024 ** 3:.2f} GB", highlight=False)
    if result.per_row_over_reference:
        per_row = dict(result.per_row_over_reference)
        same = per_row.pop("full_rebuild_same_tables", None)
        console.print(f"cost per output row over {result.reference}'s: "
                      + ", ".join(f"{k} {v:.2f} ×" for k, v in per_row.items()), highlight=False)
        if same is not None:
            console.print(f"the full rebuild's tables over what their rows cost at {result.reference}'s seconds per row "
                          f"of each table (the mix of rows aside): {same:.2f} ×", highlight=False)
    for b in result.bars:
        mark = "[green]met[/]" if b.met else "[red]NOT met[/]"
        console.print(f"  {mark}: {b.description}: {b.measured} (bar {b.limit})", highlight=False)
