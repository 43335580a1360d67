"""The report people would rather look at than read: one self-contained HTML page, rendered
from the JSON report's dict. Verdict first, then the root causes (each with a chart of its
most affected series), the timeline of first divergences, then per-table results."""

from __future__ import annotations

import html
import json
from typing import Any

from ta_lab2.baseline import charts
from ta_lab2.baseline.wording import day_text, pct, series_text

#: divergences listed in the page (the JSON has every one); root causes marked on the timeline
MAX_LISTED = 200
MARKED_ROOTS = 6

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;color:#1d232a;max-width:1100px;padding:0 16px}
h1{margin:0 0 6px;font-size:22px}h2{margin:28px 0 8px;font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.verdict{display:inline-block;padding:6px 16px;border-radius:6px;font-weight:700;font-size:20px;color:#fff}
.PASS{background:#1f883d}.FAIL{background:#cf222e}.DRY-RUN{background:#6e7781}
table{border-collapse:collapse;margin:8px 0 16px;width:100%;font-size:13px}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}.CRITICAL{color:#cf222e;font-weight:600}.WARNING{color:#9a6700}
.INFO{color:#57606a}.OK{color:#1f883d}code{font-size:12px}.muted{color:#57606a}
ol.roots>li{margin:0 0 18px}.root{font-weight:600}.kind{display:inline-block;padding:0 6px;border-radius:4px;
font-size:12px;color:#fff;margin-right:6px}.k-source_revised,.k-source_added,.k-source_removed{background:#9a6700}
.k-computation{background:#cf222e}figure{margin:8px 0}svg{max-width:100%;height:auto}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _cause_text(cause: dict[str, Any] | None, roots: list[dict[str, Any]]) -> str:
    if not cause:
        return ""
    root = f"root {cause['root'] + 1}" if cause.get("root") is not None else ""
    if cause["kind"] == "inherited" and cause.get("parent"):
        p = cause["parent"]
        return f"inherited from {p['table']} {series_text(p['series'])} at {day_text(p['ts'])} ({root})"
    if cause["kind"] == "undetermined":
        return "undetermined: an input table was not compared"
    return f"{cause['kind']} ({root})" if root else cause["kind"]


def _sampling_line(summary: dict[str, Any], sampling: dict[str, Any]) -> str:
    """Whether anything was sampled, in one sentence (detection never is)."""
    if not summary.get("sampled"):
        return "Nothing was sampled: every row was compared and counted in every statistic."
    statement = sampling.get("statement") or "every row compared; the mean/std of differences were sampled"
    return f"{statement[0].upper()}{statement[1:]}."


def _header(data: dict[str, Any]) -> list[str]:
    s = data["summary"]
    what = "Compare" if data["kind"] == "compare" else "Baseline capture"
    when = f"captured {_e(day_text(data['captured_at']))}" + (
        f" · compared {_e(data['compared_at'])}" if data.get("compared_at") else "")
    sampling = data.get("sampling") or {}
    return [
        f"<h1>{what} {_e(data['suffix'])}</h1>",
        f"<p><span class='verdict {_e(data['verdict'])}' id='verdict'>{_e(data['verdict'])}</span> "
        f"<span class='muted'>{when} · {len(data['ids'])} ids · {s['tables_passed']}/{s['tables']} tables passed · "
        f"{s['rows_compared']:,} rows compared · {s['one_sided_rows']:,} one-sided rows · "
        f"{s.get('divergent_series', 0):,} divergent series</span></p>",
        f"<p id='sampling' class='muted'>{_e(_sampling_line(s, sampling))}</p>",
    ]


def _roots(data: dict[str, Any]) -> list[str]:
    roots = data["root_causes"]
    if not roots:
        return []
    out = ["<h2>Root causes</h2><ol class='roots' id='root-causes'>"]
    chart_of = {c["root"]: c for c in data.get("root_charts", [])}
    for r in roots:
        explains = "".join(f"<tr><td class='l'>{_e(t)}</td><td>{n:,}</td></tr>" for t, n in
                           sorted(r["explains"].items(), key=lambda x: -x[1]))
        out.append(f"<li><span class='kind k-{_e(r['kind'])}'>{_e(r['kind'].replace('_', ' '))}</span>"
                   f"<span class='root'>{_e(r['sentence'])}</span>"
                   f"<table style='width:auto'><tr><th class='l'>table</th><th>rows explained</th></tr>{explains}</table>")
        chart = chart_of.get(r["index"])
        if chart and chart["points"]:
            title = f"{chart['table']} · {series_text(chart['series'])} · {chart['column']}"
            out.append(f"<figure class='chart' data-root='{r['index']}'>" + charts.series_chart(
                chart["points"], chart["first_ts"], title, chart["column"], f"root-{r['index']}") + "</figure>")
        out.append("</li>")
    out.append("</ol>")
    return out


def _timeline(data: dict[str, Any]) -> list[str]:
    points = [(t["table"], d["first_ts"], (d.get("cause") or {}).get("kind", "undetermined"))
              for t in data["tables"] for d in t["divergences"]]
    if not points:
        return []
    tables = [t["table"] for t in data["tables"]]
    marks = [(r["first_ts"], f"root {r['index'] + 1}") for r in data["root_causes"][:MARKED_ROOTS]]
    return ["<h2>When divergences start</h2><figure class='chart' id='timeline'>"
            + charts.timeline_chart(tables, points, marks) + "</figure>"]


def _tables(data: dict[str, Any]) -> list[str]:
    out = ["<h2>Tables</h2><table id='tables'><tr><th class='l'>table</th><th>result</th><th>rows snapshot</th>"
           "<th>rows rebuilt</th><th>only snapshot</th><th>only rebuilt</th><th>rows compared</th><th>match rate</th>"
           "<th>divergent series</th><th>CRITICAL</th><th>WARNING</th><th>INFO</th></tr>"]
    for t in data["tables"]:
        sc = t["severity_counts"]
        out.append(f"<tr><td class='l'>{_e(t['table'])}</td><td class='{'OK' if t['passed'] else 'CRITICAL'}'>"
                   f"{'PASS' if t['passed'] else 'FAIL'}</td><td>{t['rows_snapshot']:,}</td><td>{t['rows_rebuilt']:,}</td>"
                   f"<td>{t['only_in_snapshot']:,}</td><td>{t['only_in_rebuilt']:,}</td><td>{t['rows_compared']:,}</td>"
                   f"<td>{t['match_rate']:.4%}</td><td>{len(t['divergences']):,}</td>"
                   f"<td class='CRITICAL'>{sc.get('CRITICAL', 0):,}</td>"
                   f"<td class='WARNING'>{sc.get('WARNING', 0):,}</td><td class='INFO'>{sc.get('INFO', 0):,}</td></tr>")
    out.append("</table>")
    if data["tables"]:
        out.append("<figure class='chart' id='match-rate'>" + charts.match_rate_chart(
            [(t["table"], float(t["match_rate"]), bool(t["passed"])) for t in data["tables"]]) + "</figure>")
    return out


def _divergences(data: dict[str, Any]) -> list[str]:
    divergent = sorted(((t["table"], d) for t in data["tables"] for d in t["divergences"]), key=lambda x: x[1]["first_ts"])
    out = ["<h2>Where differences start</h2>"]
    if not divergent:
        return out + ["<p class='OK'>No series differs.</p>"]
    more = len(divergent) - MAX_LISTED
    out.append("<table id='divergences'><tr><th class='l'>table</th><th class='l'>series</th><th class='l'>first</th>"
               "<th class='l'>last</th><th>rows</th><th>to end</th><th class='l'>cause</th></tr>")
    for table, d in divergent[:MAX_LISTED]:
        out.append(f"<tr><td class='l'>{_e(table)}</td><td class='l'>{_e(series_text(d['series']))}</td>"
                   f"<td class='l' title='{_e(d['first_ts'])}'>{_e(day_text(d['first_ts']))}</td>"
                   f"<td class='l' title='{_e(d['last_ts'])}'>{_e(day_text(d['last_ts']))}</td><td>{d['count']:,}</td>"
                   f"<td>{'yes' if d['persists_to_end'] else 'no'}</td>"
                   f"<td class='l'>{_e(_cause_text(d.get('cause'), data['root_causes']))}</td></tr>")
    out.append("</table>")
    if more > 0:
        out.append(f"<p class='muted'>… and {more:,} more divergent series (every one is in the JSON report).</p>")
    return out


def _top_differences(data: dict[str, Any]) -> list[str]:
    out = []
    for t in data["tables"]:
        if t.get("error"):
            out.append(f"<h3>{_e(t['table'])}</h3><p class='CRITICAL'>comparison failed: {_e(t['error'])}</p>")
        if not t["top_differences"]:
            continue
        out.append(f"<h3>{_e(t['table'])}: top differences</h3><table><tr><th class='l'>key</th><th class='l'>column</th>"
                   "<th class='l'>snapshot</th><th class='l'>rebuilt</th><th>abs diff</th><th>rel diff</th><th>severity</th></tr>")
        for d in t["top_differences"]:
            key = dict(d["key"])
            when = next((key.pop(c) for c in ("ts", "time_close", "timestamp") if c in key), None)
            absd = "" if d["abs_diff"] is None else f"{float(d['abs_diff']):.6g}"
            rel = pct(None if d["rel_diff"] is None else float(d["rel_diff"]))
            out.append(f"<tr><td class='l'>{_e(series_text(key))} · {_e(day_text(when))}</td><td class='l'>{_e(d['column'])}</td>"
                       f"<td class='l'>{_e(d['snapshot'])}</td><td class='l'>{_e(d['rebuilt'])}</td>"
                       f"<td>{_e(absd)}</td><td>{_e(rel)}</td>"
                       f"<td class='{_e(d['severity'])}'>{_e(d['severity'])}</td></tr>")
        out.append("</table>")
    return out


def render_html(data: dict[str, Any]) -> str:
    """The page for a report dict (:func:`ta_lab2.baseline.report.report_dict`)."""
    title = f"{'compare' if data['kind'] == 'compare' else 'baseline'} {data['suffix']}: {data['verdict']}"
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", *_header(data)]
    if data["problems"]:
        out.append("<h2>Problems</h2><ul id='problems'>" + "".join(f"<li class='CRITICAL'>{_e(p)}</li>"
                                                                   for p in data["problems"]) + "</ul>")
    if data.get("notes"):
        out.append("<ul id='notes'>" + "".join(f"<li class='WARNING'>{_e(n)}</li>" for n in data["notes"]) + "</ul>")
    out += _roots(data) + _timeline(data) + _tables(data) + _divergences(data) + _top_differences(data)
    if data["rebuild"]:
        out.append("<h2>Rebuild</h2><table><tr><th class='l'>step</th><th>exit code</th><th>seconds</th>"
                   "<th class='l'>command</th></tr>")
        for r in data["rebuild"]:
            out.append(f"<tr><td class='l'>{_e(r['name'])}</td><td>{_e(r['exit_code'])}</td><td>{r['duration_s']:.1f}</td>"
                       f"<td class='l'><code>{_e(' '.join(r['argv']))}</code></td></tr>")
        out.append("</table>")
    out.append("<h2>Metadata</h2><pre>" + _e(json.dumps(data["metadata"], indent=2, default=str)[:20000]) + "</pre>")
    out.append("</body></html>")
    return "\n".join(out)
