"""The report's charts, drawn with matplotlib and returned as inline SVG (text kept as text, no
external resource: the page stays self-contained and works offline).

Only :mod:`ta_lab2.baseline.report_html` calls these; matplotlib is imported on first use, so
nothing else pays for it. Figures are built with the object API (no pyplot global state).
"""

from __future__ import annotations

import datetime as dt
import io
import re
from typing import Any, Sequence

#: colours of the page: snapshot blue, rebuilt red, cause kinds
SNAPSHOT, REBUILT = "#0969da", "#cf222e"
KIND_COLOURS = {"source": "#9a6700", "inherited": "#8250df", "computation": "#cf222e", "undetermined": "#6e7781"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=96, layout="constrained")
    return fig


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt, "font.size": 9}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    # inline: drop the XML prolog and DOCTYPE, keep the <svg> element
    return text[text.index("<svg"):]


def _instant(ts: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(ts)
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def series_chart(points: Sequence[Sequence[Any]], first_ts: str, title: str, column: str, salt: str) -> str:
    """Snapshot vs rebuilt values of one series over time (top) and their relative difference
    in percent (bottom, where even a difference too small to see above shows), the first
    divergence marked."""
    fig = _figure(8.2, 3.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    xs = [_instant(p[0]) for p in points]

    def num(v: Any) -> float:
        return float("nan") if v is None else float(v)

    for index, colour, label, width, style in ((1, SNAPSHOT, "snapshot", 2.0, "-"), (2, REBUILT, "rebuilt", 1.3, "--")):
        top.plot(xs, [num(p[index]) for p in points], color=colour, linewidth=width, linestyle=style, label=label)
    rel = []
    for p in points:
        a, b = num(p[1]), num(p[2])
        scale = max(abs(a), abs(b))
        rel.append((b - a) / scale * 100 if scale else 0.0)
    bottom.fill_between(xs, rel, color=REBUILT, alpha=0.35, linewidth=0, step="mid")
    bottom.plot(xs, rel, color=REBUILT, linewidth=0.8, drawstyle="steps-mid")
    bottom.axhline(0, color="#57606a", linewidth=0.5)
    bottom.set_ylabel("rebuilt − snapshot, %", fontsize=8)
    for ax in (top, bottom):
        ax.axvline(_instant(first_ts), color="#57606a", linewidth=0.8, linestyle=":")
        ax.grid(True, linewidth=0.3, alpha=0.6)
    top.annotate("first divergence", (_instant(first_ts), 1.0), xycoords=("data", "axes fraction"),
                 xytext=(3, -10), textcoords="offset points", fontsize=8, color="#57606a")
    top.set_title(title, fontsize=10, loc="left")
    top.set_ylabel(column)
    top.legend(loc="best", fontsize=8, frameon=False)
    fig.autofmt_xdate()
    return _svg(fig, salt)


def timeline_chart(tables: Sequence[str], points: Sequence[tuple[str, str, str]],
                   roots: Sequence[tuple[str, str]], salt: str = "timeline") -> str:
    """First-divergence dates of every divergent series, one row per table, coloured by cause
    kind; ``points`` are (table, first instant, cause kind); ``roots`` (instant, label) are
    marked as vertical lines."""
    fig = _figure(8.2, 0.32 * max(len(tables), 3) + 1.0)
    ax = fig.add_subplot()
    rows = {t: i for i, t in enumerate(tables)}
    for kind, colour in KIND_COLOURS.items():
        chosen = [(p[1], rows[p[0]]) for p in points if p[2] == kind and p[0] in rows]
        if chosen:
            ax.scatter([_instant(c[0]) for c in chosen], [c[1] for c in chosen], s=14, color=colour, alpha=0.7,
                       label=kind, linewidths=0)
    for ts, label in roots:
        ax.axvline(_instant(ts), color="#57606a", linewidth=0.7, linestyle=":")
        ax.annotate(label, (_instant(ts), 1.0), xycoords=("data", "axes fraction"), xytext=(2, -9),
                    textcoords="offset points", fontsize=7, color="#57606a")
    ax.set_yticks(range(len(tables)), [re.sub(r"^cmc_", "", t) for t in tables], fontsize=8)
    ax.set_ylim(-0.6, len(tables) - 0.4)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=7, frameon=False, ncols=4)
    ax.grid(True, axis="x", linewidth=0.3, alpha=0.6)
    fig.autofmt_xdate()
    return _svg(fig, salt)


def match_rate_chart(tables: Sequence[tuple[str, float, bool]], salt: str = "match-rate") -> str:
    """Match rate per table (name, rate in [0, 1], passed) as horizontal bars."""
    fig = _figure(8.2, 0.28 * max(len(tables), 3) + 0.8)
    ax = fig.add_subplot()
    names = [re.sub(r"^cmc_", "", t[0]) for t in tables]
    rates = [t[1] for t in tables]
    bars = ax.barh(range(len(tables)), rates, color=["#1f883d" if t[2] else "#cf222e" for t in tables], height=0.6)
    ax.bar_label(bars, [f"{r:.4%}" for r in rates], fontsize=7, padding=3)
    ax.set_yticks(range(len(tables)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.grid(True, axis="x", linewidth=0.3, alpha=0.6)
    return _svg(fig, salt)
