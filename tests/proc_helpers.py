"""Waiting for processes to end without guessing how long it takes (no fixed sleeps)."""

from __future__ import annotations

import time
from pathlib import Path


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
