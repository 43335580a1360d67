"""The files of a capture or compare: the versioned JSON report, the metadata file (captures
only) and the HTML page (:mod:`ta_lab2.baseline.report_html`). A compare writes files of its
own (``compare-<suffix>-at-<instant>``) and never touches its capture's."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from ta_lab2.baseline.capture import CaptureResult
from ta_lab2.baseline.wording import root_sentence
from ta_lab2.redaction import redact

#: version 2: root causes, a cause per divergence, exact detection with sampled statistics
REPORT_SCHEMA = "ta_lab2.baseline.report/2"


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


def _changes(changes: Any) -> list[dict[str, Any]]:
    return [{"column": c, "before": _plain(a), "after": _plain(b)} for c, a, b in changes]


def report_dict(result: CaptureResult) -> dict[str, Any]:
    tables = []
    for t in result.comparisons:
        d = _plain(t)
        d["match_rate"] = t.match_rate
        d["passed"] = t.passed
        d["worst"] = t.worst
        d["daily_changes"] = [{**_plain(c), "changes": _changes(c.changes)} for c in t.daily_changes]
        tables.append(d)
    roots = []
    for n, r in enumerate(result.root_causes):
        roots.append({"index": n, **_plain(r), "changes": _changes(r.changes), "rows": r.rows,
                      "tables": len(r.explains), "sentence": root_sentence(r)})
    sampling = result.metadata.get("sampling", {})
    return {
        "schema": REPORT_SCHEMA,
        "kind": result.kind,
        "suffix": result.suffix,
        "captured_at": result.captured_at,
        "compared_at": result.compared_at,
        "verdict": result.verdict,
        "exit_code": result.exit_code,
        "phase_reached": result.phase_reached,
        "problems": list(result.problems),
        "notes": list(result.notes),
        "ids": list(result.ids),
        "summary": result.summary,
        "sampling": _plain(sampling),
        "root_causes": roots,
        "root_charts": _plain(result.charts),
        "snapshots": _plain(result.snapshots),
        "rebuild": _plain(result.rebuild),
        "tables": tables,
        "metadata": _plain(result.metadata),
    }


def write_reports(result: CaptureResult, output_dir: Path) -> dict[str, Path]:
    """Write the JSON, the HTML and (captures) the metadata file; return their paths. Every
    file is written whole under a temporary name and then renamed."""
    from ta_lab2.baseline.report_html import render_html

    output_dir.mkdir(parents=True, exist_ok=True)
    data = report_dict(result)
    stem = result.report_stem
    paths = {"json": output_dir / f"{stem}.json", "html": output_dir / f"{stem}.html"}
    texts = {"json": json.dumps(data, indent=2, default=str), "html": render_html(data)}
    if result.kind == "capture":
        paths["metadata"] = output_dir / f"metadata-{result.suffix}.json"
        texts["metadata"] = json.dumps(data["metadata"], indent=2, default=str)
    for name, path in paths.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(redact(texts[name]))
        tmp.replace(path)
    return paths
