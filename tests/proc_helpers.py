"""Waiting for processes (and their database sessions) to end without guessing how long it
takes: polls, never a fixed sleep."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts: it runs no more code)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(*pids: int, timeout_s: float = 30) -> bool:
    """True once every pid is gone, polling (a killed process dies when the kernel gets to
    it, later on a busy machine); False if one is still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_sessions_gone(conn: psycopg.Connection, timeout_s: float = 120) -> bool:
    """True once ``conn`` is the only client session on its database: a killed command's
    sessions end when their backends notice (a backend busy with a statement finishes it
    first); False if another is still there after ``timeout_s``."""
    others = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
              "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
    deadline = time.monotonic() + timeout_s
    while conn.execute(others).fetchone()[0]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
