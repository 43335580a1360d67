"""What a run of children returns: one :class:`ChildResult` per child, in plan order, inside a
:class:`RunSummary` (spec 04 "Summary": status, duration, the child's own JSON summary; exit
code 0 iff every child succeeded), and its JSON file next to the logs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ChildResult:
    name: str
    status: str  # ok | failed | timeout | skipped | planned
    exit_code: int | None
    duration_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "planned")


@dataclass(frozen=True)
class RunSummary:
    runner: str
    started_at: str
    dry_run: bool
    children: tuple[ChildResult, ...]
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok or c.status == "skipped" for c in self.children) and not any(
            c.status in ("failed", "timeout") for c in self.children
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def totals(self) -> dict[str, float]:
        keys = ("rows_inserted", "rows_deleted", "rejects")
        out: dict[str, float] = {k: 0 for k in keys}
        for c in self.children:
            for k in keys:
                out[k] += float(c.summary.get(k) or 0)
        out["duration_s"] = round(self.duration_s, 3)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "runner": self.runner,
            "started_at": self.started_at,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "totals": self.totals(),
            "children": [
                {
                    "name": c.name,
                    "status": c.status,
                    "exit_code": c.exit_code,
                    "duration_s": round(c.duration_s, 3),
                    "message": c.message,
                    "summary": c.summary,
                }
                for c in self.children
            ],
            **self.extra,
        }


def write_run_summary(summary: RunSummary, output_dir: Path) -> Path:
    """Write the summary JSON next to the logs (``<runner>-<timestamp>.json`` and ``<runner>-latest.json``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = summary.started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    path = output_dir / f"{summary.runner}-{stamp}.json"
    text = json.dumps(summary.as_dict(), indent=2, default=str)
    path.write_text(text)
    (output_dir / f"{summary.runner}-latest.json").write_text(text)
    return path
