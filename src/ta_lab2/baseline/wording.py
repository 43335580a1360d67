"""How a comparison's facts read to people, the same on the console, in the JSON's sentences
and in the HTML: series keys as ``id 1 · 7D · p20``, daily instants as dates, relative
differences as percentages, one sentence per root cause."""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Sequence

from ta_lab2.baseline.results import RootCause

KIND_WORDS = {
    "source_revised": "source revised",
    "source_added": "source added",
    "source_removed": "source removed",
    "computation": "computation changed",
}


def series_text(series: Mapping[str, Any]) -> str:
    """``{"id": 1, "tf": "7D", "period": 20}`` -> ``id 1 · 7D · p20``."""
    parts = []
    for key, value in series.items():
        if key == "id":
            parts.append(f"id {value}")
        elif key == "period":
            parts.append(f"p{value}")
        else:
            parts.append(str(value))
    return " · ".join(parts)


def day_text(ts: str | None) -> str:
    """An instant of a daily row as its (UTC) date; a time is kept only for an intraday instant."""
    if not ts:
        return "–"
    t = dt.datetime.fromisoformat(ts)
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    daily = (t.hour, t.minute) in ((0, 0), (23, 59))
    return t.date().isoformat() if daily else t.strftime("%Y-%m-%d %H:%M:%S")


def span_text(first: str | None, last: str | None) -> str:
    a, b = day_text(first), day_text(last)
    return a if a == b else f"{a} … {b}"


def pct(rel: float | None) -> str:
    """A relative difference as a percentage with two significant digits (``0.0012 %``)."""
    if rel is None:
        return "–"
    if rel == float("inf"):
        return "∞"
    return f"{rel * 100:.2g} %"


def value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def changes_text(changes: Sequence[Sequence[Any]]) -> str:
    """``close 101.2 → 103.2, high 104 → 106``."""
    return ", ".join(f"{c} {value_text(a)} → {value_text(b)}" for c, a, b in changes)


def root_headline(root: RootCause) -> str:
    """What changed, where: ``source revised: id 1, 2026-06-15, close 101.2 → 103.2``."""
    kind = KIND_WORDS.get(root.kind, root.kind)
    if root.kind == "computation":
        return f"{kind} in {root.table}: {root.days:,} series differ with identical inputs, from {day_text(root.first_ts)}"
    days = f"{root.days} days " if root.days > 1 else ""
    text = f"{kind}: id {root.id}, {days}{span_text(root.first_ts, root.last_ts)}"
    return f"{text}, {changes_text(root.changes)}" if root.changes else text


def root_sentence(root: RootCause) -> str:
    """The headline and what it explains: ``…, explains 217 rows in 12 tables``."""
    tables = len(root.explains)
    return f"{root_headline(root)} — explains {root.rows:,} rows in {tables} table{'s' if tables != 1 else ''}"
