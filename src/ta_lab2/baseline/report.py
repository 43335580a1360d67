"""Renderings of a :class:`CaptureResult`: the versioned JSON report, the metadata file and a
self-contained HTML page (verdict first, per-table statistics, first divergences, charts as
inline SVG). The verdict comes from the result object, never from parsing a rendering."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import Any

from ta_lab2.baseline.capture import CaptureResult
from ta_lab2.db.url import redact

REPORT_SCHEMA = "ta_lab2.baseline.report/1"


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def report_dict(result: CaptureResult) -> dict[str, Any]:
    tables = []
    for t in result.comparisons:
        d = _plain(t)
        d["match_rate"] = t.match_rate
        d["passed"] = t.passed
        d["worst"] = t.worst
        tables.append(d)
    return {
        "schema": REPORT_SCHEMA,
        "suffix": result.suffix,
        "captured_at": result.captured_at,
        "verdict": result.verdict,
        "exit_code": result.exit_code,
        "phase_reached": result.phase_reached,
        "problems": list(result.problems),
        "ids": list(result.ids),
        "summary": result.summary,
        "snapshots": _plain(result.snapshots),
        "rebuild": _plain(result.rebuild),
        "tables": tables,
        "metadata": _plain(result.metadata),
    }


def write_reports(result: CaptureResult, output_dir: Path) -> dict[str, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    data = report_dict(result)
    text = redact(json.dumps(data, indent=2, default=str))
    paths = {
        "json": output_dir / f"baseline-{result.suffix}.json",
        "metadata": output_dir / f"metadata-{result.suffix}.json",
        "html": output_dir / f"baseline-{result.suffix}.html",
    }
    paths["json"].write_text(text)
    paths["metadata"].write_text(redact(json.dumps(data["metadata"], indent=2, default=str)))
    paths["html"].write_text(redact(render_html(data)))
    return paths


# --------------------------------------------------------------------------- HTML
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a;max-width:1200px}
h1{margin:0 0 4px}.verdict{display:inline-block;padding:6px 16px;border-radius:6px;font-weight:700;font-size:20px;color:#fff}
.PASS{background:#1f883d}.FAIL{background:#cf222e}.DRY-RUN{background:#6e7781}
table{border-collapse:collapse;margin:8px 0 20px;width:100%}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}.CRITICAL{color:#cf222e;font-weight:600}.WARNING{color:#9a6700}
.INFO{color:#57606a}.OK{color:#1f883d}code{font-size:12px}.muted{color:#57606a}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _bar_chart(tables: list[dict[str, Any]]) -> str:
    """Match rate per table, as an inline SVG horizontal bar chart."""
    row_h, width, label_w = 22, 760, 330
    h = row_h * len(tables) + 10
    parts = [f'<svg width="{width}" height="{h}" role="img" aria-label="match rate per table">']
    for i, t in enumerate(tables):
        rate = float(t["match_rate"])
        y = 5 + i * row_h
        w = (width - label_w - 60) * rate
        color = "#1f883d" if t["passed"] else "#cf222e"
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{_e(t["table"])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 15}" font-size="12">{rate:.4%}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _line_chart(points: list[list[Any]], title: str) -> str:
    """Snapshot vs rebuilt values of one series over time (inline SVG)."""
    vals = [(p[1], p[2]) for p in points]
    ys = [v for pair in vals for v in pair if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(points) < 2 or not ys:
        return ""
    w, h, pad = 760, 220, 30
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0

    def path(idx: int) -> str:
        pts = []
        for i, pair in enumerate(vals):
            v = pair[idx]
            if isinstance(v, (int, float)) and math.isfinite(v):
                x = pad + (w - 2 * pad) * i / (len(vals) - 1)
                y = h - pad - (h - 2 * pad) * (v - lo) / span
                pts.append(f"{x:.1f},{y:.1f}")
        return " ".join(pts)

    return (f'<figure><figcaption>{_e(title)} — <span style="color:#0969da">snapshot</span> vs '
            f'<span style="color:#cf222e">rebuilt</span></figcaption><svg width="{w}" height="{h}" role="img">'
            f'<polyline fill="none" stroke="#0969da" stroke-width="2" points="{path(0)}"/>'
            f'<polyline fill="none" stroke="#cf222e" stroke-width="1.2" stroke-dasharray="4 2" points="{path(1)}"/>'
            f'<text x="{pad}" y="14" font-size="11">{hi:.6g}</text><text x="{pad}" y="{h - 8}" font-size="11">{lo:.6g}</text>'
            f'<text x="{w - pad}" y="{h - 8}" font-size="11" text-anchor="end">{_e(points[-1][0])}</text>'
            f'<text x="{pad + 60}" y="{h - 8}" font-size="11">{_e(points[0][0])}</text></svg></figure>')


def render_html(data: dict[str, Any]) -> str:
    s = data["summary"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>baseline {_e(data['suffix'])}: {_e(data['verdict'])}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Baseline capture {_e(data['suffix'])}</h1>",
           f"<p><span class='verdict {_e(data['verdict'])}' id='verdict'>{_e(data['verdict'])}</span> "
           f"<span class='muted'>captured {_e(data['captured_at'])} · {len(data['ids'])} ids · "
           f"{s['tables_passed']}/{s['tables']} tables passed · {s['rows_compared']:,} rows compared · "
           f"{s['one_sided_rows']:,} one-sided rows</span></p>"]
    if data["problems"]:
        out.append("<h2>Problems</h2><ul>" + "".join(f"<li class='CRITICAL'>{_e(p)}</li>" for p in data["problems"]) + "</ul>")
    out.append("<h2>Tables</h2><table id='tables'><tr><th class='l'>table</th><th>result</th><th>rows snapshot</th>"
               "<th>rows rebuilt</th><th>only snapshot</th><th>only rebuilt</th><th>rows compared</th><th>match rate</th>"
               "<th>CRITICAL</th><th>WARNING</th><th>INFO</th></tr>")
    for t in data["tables"]:
        sc = t["severity_counts"]
        out.append(f"<tr><td class='l'>{_e(t['table'])}</td><td class='{'OK' if t['passed'] else 'CRITICAL'}'>"
                   f"{'PASS' if t['passed'] else 'FAIL'}</td><td>{t['rows_snapshot']:,}</td><td>{t['rows_rebuilt']:,}</td>"
                   f"<td>{t['only_in_snapshot']:,}</td><td>{t['only_in_rebuilt']:,}</td><td>{t['rows_compared']:,}</td>"
                   f"<td>{t['match_rate']:.4%}</td><td class='CRITICAL'>{sc.get('CRITICAL', 0):,}</td>"
                   f"<td class='WARNING'>{sc.get('WARNING', 0):,}</td><td class='INFO'>{sc.get('INFO', 0):,}</td></tr>")
    out.append("</table>")
    if data["tables"]:
        out.append("<h2>Match rate</h2>" + _bar_chart(data["tables"]))
    divergent = [(t["table"], d) for t in data["tables"] for d in t["divergences"]]
    out.append("<h2>Where differences start</h2>")
    if divergent:
        out.append("<table id='divergences'><tr><th class='l'>table</th><th class='l'>series</th><th class='l'>first</th>"
                   "<th class='l'>last</th><th>rows</th><th>to end</th><th class='l'>likely cause</th></tr>")
        for table, d in sorted(divergent, key=lambda x: x[1]["first_ts"])[:200]:
            out.append(f"<tr><td class='l'>{_e(table)}</td><td class='l'>{_e(d['series'])}</td><td class='l'>{_e(d['first_ts'])}</td>"
                       f"<td class='l'>{_e(d['last_ts'])}</td><td>{d['count']:,}</td><td>{'yes' if d['persists_to_end'] else 'no'}</td>"
                       f"<td class='l'>{_e(d.get('likely_cause'))}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='OK'>No series differs.</p>")
    for t in data["tables"]:
        if t.get("error"):
            out.append(f"<h3>{_e(t['table'])}</h3><p class='CRITICAL'>comparison failed: {_e(t['error'])}</p>")
        if t["top_differences"]:
            out.append(f"<h3>{_e(t['table'])}: top differences</h3><table><tr><th class='l'>key</th><th class='l'>column</th>"
                       "<th class='l'>snapshot</th><th class='l'>rebuilt</th><th>abs diff</th><th>rel diff</th><th>severity</th></tr>")
            for d in t["top_differences"]:
                out.append(f"<tr><td class='l'><code>{_e(d['key'])}</code></td><td class='l'>{_e(d['column'])}</td>"
                           f"<td class='l'>{_e(d['snapshot'])}</td><td class='l'>{_e(d['rebuilt'])}</td><td>{_e(d['abs_diff'])}</td>"
                           f"<td>{_e(d['rel_diff'])}</td><td class='{_e(d['severity'])}'>{_e(d['severity'])}</td></tr>")
            out.append("</table>")
    for chart in data["metadata"].get("worst_series", []):
        out.append(_line_chart(chart["points"], f"{chart['table']} {chart['series']} {chart['column']}"))
    out.append("<h2>Rebuild</h2><table><tr><th class='l'>step</th><th>exit code</th><th>seconds</th><th class='l'>command</th></tr>")
    for r in data["rebuild"]:
        out.append(f"<tr><td class='l'>{_e(r['name'])}</td><td>{_e(r['exit_code'])}</td><td>{r['duration_s']:.1f}</td>"
                   f"<td class='l'><code>{_e(' '.join(r['argv']))}</code></td></tr>")
    out.append("</table><h2>Metadata</h2><pre>" + _e(json.dumps(data["metadata"], indent=2, default=str)[:20000]) + "</pre>")
    out.append("</body></html>")
    return "\n".join(out)
